module connector-gateway/examples/go-connector

go 1.19
