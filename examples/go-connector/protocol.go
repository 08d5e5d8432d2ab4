package main

// The connector protocol seen from inside the executable: the CONNECTOR_*
// environment, the request on stdin, the version 2 envelope on stdout and the
// exit statuses. Nothing here knows about inventory; copy it as is for a new
// connector. See ../../docs/connector-protocol.md.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
)

// Exit statuses. The gateway answers every non-zero one but 75 as connector_failed, inner 502.
const (
	exitOK       = 0
	exitUsage    = 64 // CONNECTOR_COMMAND names a command this program does not offer
	exitData     = 65 // stdin was not one JSON object
	exitSoftware = 70 // a bug in the connector
)

// defaultTimeout applies when the connector runs by hand, without a deadline from the gateway.
const defaultTimeout = 30 * time.Second

// Params is a request's payload: the parameters and spiff__ keys, each value still JSON.
type Params map[string]json.RawMessage

// Call is what a command knows about the request it serves besides its parameters.
// Its deadline and cancellation travel in the context.Context passed next to it.
type Call struct {
	RequestID string            // the gateway's id for this request, for correlating logs
	Log       func(line string) // writes one diagnostic line; never a credential
}

// Result is a command's successful answer: the body and the inner HTTP status.
type Result struct {
	Status int
	Body   any
}

// Envelope is the version 2 answer; the gateway adds the connector's log lines to SpiffLogs.
type Envelope struct {
	Version  int             `json:"command_response_version"`
	Response CommandResponse `json:"command_response"`
	Error    *EnvelopeError  `json:"error"`
	Logs     []string        `json:"spiff__logs"`
}

// CommandResponse is the envelope's command_response.
type CommandResponse struct {
	Body       any               `json:"body"`
	Mimetype   string            `json:"mimetype"`
	HTTPStatus int               `json:"http_status"`
	Headers    map[string]string `json:"headers"`
}

// EnvelopeError is the envelope's error: set when a command fails in its own terms.
type EnvelopeError struct {
	Code    string `json:"error_code"`
	Message string `json:"message"`
}

func successEnvelope(result Result) Envelope {
	return envelope(result.Body, result.Status, nil)
}

func failureEnvelope(failure *Failure) Envelope {
	return envelope(failure.Body, failure.Status, &EnvelopeError{Code: failure.Code, Message: failure.Message})
}

func envelope(body any, status int, failure *EnvelopeError) Envelope {
	if body == nil {
		body = map[string]any{}
	}
	return Envelope{
		Version:  2,
		Response: CommandResponse{Body: body, Mimetype: "application/json", HTTPStatus: status, Headers: map[string]string{}},
		Error:    failure,
		Logs:     []string{},
	}
}

// commandName is the part of a command id the connector dispatches on: "GetStock" for "inventory/GetStock".
func commandName(commandID string) string {
	return commandID[strings.LastIndex(commandID, "/")+1:]
}

// deadlineFromEnv reads CONNECTOR_DEADLINE, Unix time in seconds with a fraction.
func deadlineFromEnv(value string, now time.Time) (time.Time, error) {
	if value == "" {
		return now.Add(defaultTimeout), nil
	}
	seconds, err := strconv.ParseFloat(value, 64)
	if err != nil || math.IsNaN(seconds) || math.IsInf(seconds, 0) {
		return time.Time{}, fmt.Errorf("CONNECTOR_DEADLINE must be Unix time in seconds, got %q", value)
	}
	return unixSeconds(seconds), nil
}

func unixSeconds(seconds float64) time.Time {
	whole, fraction := math.Modf(seconds)
	return time.Unix(int64(whole), int64(fraction*1e9))
}

// readRequest reads all of stdin and parses it as the request's JSON object.
func readRequest(stdin io.Reader) (Params, error) {
	data, err := io.ReadAll(stdin)
	if err != nil {
		return nil, fmt.Errorf("could not read stdin: %w", err)
	}
	return parsePayload(data)
}

// parsePayload parses one request's parameters: a JSON object, as on stdin or in a request line.
func parsePayload(data []byte) (Params, error) {
	var params Params
	if err := json.Unmarshal(data, &params); err != nil || params == nil {
		return nil, fmt.Errorf("the request must be one JSON object of parameters (%d bytes were not)", len(data))
	}
	return params, nil
}

// writeJSONLine writes value as one line of JSON, in one write.
func writeJSONLine(w io.Writer, value any) error {
	var line bytes.Buffer
	encoder := json.NewEncoder(&line)
	encoder.SetEscapeHTML(false)
	if err := encoder.Encode(value); err != nil {
		return err
	}
	_, err := w.Write(line.Bytes())
	return err
}
