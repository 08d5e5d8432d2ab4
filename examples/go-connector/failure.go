package main

// Failure is a failure a command reports in its own terms: the error code a
// modeler can catch with a BPMN boundary event, and the inner HTTP status that
// tells Arena whether a retry can help (429 and 5xx: yes; other 4xx: no).
type Failure struct {
	Code    string // e.g. "UnknownItem"
	Message string // one sentence that names the thing and says the fix
	Status  int    // the answer's inner http_status
	Body    any    // the answer's body, e.g. the upstream's error document
}

func (f *Failure) Error() string { return f.Code + ": " + f.Message }
