package plane

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/loomrt/loom/internal/wire"
)

// StreamError is how a stream ends with an error: with a code and message
// sent by the server in END, or with a code set by this side (connection
// lost, context ended, cancelled).
//
// errors.Is matches a StreamError against another by code alone, so
// errors.Is(err, ErrOverloaded) holds for every stream refused for
// overload whatever its message. Code DeadlineExceeded also matches
// context.DeadlineExceeded and Cancelled matches context.Canceled, whether
// the server or this side ended the stream. Err, the local cause, is
// matched too.
type StreamError struct {
	Code    wire.Code
	Message string
	// BeforeFirstResponse is set when no DATA had arrived on the stream
	// when it failed: the caller saw nothing, so if the handler cannot
	// have had effects it may retry the request on another instance.
	BeforeFirstResponse bool
	// Err is the local cause (ErrConnLost, context.Canceled, ...), or nil
	// for an error sent by the server.
	Err error
}

func (e *StreamError) Error() string {
	if e.Message == "" {
		return "mux: stream ended with " + e.Code.String()
	}
	return "mux: stream ended with " + e.Code.String() + ": " + e.Message
}

// Unwrap returns the local cause.
func (e *StreamError) Unwrap() error { return e.Err }

// Is reports whether target is a *StreamError with the same code, or the
// context error that corresponds to the code.
func (e *StreamError) Is(target error) bool {
	switch target {
	case context.DeadlineExceeded:
		return e.Code == wire.CodeDeadlineExceeded
	case context.Canceled:
		return e.Code == wire.CodeCancelled
	}
	t, ok := target.(*StreamError)
	return ok && t.Code == e.Code
}

// Errorf returns a *StreamError with code and a formatted message. A
// handler returns one to end its stream with a code other than
// Application.
func Errorf(code wire.Code, format string, args ...any) *StreamError {
	return &StreamError{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Sentinels to match stream errors by code with errors.Is.
var (
	ErrApplication      = &StreamError{Code: wire.CodeApplication}
	ErrNotFound         = &StreamError{Code: wire.CodeNotFound}
	ErrOverloaded       = &StreamError{Code: wire.CodeOverloaded}
	ErrDraining         = &StreamError{Code: wire.CodeDraining}
	ErrCancelled        = &StreamError{Code: wire.CodeCancelled}
	ErrDeadlineExceeded = &StreamError{Code: wire.CodeDeadlineExceeded}
	ErrInternal         = &StreamError{Code: wire.CodeInternal}
	ErrProtocol         = &StreamError{Code: wire.CodeProtocol}
	ErrBadRequest       = &StreamError{Code: wire.CodeBadRequest}
	ErrReset            = &StreamError{Code: wire.CodeReset}
)

var (
	// ErrConnLost is the cause of every stream error due to a connection
	// that died: closed by the peer, a failed write, or a keepalive
	// timeout. Streams fail with a Reset *StreamError that wraps it.
	ErrConnLost = errors.New("mux: connection lost")
	// ErrUnreachable wraps a failure to connect to an instance in Open.
	ErrUnreachable = errors.New("mux: instance unreachable")
	// ErrStalled is the cause of a stream failed, or a request refused
	// before it was sent, because its server stopped answering (frozen or
	// overloaded, not known dead) while the caller waited on it. Such a
	// request never got a response, so it may go to another instance.
	ErrStalled = errors.New("mux: server stopped answering")
	// ErrPoolClosed is returned by Open after Pool.Close.
	ErrPoolClosed = errors.New("mux: pool closed")
	// ErrServerClosed is returned by Serve after Shutdown or Close, and
	// is the context cause of streams killed by Close.
	ErrServerClosed = errors.New("mux: server closed")
	// ErrStreamDone is returned by Send after the stream has ended.
	ErrStreamDone = errors.New("mux: stream already ended")
	// ErrTooLarge is wrapped by Open and Send errors for messages above
	// the peer's maximum frame size.
	ErrTooLarge = errors.New("mux: message too large")
)

// Status maps a handler's error to the code and message that end its
// stream: a *StreamError keeps its own, any other error is Application
// with its text.
func Status(err error) (wire.Code, string) {
	if se, ok := errors.AsType[*StreamError](err); ok {
		return se.Code, se.Message
	}
	return wire.CodeApplication, err.Error()
}

// EndStatus is the code and message that end a stream whose handler
// returned err, or panicked with what err says; ctxErr is the stream
// context's error, and timeout the deadline its caller gave.
func EndStatus(err error, panicked bool, ctxErr error, timeout time.Duration) (wire.Code, string) {
	switch {
	case panicked:
		return wire.CodeInternal, err.Error()
	case err == nil && ctxErr == nil:
		return wire.CodeOK, ""
	case errors.Is(ctxErr, context.DeadlineExceeded):
		return wire.CodeDeadlineExceeded, fmt.Sprintf("deadline of %v passed on the server", timeout)
	case err == nil:
		return wire.CodeOK, ""
	}
	return Status(err)
}

// CtxError is the stream error for an ended context: DeadlineExceeded or
// Cancelled, wrapping the context's error.
func CtxError(ctx context.Context, before bool) *StreamError {
	code := wire.CodeCancelled
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		code = wire.CodeDeadlineExceeded
	}
	return &StreamError{Code: code, Message: ctx.Err().Error(), BeforeFirstResponse: before, Err: ctx.Err()}
}

// Request is what a caller sends to open a stream, on either plane.
type Request struct {
	Path        string            // endpoint path, required
	Codec       string            // name of the payload encoding
	RequestID   string            // request id for logs on both sides
	TraceParent string            // W3C traceparent, if tracing
	Headers     map[string]string // other metadata, up to wire.MaxHeaders
	Payload     []byte            // the request; Open copies it
}
