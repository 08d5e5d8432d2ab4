package main

// One JSON request to the upstream service: sent within the request's deadline,
// logged as one line without credentials, answered as a status and a parsed
// body. Failing to get an answer at all is an *UpstreamError.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// margin is kept free before the deadline so the connector can still print its answer.
const margin = 250 * time.Millisecond

// maxBody bounds an upstream answer, well under the gateway's 16 MiB limit on stdout.
const maxBody = 8 << 20

// client is shared by all requests of a process: a worker reuses its connections.
var client = &http.Client{
	Transport: keepingConnections(),
	// A redirect would carry the credentials to wherever it points; it is reported instead.
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// keepingConnections is the default transport (proxies from the environment included)
// keeping enough idle connections for a worker's concurrent requests to one service.
func keepingConnections() *http.Transport {
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = 32
	return transport
}

// UpstreamRequest is one call to the upstream; Headers are sent as they are and never logged.
type UpstreamRequest struct {
	Method  string
	URL     *url.URL
	Headers map[string]string
	JSON    any // sent as the body when not nil
}

// UpstreamResponse is the upstream's answer: parsed JSON, {"raw_response": text}, or nil when empty.
type UpstreamResponse struct {
	Status int
	Body   any
}

// UpstreamError says why no usable answer came.
type UpstreamError struct {
	Kind    failureKind
	Message string
}

type failureKind int

const (
	timedOut    failureKind = iota // the deadline came first
	unreachable                    // the network failed, or the request was cancelled
	tooLarge                       // the answer was longer than maxBody
)

func (e *UpstreamError) Error() string { return e.Message }

func sendJSON(ctx context.Context, call Call, request UpstreamRequest) (UpstreamResponse, error) {
	line := request.Method + " " + printable(request.URL)
	started := time.Now()
	ctx, cancel := withMargin(ctx)
	defer cancel()
	if ctx.Err() != nil {
		call.Log(line + " not sent: the deadline has passed")
		message := printable(request.URL) + " was not called: no time was left before the deadline."
		return UpstreamResponse{}, &UpstreamError{Kind: timedOut, Message: message}
	}

	response, err := client.Do(httpRequest(ctx, request))
	var data []byte
	if err == nil {
		data, err = io.ReadAll(io.LimitReader(response.Body, maxBody+1))
		response.Body.Close()
	}
	elapsed := time.Since(started).Milliseconds()
	if err != nil {
		failure := transportFailure(ctx, request.URL, err, elapsed)
		call.Log(fmt.Sprintf("%s failed: %s", line, failure.reason))
		return UpstreamResponse{}, failure.err
	}

	call.Log(fmt.Sprintf("%s -> %d in %d ms", line, response.StatusCode, elapsed))
	if len(data) > maxBody {
		message := fmt.Sprintf("%s answered more than %d MiB, which this connector does not pass on.",
			printable(request.URL), maxBody>>20)
		return UpstreamResponse{}, &UpstreamError{Kind: tooLarge, Message: message}
	}
	return UpstreamResponse{Status: response.StatusCode, Body: parseBody(data, response.Header.Get("Content-Type"))}, nil
}

// withMargin is ctx with its deadline brought forward by margin, and the default timeout when it has none.
func withMargin(ctx context.Context) (context.Context, context.CancelFunc) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(defaultTimeout)
	}
	return context.WithDeadline(ctx, deadline.Add(-margin))
}

func httpRequest(ctx context.Context, request UpstreamRequest) *http.Request {
	var body io.Reader
	if request.JSON != nil {
		data, err := json.Marshal(request.JSON)
		if err != nil {
			panic(fmt.Sprintf("the request body for %s cannot be encoded: %v", printable(request.URL), err))
		}
		body = bytes.NewReader(data)
	}
	// NewRequestWithContext fails only for a bad method or a URL that does not parse; both are fixed here.
	req, err := http.NewRequestWithContext(ctx, request.Method, request.URL.String(), body)
	if err != nil {
		panic(err)
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for name, value := range request.Headers {
		req.Header.Set(name, value)
	}
	return req
}

type transport struct {
	err    *UpstreamError
	reason string // short, for the log line
}

func transportFailure(ctx context.Context, target *url.URL, err error, elapsed int64) transport {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		reason := fmt.Sprintf("gave up after %d ms", elapsed)
		message := fmt.Sprintf("%s did not answer in time (%s).", printable(target), reason)
		return transport{&UpstreamError{Kind: timedOut, Message: message}, reason}
	}
	if ctx.Err() != nil {
		message := printable(target) + " was not waited for: the request was cancelled."
		return transport{&UpstreamError{Kind: unreachable, Message: message}, "cancelled"}
	}
	reason := networkReason(err)
	message := fmt.Sprintf("%s could not be reached (%s).", printable(target), reason)
	return transport{&UpstreamError{Kind: unreachable, Message: message}, reason}
}

// networkReason is the innermost cause of a network failure, without the URL *url.Error repeats.
func networkReason(err error) string {
	var urlError *url.Error
	if errors.As(err, &urlError) {
		err = urlError.Err
	}
	return err.Error()
}

func parseBody(data []byte, contentType string) any {
	if len(data) == 0 {
		return nil
	}
	if strings.Contains(contentType, "json") {
		decoder := json.NewDecoder(bytes.NewReader(data))
		// Numbers are kept as written: an id of 2^60 must not come back rounded.
		decoder.UseNumber()
		var value any
		if decoder.Decode(&value) == nil && !decoder.More() {
			return value
		}
		// Mislabelled text is still worth showing to the modeler.
	}
	return map[string]any{"raw_response": string(data)}
}

// printable is the URL as it may appear in logs and messages: no user info, no query string.
func printable(target *url.URL) string {
	return target.Scheme + "://" + target.Host + target.EscapedPath()
}
