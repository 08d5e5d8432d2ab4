package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// spawned is run in spawn mode with this environment and stdin.
func spawned(env map[string]string, stdin string) (status int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	status = run(func(name string) string { return env[name] }, strings.NewReader(stdin), &out, &errOut)
	return status, out.String(), errOut.String()
}

func spawnEnv(command string) map[string]string {
	return map[string]string{
		"CONNECTOR_COMMAND":    command,
		"CONNECTOR_REQUEST_ID": "r-9",
		"CONNECTOR_DEADLINE":   fmt.Sprintf("%.3f", float64(time.Now().Add(wait).UnixMilli())/1000),
	}
}

func TestSpawn_PrintsTheEnvelopeAndLogsToStderr(t *testing.T) {
	service, url := warehouse(t)
	stdin := fmt.Sprintf(`{"base_url": %q, "api_token": %q, "sku": "WIDGET-1", "quantity": 2}`, url, token)

	status, stdout, stderr := spawned(spawnEnv("inventory/ReserveStock"), stdin)

	var envelope map[string]any
	if err := json.Unmarshal([]byte(stdout), &envelope); err != nil || !strings.HasSuffix(stdout, "}\n") {
		t.Fatalf("stdout is not one JSON line: %q", stdout)
	}
	response := envelope["command_response"].(map[string]any)
	if status != 0 || envelope["command_response_version"] != 2.0 || envelope["error"] != nil ||
		response["http_status"] != 201.0 {
		t.Errorf("exit %d, envelope %v", status, envelope)
	}
	if !strings.HasPrefix(stderr, "POST "+url+"/reservations -> 201 in ") || strings.Contains(stderr, token) {
		t.Errorf("stderr: %q", stderr)
	}
	if id := service.Requests()[0].Header.Get("X-Request-Id"); id != "r-9" {
		t.Errorf("X-Request-Id: %q", id)
	}
}

func TestSpawn_AFailureOfItsOwnIsAnEnvelopeAndExitZero(t *testing.T) {
	_, url := warehouse(t)

	stdin := fmt.Sprintf(`{"base_url": %q, "api_token": %q, "sku": "NOPE-1"}`, url, token)

	status, stdout, _ := spawned(spawnEnv("inventory/GetStock"), stdin)

	var envelope struct {
		Error    EnvelopeError   `json:"error"`
		Response CommandResponse `json:"command_response"`
	}
	if err := json.Unmarshal([]byte(stdout), &envelope); err != nil {
		t.Fatal(err)
	}
	if status != 0 || envelope.Error.Code != "UnknownItem" || envelope.Response.HTTPStatus != 404 {
		t.Errorf("exit %d, %+v", status, envelope)
	}
}

func TestSpawn_WhatTheGatewayAnswersAsConnectorFailed(t *testing.T) {
	cases := []struct {
		name     string
		env      map[string]string
		stdin    string
		status   int
		lastLine string
	}{
		{"an unknown command", spawnEnv("inventory/Restock"), "{}", 64,
			"Unknown command 'inventory/Restock'; this connector offers GetStock, ReserveStock."},
		{"stdin that is not an object", spawnEnv("inventory/GetStock"), "[]", 65,
			"Stdin: the request must be one JSON object of parameters (2 bytes were not)."},
		{"a deadline that is not a time",
			map[string]string{"CONNECTOR_COMMAND": "inventory/GetStock", "CONNECTOR_DEADLINE": "soon"}, "{}", 64,
			`CONNECTOR_DEADLINE must be Unix time in seconds, got "soon".`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status, stdout, stderr := spawned(c.env, c.stdin)

			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			if status != c.status || stdout != "" || lines[len(lines)-1] != c.lastLine {
				t.Errorf("exit %d, stdout %q, stderr %q", status, stdout, stderr)
			}
		})
	}
}

func TestDeadlineFromEnv(t *testing.T) {
	now := time.Unix(1_000, 0)
	cases := map[string]time.Time{
		"1796310000.25": time.Unix(1796310000, 250_000_000),
		"1796310000":    time.Unix(1796310000, 0),
		"":              now.Add(defaultTimeout),
	}
	for value, want := range cases {
		got, err := deadlineFromEnv(value, now)
		if err != nil || got.Sub(want).Abs() > time.Microsecond {
			t.Errorf("%q: got %v %v, want %v", value, got, err, want)
		}
	}
	if _, err := deadlineFromEnv("NaN", now); err == nil {
		t.Error("NaN was taken as a deadline")
	}
}
