// Command inventory is a connector for connector-gateway: stock levels and
// reservations in a warehouse's JSON API.
//
// In spawn mode (the gateway starts it per request) it reads the request on
// stdin, runs the command named by CONNECTOR_COMMAND and prints one version 2
// envelope on stdout. A failure the command understands is an envelope with its
// own error code and exit status 0; an unknown command, unreadable stdin or a
// bug is a non-zero exit, which the gateway answers as connector_failed.
//
// With CONNECTOR_MODE=worker it is a long-lived worker instead, answering lines
// of JSON for either command with the same envelopes (worker.go).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"time"
)

func main() {
	os.Exit(run(os.Getenv, os.Stdin, os.Stdout, os.Stderr))
}

// run is the whole program, given its environment and standard streams; it returns the exit status.
func run(getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	if getenv("CONNECTOR_MODE") == "worker" {
		concurrency, err := strconv.Atoi(getenv("CONNECTOR_CONCURRENCY"))
		if err != nil || concurrency < 1 {
			concurrency = 1
		}
		serveWorker(stdin, stdout, stderr, concurrency, answer)
		return exitOK
	}
	return serveOnce(getenv, stdin, stdout, stderr)
}

// serveOnce is spawn mode: one request from the environment and stdin, one envelope on stdout.
func serveOnce(getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) (status int) {
	// The last line of stderr is what the modeler sees when the connector fails.
	fail := func(line string) { fmt.Fprintln(stderr, line) }
	defer func() {
		if problem := recover(); problem != nil {
			fmt.Fprintf(stderr, "%s\n", debug.Stack())
			fail(fmt.Sprintf("Internal error: %v", problem))
			status = exitSoftware
		}
	}()

	commandID := getenv("CONNECTOR_COMMAND")
	if _, ok := commands[commandName(commandID)]; !ok {
		fail(unknownCommand(commandID))
		return exitUsage
	}
	deadline, err := deadlineFromEnv(getenv("CONNECTOR_DEADLINE"), time.Now())
	if err != nil {
		fail(err.Error() + ".")
		return exitUsage
	}
	params, err := readRequest(stdin)
	if err != nil {
		fail("Stdin: " + err.Error() + ".")
		return exitData
	}

	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	call := Call{RequestID: getenv("CONNECTOR_REQUEST_ID"), Log: func(line string) { fmt.Fprintln(stderr, line) }}
	result, err := answer(ctx, commandID, params, call)
	if err != nil {
		fail(err.Error())
		return exitSoftware
	}
	if err := writeJSONLine(stdout, result); err != nil {
		fail("Could not write the answer to stdout: " + err.Error())
		return exitSoftware
	}
	return exitOK
}

// answer runs one command, by its id ("inventory/GetStock"), and shapes its outcome as an envelope.
// The error is for what the gateway should answer as connector_failed: an unknown command or a bug.
func answer(ctx context.Context, commandID string, params Params, call Call) (Envelope, error) {
	command, ok := commands[commandName(commandID)]
	if !ok {
		return Envelope{}, errors.New(unknownCommand(commandID))
	}
	result, err := command(ctx, params, call)
	var failure *Failure
	switch {
	case err == nil:
		return successEnvelope(result), nil
	case errors.As(err, &failure):
		return failureEnvelope(failure), nil
	}
	return Envelope{}, fmt.Errorf("Internal error: %w", err)
}

func unknownCommand(name string) string {
	names := make([]string, 0, len(commands))
	for known := range commands {
		names = append(names, known)
	}
	sort.Strings(names)
	return fmt.Sprintf("Unknown command '%s'; this connector offers %s.", name, strings.Join(names, ", "))
}
