package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"connector-gateway/examples/go-connector/devservice"
)

const token = "tk_live_5ecret"

// warehouse is the dev service on a loopback port for the length of a test.
func warehouse(t *testing.T) (*devservice.Service, string) {
	t.Helper()
	service := devservice.New(token)
	server := httptest.NewServer(service)
	t.Cleanup(server.Close)
	return service, server.URL
}

// upstream is a loopback server answering every request with handler.
func upstream(t *testing.T, handler http.HandlerFunc) string {
	t.Helper()
	server := httptest.NewServer(handler)
	t.Cleanup(server.Close)
	return server.URL
}

// params is a payload built from Go values, as the gateway would send it.
func params(t *testing.T, values map[string]any) Params {
	t.Helper()
	data, err := json.Marshal(values)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := parsePayload(data)
	if err != nil {
		t.Fatal(err)
	}
	return parsed
}

// recorder is a Call whose log lines are kept.
type recorder struct{ lines []string }

func (r *recorder) call() Call {
	return Call{RequestID: "req-1", Log: func(line string) { r.lines = append(r.lines, line) }}
}

// invoke runs command on values, as the gateway would pass them, within 10 s.
func invoke(t *testing.T, command Command, values map[string]any) (Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	result, _, err := invokeLogged(t, ctx, command, values)
	return result, err
}

// invokeLogged runs command on values within ctx, and returns its log lines too.
func invokeLogged(t *testing.T, ctx context.Context, command Command, values map[string]any) (Result, []string, error) {
	t.Helper()
	log := &recorder{}
	result, err := command(ctx, params(t, values), log.call())
	return result, log.lines, err
}

// failureOf is err as a *Failure, or the test fails.
func failureOf(t *testing.T, err error) *Failure {
	t.Helper()
	failure, ok := err.(*Failure)
	if !ok {
		t.Fatalf("want a *Failure, got %T: %v", err, err)
	}
	return failure
}

// asJSON is a value as the envelope would print it, decoded again: for comparing bodies.
func asJSON(t *testing.T, value any) any {
	t.Helper()
	data, err := json.Marshal(value)
	if err != nil {
		t.Fatal(err)
	}
	var decoded any
	if err := json.Unmarshal(data, &decoded); err != nil {
		t.Fatal(err)
	}
	return decoded
}

func TestGetStock_AnswersTheItemWithOneLogLine(t *testing.T) {
	service, url := warehouse(t)
	values := map[string]any{"base_url": url + "/", "api_token": token, "sku": "GEAR-7"}

	result, lines, err := invokeLogged(t, context.Background(), getStock, values)

	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"sku": "GEAR-7", "name": "Gear, 7 teeth", "on_hand": 3.0, "reserved": 0.0, "available": 3.0}
	if result.Status != 200 || !reflect.DeepEqual(asJSON(t, result.Body), want) {
		t.Errorf("got %d %v, want 200 %v", result.Status, asJSON(t, result.Body), want)
	}
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "GET "+url+"/items/GEAR-7 -> 200 in ") {
		t.Errorf("log lines: %q", lines)
	}
	sent := service.Requests()[0]
	if sent.Header.Get("Authorization") != "Bearer "+token || sent.Header.Get("X-Request-Id") != "req-1" {
		t.Errorf("headers sent: %v", sent.Header)
	}
}

func TestGetStock_AnUnknownSKUIsUnknownItem(t *testing.T) {
	_, url := warehouse(t)

	_, err := invoke(t, getStock, map[string]any{"base_url": url, "api_token": token, "sku": "NOPE-1"})

	failure := failureOf(t, err)
	want := "Item 'NOPE-1' does not exist in the inventory at " + url + ". Check 'sku'."
	if failure.Code != "UnknownItem" || failure.Status != 404 || failure.Message != want {
		t.Errorf("got %+v", failure)
	}
}

func TestReserveStock_SendsEveryParameterAndTheIdempotencyKey(t *testing.T) {
	service, url := warehouse(t)
	values := map[string]any{
		"base_url": url, "api_token": token, "sku": "WIDGET-1", "quantity": 5, "allow_partial": false,
		"note": "rush", "metadata": map[string]any{"order": "SO-1042"}, "spiff__task_id": "task-7",
	}

	result, err := invoke(t, reserveStock, values)

	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"id": "R-1", "sku": "WIDGET-1", "requested": 5.0, "quantity": 5.0, "partial": false,
		"note": "rush", "metadata": map[string]any{"order": "SO-1042"}, "status": "held",
	}
	if result.Status != 201 || !reflect.DeepEqual(asJSON(t, result.Body), want) {
		t.Errorf("got %d %v", result.Status, asJSON(t, result.Body))
	}
	if key := service.Requests()[0].Header.Get("Idempotency-Key"); key != "task-7" {
		t.Errorf("Idempotency-Key: %q", key)
	}
}

func TestReserveStock_TooFewIsInsufficientStock(t *testing.T) {
	_, url := warehouse(t)

	_, err := invoke(t, reserveStock, map[string]any{"base_url": url, "api_token": token, "sku": "GEAR-7", "quantity": 5})

	failure := failureOf(t, err)
	want := "Item 'GEAR-7' has only 3 available; 5 were asked for. Set 'allow_partial' to reserve what there is."
	if failure.Code != "InsufficientStock" || failure.Status != 409 || failure.Message != want {
		t.Errorf("got %+v", failure)
	}
}

func TestReserveStock_AllowPartialReservesWhatThereIs(t *testing.T) {
	_, url := warehouse(t)
	values := map[string]any{"base_url": url, "api_token": token, "sku": "GEAR-7", "quantity": 5, "allow_partial": true}

	result, err := invoke(t, reserveStock, values)

	if err != nil {
		t.Fatal(err)
	}
	body := asJSON(t, result.Body).(map[string]any)
	if body["quantity"] != 3.0 || body["partial"] != true {
		t.Errorf("got %v", body)
	}
}

func TestParameters_EveryProblemIsListedWithoutTheToken(t *testing.T) {
	values := map[string]any{
		"base_url": "ftp://warehouse", "api_token": "bad token", "sku": "A/B", "quantity": 0, "allow_partial": "yes",
		"metadata": []int{1},
	}

	_, err := invoke(t, reserveStock, values)

	failure := failureOf(t, err)
	want := []string{
		`Parameter 'base_url' must be an http or https URL, got "ftp://warehouse".`,
		"Parameter 'api_token' must be printable ASCII without spaces.",
		`Parameter 'sku' must be 1 to 64 letters, digits, '.', '_' or '-', got "A/B".`,
		"Parameter 'quantity' must be from 1 to 100000, got 0.",
		`Parameter 'allow_partial' must be true or false, got "yes".`,
		"Parameter 'metadata' must be an object, got [1].",
	}
	if failure.Code != "InvalidInventoryRequest" || failure.Status != 400 || failure.Message != strings.Join(want, " ") {
		t.Errorf("got %+v", failure)
	}
	if !reflect.DeepEqual(failure.Body, map[string]any{"problems": want}) {
		t.Errorf("body: %v", failure.Body)
	}
}

func TestParameters_MissingAndMistyped(t *testing.T) {
	cases := []struct {
		name   string
		values map[string]any
		want   string
	}{
		{"nothing", map[string]any{},
			"Parameter 'base_url' is required. Parameter 'sku' is required. Parameter 'quantity' is required."},
		{"null is absent", map[string]any{"base_url": nil, "sku": "X", "quantity": 1}, "Parameter 'base_url' is required."},
		{"a fraction", map[string]any{"base_url": "http://h", "sku": "X", "quantity": 2.5},
			"Parameter 'quantity' must be an integer, got 2.5."},
		{"a user in the URL", map[string]any{"base_url": "https://ann:pw@h", "sku": "X", "quantity": 1},
			"Parameter 'base_url' must not hold a user name or password; use 'api_token'."},
		{"a number as sku", map[string]any{"base_url": "http://h", "sku": 7, "quantity": 1},
			"Parameter 'sku' must be a string, got 7."},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := invoke(t, reserveStock, c.values)

			if failure := failureOf(t, err); failure.Message != c.want {
				t.Errorf("got %q, want %q", failure.Message, c.want)
			}
		})
	}
}

func TestParameters_AnIntegerWithAZeroFractionIsTaken(t *testing.T) {
	_, url := warehouse(t)

	values := map[string]any{"base_url": url, "api_token": token, "sku": "BOLT-M4", "quantity": 4.0}

	result, err := invoke(t, reserveStock, values)

	if err != nil || asJSON(t, result.Body).(map[string]any)["quantity"] != 4.0 {
		t.Errorf("got %v %v", result, err)
	}
}

func TestUpstreamStatus_IsTheErrorCodeItMeans(t *testing.T) {
	cases := []struct {
		status int
		code   string
		inner  int
	}{
		{401, "InventoryAccessDenied", 401},
		{403, "InventoryAccessDenied", 403},
		{422, "InvalidInventoryRequest", 422},
		{429, "InventoryUnavailable", 429},
		{503, "InventoryUnavailable", 503},
		{302, "InventoryServiceError", 502},
		{418, "InventoryServiceError", 418},
	}
	for _, c := range cases {
		t.Run(http.StatusText(c.status), func(t *testing.T) {
			url := upstream(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Location", "http://elsewhere.example/")
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(c.status)
				_, _ = w.Write([]byte(`{"error": "Said the service."}`))
			})

			_, err := invoke(t, getStock, map[string]any{"base_url": url, "sku": "X"})

			failure := failureOf(t, err)
			if failure.Code != c.code || failure.Status != c.inner || !strings.Contains(failure.Message, ": Said the service") {
				t.Errorf("got %+v", failure)
			}
		})
	}
}

func TestUpstream_UnreachableIsInventoryUnavailable(t *testing.T) {
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()

	_, err := invoke(t, getStock, map[string]any{"base_url": closed.URL, "sku": "X"})

	failure := failureOf(t, err)
	want := closed.URL + "/items/X could not be reached ("
	if failure.Code != "InventoryUnavailable" || failure.Status != 503 || !strings.HasPrefix(failure.Message, want) {
		t.Errorf("got %+v", failure)
	}
}

func TestUpstream_GivesUpBeforeTheDeadline(t *testing.T) {
	gaveUp := make(chan struct{})
	url := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
		close(gaveUp)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
	defer cancel()

	_, lines, err := invokeLogged(t, ctx, getStock, map[string]any{"base_url": url, "sku": "X"})

	failure := failureOf(t, err)
	want := url + "/items/X did not answer in time (gave up after "
	if failure.Code != "InventoryTimeout" || failure.Status != 504 || !strings.HasPrefix(failure.Message, want) {
		t.Errorf("got %+v", failure)
	}
	if ctx.Err() != nil {
		t.Error("the answer came only after the deadline, too late for the gateway")
	}
	select {
	case <-gaveUp:
	case <-time.After(10 * time.Second):
		t.Error("the upstream never saw the connector hang up")
	}
	if len(lines) != 1 || !strings.Contains(lines[0], " failed: gave up after ") {
		t.Errorf("log lines: %q", lines)
	}
}

func TestUpstream_NoCredentialInLogsOrMessages(t *testing.T) {
	url := upstream(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) })
	values := map[string]any{"base_url": url + "/api?key=q5ecret", "api_token": token, "sku": "X"}

	_, lines, err := invokeLogged(t, context.Background(), getStock, values)

	failure := failureOf(t, err)
	everything := strings.Join(lines, "\n") + failure.Message
	for _, secret := range []string{token, "q5ecret"} {
		if strings.Contains(everything, secret) {
			t.Errorf("%q leaked: %s", secret, everything)
		}
	}
	if !regexp.MustCompile(`^GET ` + url + `/api/items/X -> 500 in \d+ ms$`).MatchString(lines[0]) {
		t.Errorf("log line: %q", lines[0])
	}
}

func TestUpstream_TextIsPassedOnAsRawResponse(t *testing.T) {
	url := upstream(t, func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("plain words")) })

	result, err := invoke(t, getStock, map[string]any{"base_url": url, "sku": "X"})

	if err != nil || !reflect.DeepEqual(result.Body, map[string]any{"raw_response": "plain words"}) {
		t.Errorf("got %v %v", result, err)
	}
}

func TestUpstream_LargeNumbersAreKeptAsWritten(t *testing.T) {
	url := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"id": 1152921504606846977}`))
	})

	result, err := invoke(t, getStock, map[string]any{"base_url": url, "sku": "X"})

	if err != nil {
		t.Fatal(err)
	}
	printed, _ := json.Marshal(result.Body)
	if string(printed) != `{"id":1152921504606846977}` {
		t.Errorf("got %s", printed)
	}
}
