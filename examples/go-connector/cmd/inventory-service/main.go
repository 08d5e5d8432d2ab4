// Command inventory-service runs the in-memory warehouse of package devservice
// on a loopback address, to try the inventory connector by hand and for the
// gateway tests:
//
//	go run ./cmd/inventory-service -addr 127.0.0.1:8701 -token s3cret
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strings"

	"connector-gateway/examples/go-connector/devservice"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8701", "loopback address to listen on; port 0 picks a free one")
	token := flag.String("token", "", "bearer token the service demands; empty for none")
	flag.Parse()

	host, _, err := net.SplitHostPort(*addr)
	if err != nil || (host != "127.0.0.1" && host != "::1" && host != "localhost") {
		fmt.Fprintf(os.Stderr, "-addr must be a loopback address such as 127.0.0.1:8701, got %q\n", *addr)
		os.Exit(2)
	}
	listener, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	service := devservice.New(*token)
	fmt.Printf("Inventory service listening on http://%s with items %s\n",
		listener.Addr(), strings.Join(service.SKUs(), ", "))
	log.Fatal(http.Serve(listener, service))
}
