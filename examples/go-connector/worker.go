package main

// Worker mode (CONNECTOR_MODE=worker): one long-lived process serves many
// requests, each a line of JSON on stdin, up to CONNECTOR_CONCURRENCY at once,
// and answers each with a line of JSON on stdout. Nothing here knows about
// inventory; copy it as is for a new connector. See "Worker mode" in
// ../../docs/connector-protocol.md.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"sync"
	"time"
)

// Handler answers one request with what a spawned connector would print on
// stdout; an error becomes a "failed" answer, which the gateway answers as connector_failed.
type Handler func(ctx context.Context, commandID string, params Params, call Call) (Envelope, error)

// requestLine is a line from the gateway: a request, or {"cancel": id}.
type requestLine struct {
	ID       *string         `json:"id"`
	Command  string          `json:"command"`  // e.g. "inventory/GetStock"
	Deadline *float64        `json:"deadline"` // Unix time in seconds
	Payload  json.RawMessage `json:"payload"`
	Cancel   *string         `json:"cancel"`
}

// answerLine is the line answering one request: Result, or Failed.
type answerLine struct {
	ID     string    `json:"id"`
	Result *Envelope `json:"result,omitempty"`
	Failed *string   `json:"failed,omitempty"`
	Logs   []string  `json:"logs,omitempty"`
}

// worker holds what the requests in flight share.
type worker struct {
	handle      Handler
	concurrency int
	slots       chan struct{} // one token per request being handled
	stdout      *lockedWriter
	stderr      *lockedWriter

	mu       sync.Mutex
	inFlight map[string]context.CancelFunc // by request id
}

// serveWorker serves the request lines of stdin until it ends, then lets the requests in flight finish.
func serveWorker(stdin io.Reader, stdout, stderr io.Writer, concurrency int, handle Handler) {
	w := &worker{
		handle:      handle,
		concurrency: concurrency,
		slots:       make(chan struct{}, concurrency),
		stdout:      &lockedWriter{w: stdout},
		stderr:      &lockedWriter{w: stderr},
		inFlight:    map[string]context.CancelFunc{},
	}
	var running sync.WaitGroup
	lines := bufio.NewReader(stdin)
	for {
		line, err := lines.ReadBytes('\n')
		if message, ok := w.parse(line); ok {
			w.dispatch(message, &running)
		}
		if err != nil {
			break // end of file: the gateway wants this worker to finish and exit
		}
	}
	running.Wait()
}

// parse reads one line; false for a blank line, or one that is not a request or cancellation.
func (w *worker) parse(line []byte) (requestLine, bool) {
	var message requestLine
	if len(bytes.TrimSpace(line)) == 0 {
		return message, false
	}
	if json.Unmarshal(line, &message) != nil || message.ID == nil && message.Cancel == nil {
		// Not quoted: it may hold a credential.
		w.stderr.line(fmt.Sprintf("Ignored a stdin line of %d bytes that is not a request.", len(line)))
		return message, false
	}
	return message, true
}

// dispatch starts a request, or cancels one. It never waits, so a cancellation is read while requests run.
func (w *worker) dispatch(message requestLine, running *sync.WaitGroup) {
	if message.Cancel != nil {
		w.mu.Lock()
		if cancel, ok := w.inFlight[*message.Cancel]; ok {
			cancel()
		}
		w.mu.Unlock()
		return
	}

	deadline := time.Now().Add(defaultTimeout)
	if message.Deadline != nil {
		deadline = unixSeconds(*message.Deadline)
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	id := *message.ID
	w.mu.Lock()
	w.inFlight[id] = cancel
	w.mu.Unlock()

	running.Add(1)
	go func() {
		defer running.Done()
		defer w.finish(id, cancel)
		w.serve(ctx, id, message)
	}()
}

func (w *worker) finish(id string, cancel context.CancelFunc) {
	w.mu.Lock()
	delete(w.inFlight, id)
	w.mu.Unlock()
	cancel()
}

// serve runs one request once a slot is free, and prints its answer unless the gateway gave up on it first.
func (w *worker) serve(ctx context.Context, id string, message requestLine) {
	select {
	case w.slots <- struct{}{}:
		defer func() { <-w.slots }()
	case <-ctx.Done():
		return
	}

	var logs []string
	call := Call{RequestID: id, Log: w.logger(id, &logs)}
	reply := answerLine{ID: id}
	envelope, err := w.handleSafely(ctx, message, call)
	if err != nil {
		failed := err.Error()
		reply.Failed = &failed
	} else {
		reply.Result = &envelope
	}
	reply.Logs = logs

	if ctx.Err() != nil {
		// Cancelled or past its deadline: the gateway has answered it already, or its caller is gone.
		w.stderr.line(fmt.Sprintf("[%s] Stopped: cancelled, or past its deadline.", id))
		return
	}
	if err := writeJSONLine(w.stdout, reply); err != nil {
		w.stderr.line(fmt.Sprintf("[%s] Could not write the answer to stdout: %v", id, err))
	}
}

// handleSafely is the handler's answer; a panic becomes a failed answer instead of ending the worker.
func (w *worker) handleSafely(ctx context.Context, message requestLine, call Call) (envelope Envelope, err error) {
	defer func() {
		if problem := recover(); problem != nil {
			w.stderr.line(fmt.Sprintf("[%s] %v\n%s", call.RequestID, problem, debug.Stack()))
			err = fmt.Errorf("Internal error: %v", problem)
		}
	}()
	params, err := parsePayload(message.Payload)
	if err != nil {
		return Envelope{}, errors.New("The payload: " + err.Error() + ".")
	}
	return w.handle(ctx, message.Command, params, call)
}

// logger is where a request's log lines go. With one request at a time the
// gateway makes this process's stderr the request's spiff__logs, as in spawn
// mode. With more, it cannot tell whose a stderr line is: the lines travel in
// the answer's "logs", and stderr, tagged with the request id, feeds only the gateway's log.
func (w *worker) logger(id string, logs *[]string) func(string) {
	if w.concurrency == 1 {
		return w.stderr.line
	}
	var mu sync.Mutex
	return func(line string) {
		mu.Lock()
		*logs = append(*logs, line)
		mu.Unlock()
		w.stderr.line("[" + id + "] " + line)
	}
}

// lockedWriter writes whole lines from several goroutines without interleaving them.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(data []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(data)
}

func (l *lockedWriter) line(text string) {
	_, _ = l.Write([]byte(text + "\n"))
}
