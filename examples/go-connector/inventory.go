package main

// The inventory commands, against a warehouse's JSON API:
// GetStock (GET {base_url}/items/{sku}) and ReserveStock (POST {base_url}/reservations).
// Each reads its parameters, makes one upstream call and answers the upstream's
// result, or a *Failure with one of the codes listed in the README.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
)

// Command answers one request; an error that is not a *Failure is a bug.
type Command func(ctx context.Context, params Params, call Call) (Result, error)

// commands are the commands by name: "GetStock" serves inventory/GetStock.
var commands = map[string]Command{
	"GetStock":     getStock,
	"ReserveStock": reserveStock,
}

// maxQuantity is the most one reservation may ask for.
const maxQuantity = 100_000

var skuPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

func getStock(ctx context.Context, params Params, call Call) (Result, error) {
	r := paramReader{params: params}
	base := baseURL(&r)
	headers := authorization(&r)
	sku := readSKU(&r)
	if err := rejectIfAny(&r); err != nil {
		return Result{}, err
	}

	target := endpoint(base, "/items/"+sku)
	response, err := send(ctx, call, UpstreamRequest{Method: "GET", URL: target, Headers: tracing(call, headers)})
	if err != nil {
		return Result{}, err
	}

	if response.Status == 404 {
		return Result{}, unknownItem(sku, base, response.Body)
	}
	return resultOf(response, fmt.Sprintf("item '%s'", sku), target)
}

func reserveStock(ctx context.Context, params Params, call Call) (Result, error) {
	r := paramReader{params: params}
	base := baseURL(&r)
	headers := authorization(&r)
	reservation, sku, quantity := reservationFrom(&r)
	// Arena retries a task after a 5xx; with the task's id as the key, the service
	// answers the reservation it already made instead of holding the stock twice.
	if taskID := r.str("spiff__task_id", false); taskID != "" {
		headers["Idempotency-Key"] = taskID
	}
	if err := rejectIfAny(&r); err != nil {
		return Result{}, err
	}

	target := endpoint(base, "/reservations")
	request := UpstreamRequest{Method: "POST", URL: target, Headers: tracing(call, headers), JSON: reservation}
	response, err := send(ctx, call, request)
	if err != nil {
		return Result{}, err
	}

	switch response.Status {
	case 404:
		return Result{}, unknownItem(sku, base, response.Body)
	case 409:
		message := fmt.Sprintf("Item '%s' has %s available; %d were asked for. "+
			"Set 'allow_partial' to reserve what there is.", sku, available(response.Body), quantity)
		return Result{}, &Failure{Code: "InsufficientStock", Message: message, Status: 409, Body: response.Body}
	}
	return resultOf(response, fmt.Sprintf("the reservation of %d of item '%s'", quantity, sku), target)
}

// reservationFrom is the reservation to send, and its sku and quantity for messages.
func reservationFrom(r *paramReader) (reservation map[string]any, sku string, quantity int64) {
	sku = readSKU(r)
	quantity, ok := r.integer("quantity", true)
	if ok && (quantity < 1 || quantity > maxQuantity) {
		r.problem("Parameter 'quantity' must be from 1 to %d, got %d.", maxQuantity, quantity)
	}
	reservation = map[string]any{"sku": sku, "quantity": quantity, "allow_partial": r.boolean("allow_partial", false)}
	if note := r.str("note", false); note != "" {
		reservation["note"] = note
	}
	if metadata := r.object("metadata"); metadata != nil {
		reservation["metadata"] = metadata
	}
	return reservation, sku, quantity
}

func unknownItem(sku string, base *url.URL, body any) *Failure {
	message := fmt.Sprintf("Item '%s' does not exist in the inventory at %s. Check 'sku'.", sku, printable(base))
	return &Failure{Code: "UnknownItem", Message: message, Status: 404, Body: body}
}

func readSKU(r *paramReader) string {
	sku := r.str("sku", true)
	if sku != "" && !skuPattern.MatchString(sku) {
		r.problem("Parameter 'sku' must be 1 to 64 letters, digits, '.', '_' or '-', got %s.", show(r.raw("sku")))
	}
	return sku
}

// baseURL reads base_url; nil when it is missing or wrong.
func baseURL(r *paramReader) *url.URL {
	text := r.str("base_url", true)
	if text == "" {
		return nil
	}
	base, err := url.Parse(text)
	switch {
	case err != nil:
		// Not quoted: the text may hold a password that did not parse.
		r.problem("Parameter 'base_url' is not a URL; give one such as https://inventory.example.com/api.")
	case base.User != nil:
		r.problem("Parameter 'base_url' must not hold a user name or password; use 'api_token'.")
	case base.Scheme != "http" && base.Scheme != "https" || base.Host == "":
		r.problem("Parameter 'base_url' must be an http or https URL, got %q.", text)
	default:
		return base
	}
	return nil
}

// endpoint is base with path appended to its own path; its query string is kept.
func endpoint(base *url.URL, path string) *url.URL {
	target := *base
	// Set as text: url.URL escapes it when the request is made.
	target.Path = strings.TrimRight(target.Path, "/") + path
	target.RawPath = ""
	return &target
}

// authorization is the Authorization header for api_token; the token is never quoted.
func authorization(r *paramReader) map[string]string {
	headers := map[string]string{}
	token := r.secret("api_token")
	if token == "" {
		return headers
	}
	for _, c := range token {
		if c < 0x21 || c > 0x7e {
			r.problem("Parameter 'api_token' must be printable ASCII without spaces.")
			return headers
		}
	}
	headers["Authorization"] = "Bearer " + token
	return headers
}

// tracing lets the service's logs be matched with the gateway's.
func tracing(call Call, headers map[string]string) map[string]string {
	if call.RequestID != "" {
		headers["X-Request-Id"] = call.RequestID
	}
	return headers
}

func rejectIfAny(r *paramReader) error {
	if len(r.problems) == 0 {
		return nil
	}
	body := map[string]any{"problems": r.problems}
	return &Failure{Code: "InvalidInventoryRequest", Message: strings.Join(r.problems, " "), Status: 400, Body: body}
}

// send makes the upstream call; failing to get an answer is a *Failure that says whether a retry may help.
func send(ctx context.Context, call Call, request UpstreamRequest) (UpstreamResponse, error) {
	response, err := sendJSON(ctx, call, request)
	var upstream *UpstreamError
	if !errors.As(err, &upstream) {
		return response, err
	}
	switch upstream.Kind {
	case timedOut:
		return response, &Failure{Code: "InventoryTimeout", Message: upstream.Message, Status: 504}
	case tooLarge:
		return response, &Failure{Code: "InventoryServiceError", Message: upstream.Message, Status: 502}
	default:
		return response, &Failure{Code: "InventoryUnavailable", Message: upstream.Message, Status: 503}
	}
}

// resultOf is the upstream's answer as a result, or the *Failure its status means.
func resultOf(response UpstreamResponse, subject string, target *url.URL) (Result, error) {
	status, body := response.Status, response.Body
	said := detail(body)
	switch {
	case status >= 200 && status < 300:
		return Result{Status: status, Body: body}, nil
	case status == 400 || status == 422:
		message := fmt.Sprintf("The inventory service rejected %s%s.", subject, said)
		return Result{}, &Failure{Code: "InvalidInventoryRequest", Message: message, Status: status, Body: body}
	case status == 401 || status == 403:
		message := fmt.Sprintf("The inventory service refused access (%d)%s. Check 'api_token'.", status, said)
		return Result{}, &Failure{Code: "InventoryAccessDenied", Message: message, Status: status, Body: body}
	case status == 429 || status >= 500:
		message := fmt.Sprintf("The inventory service is unavailable (%d)%s. A retry may succeed.", status, said)
		return Result{}, &Failure{Code: "InventoryUnavailable", Message: message, Status: status, Body: body}
	}
	// A redirect or an unexpected 4xx usually means base_url points at the wrong place.
	inner := status
	if inner < 400 {
		inner = 502
	}
	message := fmt.Sprintf("%s answered %d%s. Check 'base_url'.", printable(target), status, said)
	return Result{}, &Failure{Code: "InventoryServiceError", Message: message, Status: inner, Body: body}
}

// available is the count a 409 answer says is available, or "fewer".
func available(body any) string {
	if document, ok := body.(map[string]any); ok {
		if count, ok := document["available"].(json.Number); ok {
			return "only " + count.String()
		}
	}
	return "fewer"
}

// detail is the upstream's own explanation from an error body, as ": explanation", or "".
func detail(body any) string {
	document, ok := body.(map[string]any)
	if !ok {
		return ""
	}
	for _, key := range []string{"error", "message"} {
		if text, ok := document[key].(string); ok && text != "" {
			runes := []rune(text)
			if len(runes) > 200 {
				runes = runes[:200]
			}
			return ": " + strings.TrimRight(string(runes), ".")
		}
	}
	return ""
}
