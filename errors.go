package loom

import "errors"

// Errors a caller can branch on with errors.Is. Errors returned by Loom wrap
// one of these with detail: the endpoint, the instance, what to check.
var (
	// ErrNoInstances: no instance of the endpoint appeared within the
	// client's wait timeout (config key client.wait_timeout).
	ErrNoInstances = errors.New("loom: no instances")
	// ErrDraining: the instance is shutting down and refused the request
	// before running it. Safe to retry elsewhere; clients do so themselves.
	ErrDraining = errors.New("loom: instance draining")
	// ErrOverloaded: the instance refused the request before running it
	// because it is at its concurrency limit. Safe to retry elsewhere.
	ErrOverloaded = errors.New("loom: instance overloaded")
	// ErrStreamReset: the stream broke after its first response (the
	// instance died or the connection failed); the request may have had
	// effects, so it is not retried.
	ErrStreamReset = errors.New("loom: stream reset")
	// ErrHandlerPanic: the handler panicked while serving the request. The
	// server recovered and keeps serving.
	ErrHandlerPanic = errors.New("loom: handler panicked")
	// ErrClosed: the runtime, client or endpoint was shut down.
	ErrClosed = errors.New("loom: closed")
	// ErrUnreachable: the instance could not be reached (connection
	// refused, dial or handshake failed, connection lost before any
	// response) or is gone; the request never ran. A client retries it on
	// another instance and avoids this one for client.failure_cooldown;
	// with no other instance the call fails at once with this error.
	ErrUnreachable = errors.New("loom: instance unreachable")
	// ErrTooLarge: the request is larger than the instance accepts (its
	// request_plane.max_frame_size, or the NATS server's max_payload).
	// It is not retried: every instance would refuse it.
	ErrTooLarge = errors.New("loom: request too large")
)

// retryable reports whether err means the request never ran, so another
// instance may take it.
func retryable(err error) bool {
	return errors.Is(err, ErrDraining) || errors.Is(err, ErrOverloaded) || errors.Is(err, ErrUnreachable)
}
