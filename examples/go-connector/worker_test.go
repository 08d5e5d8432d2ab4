package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// wait bounds every wait in these tests: a broken worker fails a test instead of stalling it.
const wait = 10 * time.Second

// runningWorker is serveWorker on pipes, as the gateway runs it.
type runningWorker struct {
	t       *testing.T
	stdin   *io.PipeWriter
	answers chan map[string]any
	stderr  *syncBuffer
	done    chan struct{}
}

func startWorker(t *testing.T, concurrency int, handle Handler) *runningWorker {
	t.Helper()
	stdinReader, stdin := io.Pipe()
	stdoutReader, stdout := io.Pipe()
	w := &runningWorker{
		t: t, stdin: stdin, answers: make(chan map[string]any, 16), stderr: &syncBuffer{}, done: make(chan struct{}),
	}
	go func() {
		serveWorker(stdinReader, stdout, w.stderr, concurrency, handle)
		stdout.Close()
		close(w.done)
	}()
	go func() {
		lines := bufio.NewScanner(stdoutReader)
		for lines.Scan() {
			var answer map[string]any
			if err := json.Unmarshal(lines.Bytes(), &answer); err != nil {
				t.Errorf("stdout line is not JSON: %q", lines.Text())
			}
			w.answers <- answer
		}
		close(w.answers)
	}()
	t.Cleanup(func() { stdin.Close() })
	return w
}

func (w *runningWorker) send(message map[string]any) {
	w.t.Helper()
	line, err := json.Marshal(message)
	if err != nil {
		w.t.Fatal(err)
	}
	if _, err := w.stdin.Write(append(line, '\n')); err != nil {
		w.t.Fatal(err)
	}
}

// next is the next answer line; it fails the test when none comes.
func (w *runningWorker) next() map[string]any {
	w.t.Helper()
	select {
	case answer, ok := <-w.answers:
		if !ok {
			w.t.Fatal("the worker's stdout ended before the answer")
		}
		return answer
	case <-time.After(wait):
		w.t.Fatal("no answer within 10 s")
	}
	return nil
}

// finish closes stdin and returns every answer printed after the ones already read.
func (w *runningWorker) finish() []map[string]any {
	w.t.Helper()
	w.stdin.Close()
	var rest []map[string]any
	for {
		select {
		case answer, ok := <-w.answers:
			if !ok {
				<-w.done
				return rest
			}
			rest = append(rest, answer)
		case <-time.After(wait):
			w.t.Fatal("the worker did not exit within 10 s of the end of its stdin")
		}
	}
}

func request(id, command string, payload map[string]any) map[string]any {
	deadline := float64(time.Now().Add(wait).UnixMilli()) / 1000
	return map[string]any{"id": id, "command": command, "deadline": deadline, "timeout": 10, "payload": payload}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(data []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(data)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestWorker_AnswersEachRequestByItsIDWithItsLogs(t *testing.T) {
	_, url := warehouse(t)
	w := startWorker(t, 4, answer)

	w.send(request("a", "inventory/GetStock", map[string]any{"base_url": url, "api_token": token, "sku": "BOLT-M4"}))
	first := w.next()
	w.send(request("b", "inventory/GetStock", map[string]any{"base_url": url, "api_token": token, "sku": "NOPE-1"}))
	second := w.next()

	result := first["result"].(map[string]any)
	status := result["command_response"].(map[string]any)["http_status"]
	if first["id"] != "a" || result["error"] != nil || status != 200.0 {
		t.Errorf("first answer: %v", first)
	}
	logs := first["logs"].([]any)
	if len(logs) != 1 || !strings.HasPrefix(logs[0].(string), "GET "+url+"/items/BOLT-M4 -> 200 in ") {
		t.Errorf("logs: %v", logs)
	}
	failure := second["result"].(map[string]any)["error"].(map[string]any)
	if second["id"] != "b" || failure["error_code"] != "UnknownItem" {
		t.Errorf("second answer: %v", second)
	}
	if !strings.Contains(w.stderr.String(), "[a] GET "+url+"/items/BOLT-M4 -> 200 in ") {
		t.Errorf("stderr: %q", w.stderr.String())
	}
}

func TestWorker_OneAtATimeLogsToStderrOnly(t *testing.T) {
	_, url := warehouse(t)
	w := startWorker(t, 1, answer)

	w.send(request("a", "inventory/GetStock", map[string]any{"base_url": url, "api_token": token, "sku": "BOLT-M4"}))
	got := w.next()

	if _, ok := got["logs"]; ok {
		t.Errorf("the gateway takes stderr as the logs already; the answer repeats them: %v", got["logs"])
	}
	if !strings.HasPrefix(w.stderr.String(), "GET "+url+"/items/BOLT-M4 -> 200 in ") {
		t.Errorf("stderr: %q", w.stderr.String())
	}
}

func TestWorker_RunsRequestsAtOnce(t *testing.T) {
	arrived := make(chan struct{}, 2)
	release := make(chan struct{})
	url := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"sku": "X"}`))
	})
	w := startWorker(t, 2, answer)

	w.send(request("a", "inventory/GetStock", map[string]any{"base_url": url, "sku": "X"}))
	w.send(request("b", "inventory/GetStock", map[string]any{"base_url": url, "sku": "X"}))
	for i := 0; i < 2; i++ {
		select {
		case <-arrived:
		case <-time.After(wait):
			t.Fatal("the second request did not reach the upstream while the first waited")
		}
	}
	close(release)

	ids := map[any]bool{w.next()["id"]: true, w.next()["id"]: true}
	if !ids["a"] || !ids["b"] {
		t.Errorf("answered: %v", ids)
	}
}

func TestWorker_ACancelledRequestStopsItsUpstreamCallAndIsNotAnswered(t *testing.T) {
	arrived := make(chan struct{}, 1)
	abandoned := make(chan struct{})
	url := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-r.Context().Done()
		close(abandoned)
	})
	w := startWorker(t, 2, answer)
	w.send(request("a", "inventory/GetStock", map[string]any{"base_url": url, "sku": "X"}))
	<-arrived

	w.send(map[string]any{"cancel": "a"})

	select {
	case <-abandoned:
	case <-time.After(wait):
		t.Fatal("the upstream call went on after the cancellation")
	}
	w.send(request("b", "inventory/Unknown", map[string]any{}))
	if got := w.next(); got["id"] != "b" {
		t.Errorf("answered %v", got)
	}
	if rest := w.finish(); len(rest) != 0 {
		t.Errorf("the cancelled request was answered: %v", rest)
	}
	if !strings.Contains(w.stderr.String(), "[a] Stopped: cancelled, or past its deadline.") {
		t.Errorf("stderr: %q", w.stderr.String())
	}
}

func TestWorker_ARequestPastItsDeadlineIsNotAnswered(t *testing.T) {
	late := func(ctx context.Context, commandID string, params Params, call Call) (Envelope, error) {
		<-ctx.Done()
		return successEnvelope(Result{Status: 200, Body: "too late"}), nil
	}
	w := startWorker(t, 1, late)
	past := request("a", "inventory/GetStock", map[string]any{})
	past["deadline"] = float64(time.Now().Add(200*time.Millisecond).UnixMilli()) / 1000

	w.send(past)

	if rest := w.finish(); len(rest) != 0 {
		t.Errorf("answered after its deadline: %v", rest)
	}
}

func TestWorker_UnknownCommandsAndBadPayloadsAreFailed(t *testing.T) {
	w := startWorker(t, 1, answer)

	w.send(request("a", "inventory/Restock", map[string]any{}))
	unknown := w.next()
	w.send(map[string]any{"id": "b", "command": "inventory/GetStock", "payload": []int{1}})
	bad := w.next()

	if unknown["failed"] != "Unknown command 'inventory/Restock'; this connector offers GetStock, ReserveStock." {
		t.Errorf("got %v", unknown)
	}
	if bad["failed"] != "The payload: the request must be one JSON object of parameters (3 bytes were not)." {
		t.Errorf("got %v", bad)
	}
}

func TestWorker_APanicFailsOnlyItsRequest(t *testing.T) {
	calls := 0
	fragile := func(ctx context.Context, commandID string, params Params, call Call) (Envelope, error) {
		calls++
		if calls == 1 {
			panic("boom")
		}
		return successEnvelope(Result{Status: 200, Body: "fine"}), nil
	}
	w := startWorker(t, 1, fragile)

	w.send(request("a", "x/Y", map[string]any{}))
	first := w.next()
	w.send(request("b", "x/Y", map[string]any{}))
	second := w.next()

	if first["failed"] != "Internal error: boom" || second["result"] == nil {
		t.Errorf("got %v then %v", first, second)
	}
}

func TestWorker_IgnoresLinesThatAreNotRequestsWithoutQuotingThem(t *testing.T) {
	w := startWorker(t, 1, answer)

	_, _ = w.stdin.Write([]byte("Bearer s3cret\n\n[1]\n"))
	w.send(request("a", "x/Y", map[string]any{}))
	w.next()

	stderr := w.stderr.String()
	want := "Ignored a stdin line of 14 bytes that is not a request.\n" +
		"Ignored a stdin line of 4 bytes that is not a request.\n"
	if stderr != want {
		t.Errorf("stderr: %q", stderr)
	}
}

func TestWorker_TheEndOfStdinLetsRequestsInFlightFinish(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{})
	slow := func(ctx context.Context, commandID string, params Params, call Call) (Envelope, error) {
		close(started)
		<-release
		return successEnvelope(Result{Status: 200, Body: "done"}), nil
	}
	w := startWorker(t, 1, slow)
	w.send(request("a", "x/Y", map[string]any{}))
	<-started

	go func() {
		time.Sleep(100 * time.Millisecond)
		close(release)
	}()
	rest := w.finish()

	if len(rest) != 1 || rest[0]["id"] != "a" {
		t.Errorf("answers after the end of stdin: %v", rest)
	}
}

func TestWorker_RunStartsItForConnectorModeWorker(t *testing.T) {
	env := map[string]string{"CONNECTOR_MODE": "worker", "CONNECTOR_CONCURRENCY": "3"}
	stdin := strings.NewReader(fmt.Sprintf("%s\n", `{"id": "a", "command": "inventory/Restock", "payload": {}}`))
	var stdout, stderr bytes.Buffer

	status := run(func(name string) string { return env[name] }, stdin, &stdout, &stderr)

	want := `{"id":"a","failed":"Unknown command 'inventory/Restock'; ` +
		`this connector offers GetStock, ReserveStock."}` + "\n"
	if status != 0 || stdout.String() != want {
		t.Errorf("exit %d, stdout %q", status, stdout.String())
	}
}
