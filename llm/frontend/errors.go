package frontend

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
)

// ErrBusy says every worker of the model is at the frontend's in-flight limit
// (Config.MaxInFlightPerWorker). The client gets 429 and may retry.
var ErrBusy = errors.New("llm/frontend: every worker of the model is at its in-flight limit")

// errMigrationsExhausted: a request's worker failed mid-request and the
// frontend has re-issued it Config.MaxMigrations times already.
var errMigrationsExhausted = errors.New("migrations exhausted")

// apiError is an error in OpenAI's shape with its HTTP status.
type apiError struct {
	Status  int
	Type    string
	Code    string
	Param   string
	Message string
}

func (e *apiError) Error() string { return e.Message }

// Error types as OpenAI names them, and Loom's for what OpenAI has no
// name for.
const (
	typeInvalid     = "invalid_request_error"
	typeNotFound    = "not_found_error"
	typeOverloaded  = "overloaded_error"
	typeUnavailable = "service_unavailable_error"
	typeServer      = "server_error"
)

func badRequest(param, format string, args ...any) *apiError {
	return &apiError{Status: http.StatusBadRequest, Type: typeInvalid, Param: param, Message: fmt.Sprintf(format, args...)}
}

// appendJSON appends the error body: {"error":{...}}.
func (e *apiError) appendJSON(b []byte) []byte {
	b = append(b, `{"error":{"message":`...)
	b = appendString(b, e.Message)
	b = append(b, `,"type":`...)
	b = appendString(b, e.Type)
	b = append(b, `,"param":`...)
	if e.Param == "" {
		b = append(b, "null"...)
	} else {
		b = appendString(b, e.Param)
	}
	b = append(b, `,"code":`...)
	if e.Code == "" {
		b = append(b, "null"...)
	} else {
		b = appendString(b, e.Code)
	}
	return append(b, "}}"...)
}

func writeError(w http.ResponseWriter, e *apiError) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	if e.Status == http.StatusTooManyRequests || e.Status == http.StatusServiceUnavailable {
		h.Set("Retry-After", "1")
	}
	body := e.appendJSON(make([]byte, 0, 256))
	h.Set("Content-Length", strconv.Itoa(len(body)+1))
	w.WriteHeader(e.Status)
	_, _ = w.Write(append(body, '\n'))
}
