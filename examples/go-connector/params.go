package main

// Reading a command's parameters from the payload, collecting every problem so
// that one answer lists them all. The gateway has already checked the declared
// types; these checks repeat them for a connector run by hand, and add the
// rules the manifest cannot express (ranges, formats).

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strings"
)

// paramReader reads typed values out of Params; a value that is absent or null counts as not given.
type paramReader struct {
	params   Params
	problems []string
}

func (r *paramReader) problem(format string, args ...any) {
	r.problems = append(r.problems, fmt.Sprintf(format, args...))
}

// raw is the parameter's JSON, or nil when it is absent or null.
func (r *paramReader) raw(name string) json.RawMessage {
	value := r.params[name]
	if len(value) == 0 || string(value) == "null" {
		return nil
	}
	return value
}

func (r *paramReader) required(name string) json.RawMessage {
	value := r.raw(name)
	if value == nil {
		r.problem("Parameter '%s' is required.", name)
	}
	return value
}

// str reads a string parameter; "" when absent or wrong.
func (r *paramReader) str(name string, required bool) string {
	value := r.raw(name)
	if required {
		value = r.required(name)
	}
	if value == nil {
		return ""
	}
	var text string
	if json.Unmarshal(value, &text) != nil {
		r.problem("Parameter '%s' must be a string, got %s.", name, show(value))
	}
	return text
}

// secret reads a string parameter that is a credential: its value is never quoted.
func (r *paramReader) secret(name string) string {
	value := r.raw(name)
	if value == nil {
		return ""
	}
	var text string
	if json.Unmarshal(value, &text) != nil {
		r.problem("Parameter '%s' must be a string.", name)
	}
	return text
}

// integer reads an int parameter, and whether one was given; like the gateway, it takes 3.0 as 3.
func (r *paramReader) integer(name string, required bool) (int64, bool) {
	value := r.raw(name)
	if required {
		value = r.required(name)
	}
	if value == nil {
		return 0, false
	}
	var number float64
	if json.Unmarshal(value, &number) != nil || number != math.Trunc(number) || math.Abs(number) > 1<<53 {
		r.problem("Parameter '%s' must be an integer, got %s.", name, show(value))
		return 0, false
	}
	return int64(number), true
}

// boolean reads a bool parameter, with its default when absent.
func (r *paramReader) boolean(name string, fallback bool) bool {
	value := r.raw(name)
	if value == nil {
		return fallback
	}
	var flag bool
	if json.Unmarshal(value, &flag) != nil {
		r.problem("Parameter '%s' must be true or false, got %s.", name, show(value))
	}
	return flag
}

// object reads an any parameter that must hold a JSON object, passed on as it came; nil when absent.
func (r *paramReader) object(name string) json.RawMessage {
	value := r.raw(name)
	if value != nil && !bytes.HasPrefix(bytes.TrimSpace(value), []byte("{")) {
		r.problem("Parameter '%s' must be an object, got %s.", name, show(value))
		return nil
	}
	return value
}

// show quotes a parameter's JSON for a message, cut short.
func show(value json.RawMessage) string {
	text := []rune(strings.TrimSpace(string(value)))
	if len(text) > 60 {
		return string(text[:57]) + "..."
	}
	return string(text)
}
