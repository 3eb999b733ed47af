package loom

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/loomrt/loom/internal/plane"
	"github.com/loomrt/loom/internal/wire"
)

// This file holds the root package's whole error vocabulary: the
// sentinels callers branch on, the typed errors that carry detail, and the
// one mapping between them and the request planes' stream ends (toWire on
// the serving side, fromPlane on the calling side). The other files make
// their errors with what is here, so that an error reads the same whether
// the local fast path, the TCP plane or the NATS plane carried it.

// Errors a caller can branch on with errors.Is. Errors returned by Loom wrap
// one of these with detail: the endpoint, the instance, what to check.
var (
	// ErrNoInstances: no instance of the endpoint appeared within the
	// client's wait timeout (config key client.wait_timeout), or before
	// the caller's deadline when that came first.
	ErrNoInstances = errors.New("loom: no instances")
	// ErrDraining: the instance is shutting down and refused the request
	// before running it. Safe to retry elsewhere; clients do so themselves,
	// and wait for a new instance, as for ErrUnreachable, if none other is
	// known (its replacement in a rolling restart).
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
	// another instance and avoids this one for client.failure_cooldown.
	// With no other instance the call waits, up to client.wait_timeout or
	// the caller's deadline, for one to appear, and then fails with this
	// error (at once if the wait timeout is 0).
	ErrUnreachable = errors.New("loom: instance unreachable")
	// ErrTooLarge: the request is larger than the instance accepts (its
	// request_plane.max_frame_size, or the NATS server's max_payload), or
	// a response item larger than the caller accepts (its own
	// request_plane.max_frame_size). It is not retried: every instance
	// would refuse it. The local fast path applies the same limits.
	ErrTooLarge = errors.New("loom: message too large")
	// ErrRefused is wrapped by every *RefusedError.
	ErrRefused = errors.New("loom: request refused")
)

// instanceError is a sentinel's condition at one instance of an endpoint,
// with what happened there. Its message is the same on every plane: a
// serving side sends only detail, and the caller's side rebuilds the rest.
type instanceError struct {
	kind   error // one of the sentinels above
	path   string
	id     uint64
	detail string
	cause  error // a lower-level cause for errors.Is, or nil
}

func (e *instanceError) Error() string {
	return e.kind.Error() + ": " + e.path + " instance " + strconv.FormatUint(e.id, 16) + ": " + e.detail
}

func (e *instanceError) Unwrap() []error {
	if e.cause != nil {
		return []error{e.kind, e.cause}
	}
	return []error{e.kind}
}

// atInstance returns kind's condition at instance id of path.
func atInstance(kind error, path string, id uint64, format string, args ...any) error {
	return &instanceError{kind: kind, path: path, id: id, detail: fmt.Sprintf(format, args...)}
}

// detailOf is what err says beyond kind: the detail of an instanceError,
// else err's message without kind's text in front.
func detailOf(err, kind error) string {
	if ie, ok := errors.AsType[*instanceError](err); ok && ie.kind == kind {
		return ie.detail
	}
	return strings.TrimPrefix(err.Error(), kind.Error()+": ")
}

// HandlerError is a handler's error as a caller in another process sees
// it: the handler's message, the endpoint and the instance.
type HandlerError struct {
	Path       string
	InstanceID uint64
	Message    string
}

func (e *HandlerError) Error() string {
	return fmt.Sprintf("%s (instance %x): %s", e.Path, e.InstanceID, e.Message)
}

// BadRequestError reports a request that did not decode as the handler's
// request type. The handler never ran.
type BadRequestError struct {
	Path string
	Err  error
}

func (e *BadRequestError) Error() string {
	return fmt.Sprintf("loom: %s: request does not decode as the handler's request type: %v", e.Path, e.Err)
}

// Unwrap returns the decode error.
func (e *BadRequestError) Unwrap() error { return e.Err }

// RefusedError is an interceptor's refusal of a request, before the
// handler ran. It reaches the caller as a *RefusedError with the same
// Reason and Message, in this process or across the network; the
// request is not retried on another instance.
type RefusedError struct {
	// Path and InstanceID say where it was refused; set on the caller's
	// side.
	Path       string
	InstanceID uint64
	// Reason is a short, stable word a caller may branch on, such as
	// "unauthenticated", "permission_denied" or "rate_limited".
	Reason string
	// Message says what was wrong and what to do.
	Message string
}

// Refuse returns a *RefusedError for an interceptor to fail a request
// with. reason is made of lower-case letters, digits and '_' (anything
// else is replaced by '_').
func Refuse(reason, format string, args ...any) error {
	return &RefusedError{Reason: cleanReason(reason), Message: fmt.Sprintf(format, args...)}
}

func cleanReason(r string) string {
	if r == "" {
		return "refused"
	}
	return strings.Map(func(c rune) rune {
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' {
			return c
		}
		return '_'
	}, r)
}

func (e *RefusedError) Error() string {
	if e.Path != "" {
		return fmt.Sprintf("loom: %s (instance %x) refused the request (%s): %s", e.Path, e.InstanceID, e.Reason, e.Message)
	}
	return fmt.Sprintf("loom: request refused (%s): %s", e.Reason, e.Message)
}

// Unwrap returns ErrRefused.
func (e *RefusedError) Unwrap() error { return ErrRefused }

// retryable reports whether err means the request never ran, so another
// instance may take it.
func retryable(err error) bool {
	return errors.Is(err, ErrDraining) || errors.Is(err, ErrOverloaded) || errors.Is(err, ErrUnreachable)
}

// toWire turns a serving error into the stream end the caller's side maps
// back with fromPlane: the same sentinel and message on both ends.
func toWire(err error) error {
	if err == nil {
		return nil
	}
	if se, ok := errors.AsType[*plane.StreamError](err); ok {
		return se
	}
	if ref, ok := errors.AsType[*RefusedError](err); ok {
		return plane.Errorf(wire.CodeRefused, "%s: %s", cleanReason(ref.Reason), ref.Message)
	}
	if bre, ok := errors.AsType[*BadRequestError](err); ok {
		return plane.Errorf(wire.CodeBadRequest, "%v", bre.Err)
	}
	for _, m := range [...]struct {
		kind error
		code wire.Code
	}{
		{ErrDraining, wire.CodeDraining},
		{ErrClosed, wire.CodeDraining},
		{ErrOverloaded, wire.CodeOverloaded},
		{ErrHandlerPanic, wire.CodeInternal},
		{ErrStreamReset, wire.CodeReset},
		{ErrTooLarge, wire.CodeTooLarge},
		{plane.ErrTooLarge, wire.CodeTooLarge},
		{context.DeadlineExceeded, wire.CodeDeadlineExceeded},
		{context.Canceled, wire.CodeCancelled},
	} {
		if errors.Is(err, m.kind) {
			return plane.Errorf(m.code, "%s", detailOf(err, m.kind))
		}
	}
	return plane.Errorf(wire.CodeApplication, "%s", err.Error())
}

// fromPlane maps an error of a request plane on the caller's side (from
// opening a stream or from receiving on it) to Loom's errors, and says
// whether the instance itself failed, so that the client avoids it for a
// while.
func fromPlane(ctx context.Context, path string, id uint64, err error) (mapped error, instanceFailed bool) {
	se, isStream := errors.AsType[*plane.StreamError](err)
	if !isStream {
		switch {
		case ctx.Err() != nil:
			return ctx.Err(), false
		case errors.Is(err, plane.ErrTooLarge):
			return &instanceError{kind: ErrTooLarge, path: path, id: id, detail: detailOf(err, plane.ErrTooLarge), cause: err}, false
		case errors.Is(err, ErrUnreachable), errors.Is(err, ErrClosed):
			return err, true // already in Loom's words
		case errors.Is(err, plane.ErrPoolClosed):
			return fmt.Errorf("%w: runtime shut down; cannot call %s", ErrClosed, path), true
		}
		return &instanceError{kind: ErrUnreachable, path: path, id: id, detail: detailOf(err, plane.ErrUnreachable), cause: err}, true
	}
	switch se.Code {
	case wire.CodeApplication:
		return &HandlerError{Path: path, InstanceID: id, Message: se.Message}, false
	case wire.CodeRefused:
		reason, text, ok := strings.Cut(se.Message, ": ")
		if !ok {
			reason, text = "refused", se.Message
		}
		return &RefusedError{Path: path, InstanceID: id, Reason: reason, Message: text}, false
	case wire.CodeDraining:
		return atInstance(ErrDraining, path, id, "%s", se.Message), false
	case wire.CodeOverloaded:
		return atInstance(ErrOverloaded, path, id, "%s", se.Message), false
	case wire.CodeNotFound:
		return atInstance(ErrUnreachable, path, id, "%s", se.Message), false
	case wire.CodeTooLarge:
		return atInstance(ErrTooLarge, path, id, "%s", se.Message), false
	case wire.CodeInternal:
		return atInstance(ErrHandlerPanic, path, id, "%s", se.Message), false
	case wire.CodeBadRequest:
		return &BadRequestError{Path: path, Err: errors.New(se.Message)}, false
	case wire.CodeCancelled, wire.CodeDeadlineExceeded:
		if ctx.Err() != nil {
			return ctx.Err(), false
		}
		if se.Code == wire.CodeDeadlineExceeded {
			return context.DeadlineExceeded, false
		}
		return atInstance(ErrStreamReset, path, id, "the instance cancelled the stream: %s", se.Message), false
	}
	// Reset, protocol errors, lost connections.
	if ctx.Err() != nil {
		return ctx.Err(), false
	}
	what := se.Message
	if se.Code != wire.CodeReset {
		what = se.Code.String() + ": " + what
	}
	kind := ErrStreamReset
	if se.BeforeFirstResponse {
		kind = ErrUnreachable
	}
	return &instanceError{kind: kind, path: path, id: id, detail: what, cause: se}, true
}
