package jsconsume

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// Policy is how a failed or slow message is retried.
type Policy struct {
	// AckWait is how long a delivery may go without an ack or a progress
	// report before the server redelivers it.
	AckWait time.Duration
	// HandlerTimeout bounds one handler call: its context ends then and
	// progress reports stop, so the server redelivers after AckWait.
	HandlerTimeout time.Duration
	// MaxDeliver is the number of attempts before dead-lettering.
	MaxDeliver int
	// BackoffInitial is the delay after the first failure; it doubles
	// after each further failure, up to BackoffMax.
	BackoffInitial, BackoffMax time.Duration
	// BackoffJitter removes a random fraction, up to this much, of each
	// delay (0 to 1), so that a burst of failures spreads out.
	BackoffJitter float64
}

// handlerTimeout is HandlerTimeout, or AckWait if that is not set.
func (p Policy) handlerTimeout() time.Duration {
	if p.HandlerTimeout > 0 {
		return p.HandlerTimeout
	}
	return p.AckWait
}

// Backoff returns the delay before the next attempt at a message that has
// failed failures times.
func (p Policy) Backoff(failures int) time.Duration {
	d := p.BackoffInitial
	for i := 1; i < failures && d < p.BackoffMax; i++ {
		d *= 2
	}
	if p.BackoffMax > 0 && d > p.BackoffMax {
		d = p.BackoffMax
	}
	if p.BackoffJitter > 0 && d > 0 {
		d -= time.Duration(rand.Float64() * min(p.BackoffJitter, 1) * float64(d))
	}
	return d
}

// Reasons a message is dead-lettered, the value of HeaderReason.
const (
	// ReasonFailed: the handler failed MaxDeliver times.
	ReasonFailed = "failed"
	// ReasonPermanent: the handler returned an error marked permanent.
	ReasonPermanent = "permanent"
	// ReasonDecode: the payload does not decode as the queue's type.
	ReasonDecode = "decode"
	// ReasonPayload: an offloaded payload could not be read back.
	ReasonPayload = "payload"
	// ReasonExpired: delivered MaxDeliver times without an answer (a
	// handler hung past its timeout, its consumer died each time, or
	// the server refused its acks).
	ReasonExpired = "expired"
)

// TerminalError ends a message's attempts at once: it goes to the
// dead-letter stream with Reason.
type TerminalError struct {
	Reason string
	Err    error
}

// Error returns the wrapped error's text.
func (e *TerminalError) Error() string { return e.Err.Error() }

// Unwrap returns the wrapped error.
func (e *TerminalError) Unwrap() error { return e.Err }

// Terminal marks err as ending the message's attempts, with reason.
func Terminal(reason string, err error) error {
	if err == nil {
		err = errors.New(reason)
	}
	return &TerminalError{Reason: reason, Err: err}
}

// PanicError is what a handler's panic becomes: an ordinary failure,
// retried like any other.
type PanicError struct {
	Value any
}

// Error says the handler panicked, with the value.
func (e *PanicError) Error() string { return fmt.Sprintf("handler panicked: %v", e.Value) }
