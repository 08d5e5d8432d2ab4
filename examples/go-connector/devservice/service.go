// Package devservice is a small in-memory warehouse with the JSON API the
// inventory connector calls: GET /items/{sku} and POST /reservations. The tests
// run it as the real upstream, and cmd/inventory-service runs it by hand to try
// the connector.
package devservice

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
)

// Item is one stock-keeping unit and how many of it are in the warehouse.
type Item struct {
	SKU       string `json:"sku"`
	Name      string `json:"name"`
	OnHand    int    `json:"on_hand"`
	Reserved  int    `json:"reserved"`
	Available int    `json:"available"`
}

// Reservation is stock held for one order.
type Reservation struct {
	ID        string          `json:"id"`
	SKU       string          `json:"sku"`
	Requested int             `json:"requested"`
	Quantity  int             `json:"quantity"`
	Partial   bool            `json:"partial"`
	Note      string          `json:"note,omitempty"`
	Metadata  json.RawMessage `json:"metadata,omitempty"`
	Status    string          `json:"status"`
}

// Recorded is a request the service received.
type Recorded struct {
	Method string
	Path   string
	Header http.Header
	Body   []byte
}

// Service is the warehouse; its zero value is not usable, call New.
type Service struct {
	token string // the bearer token it demands; "" for none

	mu           sync.Mutex
	items        map[string]*Item
	reservations []*Reservation
	byKey        map[string]*Reservation // by Idempotency-Key
	requests     []Recorded
}

// Seed is the stock a new service starts with.
var Seed = []Item{
	{SKU: "WIDGET-1", Name: "Widget", OnHand: 12},
	{SKU: "GEAR-7", Name: "Gear, 7 teeth", OnHand: 3},
	{SKU: "BOLT-M4", Name: "Bolt M4", OnHand: 500},
}

// New is a service holding the Seed stock that demands token, when not "", as a bearer token.
func New(token string) *Service {
	s := &Service{token: token, items: map[string]*Item{}, byKey: map[string]*Reservation{}}
	for _, item := range Seed {
		copied := item
		copied.Available = copied.OnHand
		s.items[item.SKU] = &copied
	}
	return s
}

// Requests is every request received so far, oldest first.
func (s *Service) Requests() []Recorded {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Recorded(nil), s.requests...)
}

func (s *Service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body json.RawMessage
	_ = json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&body)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = append(s.requests, Recorded{Method: r.Method, Path: r.URL.Path, Header: r.Header.Clone(), Body: body})

	status, answer := s.route(r, body)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(answer)
}

func (s *Service) route(r *http.Request, body json.RawMessage) (int, any) {
	if s.token != "" && r.Header.Get("Authorization") != "Bearer "+s.token {
		return http.StatusUnauthorized, problem("A valid bearer token is required.")
	}
	sku := strings.TrimPrefix(r.URL.Path, "/items/")
	switch {
	case r.Method == http.MethodGet && sku != r.URL.Path && sku != "":
		if item, ok := s.items[sku]; ok {
			return http.StatusOK, item
		}
		return http.StatusNotFound, problem(fmt.Sprintf("No item %q.", sku))
	case r.Method == http.MethodPost && r.URL.Path == "/reservations":
		return s.reserve(r.Header.Get("Idempotency-Key"), body)
	}
	return http.StatusNotFound, problem(fmt.Sprintf("No route %s %s.", r.Method, r.URL.Path))
}

// reserve holds stock for a reservation; a key seen before answers the reservation it made.
func (s *Service) reserve(key string, body json.RawMessage) (int, any) {
	if earlier, ok := s.byKey[key]; ok && key != "" {
		return http.StatusOK, earlier
	}
	var asked struct {
		SKU          string          `json:"sku"`
		Quantity     int             `json:"quantity"`
		AllowPartial bool            `json:"allow_partial"`
		Note         string          `json:"note"`
		Metadata     json.RawMessage `json:"metadata"`
	}
	if json.Unmarshal(body, &asked) != nil || asked.Quantity < 1 {
		return http.StatusUnprocessableEntity, problem("A reservation needs a sku and a positive quantity.")
	}
	item, ok := s.items[asked.SKU]
	if !ok {
		return http.StatusNotFound, problem(fmt.Sprintf("No item %q.", asked.SKU))
	}
	quantity := asked.Quantity
	if quantity > item.Available {
		if !asked.AllowPartial || item.Available == 0 {
			return http.StatusConflict, map[string]any{
				"error":     fmt.Sprintf("Only %d of %s are available.", item.Available, item.SKU),
				"available": item.Available,
			}
		}
		quantity = item.Available
	}

	item.Reserved += quantity
	item.Available -= quantity
	reservation := &Reservation{
		ID: fmt.Sprintf("R-%d", len(s.reservations)+1), SKU: item.SKU, Requested: asked.Quantity, Quantity: quantity,
		Partial: quantity < asked.Quantity, Note: asked.Note, Metadata: asked.Metadata, Status: "held",
	}
	s.reservations = append(s.reservations, reservation)
	if key != "" {
		s.byKey[key] = reservation
	}
	return http.StatusCreated, reservation
}

// SKUs is the items the service holds, sorted.
func (s *Service) SKUs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	skus := make([]string, 0, len(s.items))
	for sku := range s.items {
		skus = append(skus, sku)
	}
	sort.Strings(skus)
	return skus
}

func problem(message string) map[string]string {
	return map[string]string{"error": message}
}
