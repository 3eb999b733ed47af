package mux

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// streamCtx is a stream's context before anything waits on it. It stands
// for context.WithCancelCause(parent), and becomes one (inner) the first
// time Done or Value is called, or a context is derived from it (which
// calls Done). Until then it costs one allocation and no registration
// with its parent: a handler that answers without waiting on its context
// (most unary ones) spares the parent's lock and children map, on its
// start and on its end, and the cancel function's allocation.
//
// Err answers without becoming inner: the stream's own cancellation if it
// came first, else the parent's error. A cancellation recorded before
// inner exists carries over to it.
type streamCtx struct {
	parent context.Context
	// errOf answers the parent's Err: the parent itself, or the
	// context.cancelCtx behind it when the parent only wraps one (as
	// WithValue does), which answers the same in one call instead of one
	// per wrapper. Err runs once per streamed item.
	errOf interface{ Err() error }
	inner atomic.Pointer[cancelable] // nil until Done, Value or a derived context

	mu sync.Mutex // serialises cancel and making inner
	// rec is the cancellation recorded before inner existed: set once,
	// under mu, and never changed. (A pointer, not its fields, keeps the
	// context in 64 bytes, a unary call's size class.)
	rec atomic.Pointer[cancelRecord]
}

// cancelRecord is a cancellation recorded before inner existed.
type cancelRecord struct {
	byParent bool // the parent was cancelled before cancel ran: Err is the parent's
	cause    error
}

// The records of the common cancellations, shared: every stream's context
// is cancelled with ErrStreamDone when it ends, which allocates nothing.
var (
	recStreamDone = &cancelRecord{cause: ErrStreamDone}
	recCanceled   = &cancelRecord{cause: context.Canceled}
)

type cancelable struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
}

func newStreamCtx(parent context.Context) *streamCtx {
	c := &streamCtx{parent: parent, errOf: parent}
	// The context package trusts the cancelCtx a parent's Value gives for
	// its key only if the two share their Done channel: so does this.
	if cancelCtxKey != nil {
		if inner, ok := parent.Value(cancelCtxKey).(context.Context); ok {
			if done := parent.Done(); done != nil && inner.Done() == done {
				c.errOf = inner
			}
		}
	}
	return c
}

// Deadline is the parent's: a stream's own deadline is a context derived
// from this one.
func (c *streamCtx) Deadline() (time.Time, bool) { return c.parent.Deadline() }

func (c *streamCtx) Done() <-chan struct{} { return c.real().Done() }

// Value is the parent's value for key, as WithCancelCause's is, except
// for the key by which the context package finds the cancelCtx behind a
// context (context.Cause, deriving a context): that one becomes inner.
func (c *streamCtx) Value(key any) any {
	if key == cancelCtxKey || cancelCtxKey == nil {
		return c.real().Value(key)
	}
	return c.parent.Value(key)
}

// cancelCtxKey is the Value key by which the context package finds the
// cancelCtx behind a context, learned by asking context.Cause about a
// context that notes what it is asked. Should a Go release ask no such
// key, it is nil, and every Value makes inner.
var cancelCtxKey = func() (key any) {
	context.Cause(keySpy{&key})
	return key
}()

// keySpy is a cancelled context that notes the first Value key it is
// asked for.
type keySpy struct{ key *any }

func (keySpy) Deadline() (time.Time, bool) { return time.Time{}, false }
func (keySpy) Done() <-chan struct{}       { return nil }
func (keySpy) Err() error                  { return context.Canceled } // Cause asks a cancelled context only
func (s keySpy) Value(key any) any {
	if *s.key == nil {
		*s.key = key
	}
	return nil
}

func (c *streamCtx) Err() error {
	if in := c.inner.Load(); in != nil {
		return in.ctx.Err()
	}
	if r := c.rec.Load(); r != nil {
		return c.recordedErr(r)
	}
	if c.errOf.Err() == nil {
		return nil
	}
	// The parent was cancelled: record it, so that this context says so
	// from now on, inner made later included. (Were Err to answer from
	// the parent while inner was being made, a later Err could ask an
	// inner that the parent's cancel has not reached yet, and say nil
	// after it said Canceled.)
	c.mu.Lock()
	defer c.mu.Unlock()
	if in := c.inner.Load(); in != nil {
		return in.ctx.Err()
	}
	c.cancelLocked(nil)
	return c.recordedErr(c.rec.Load())
}

// recordedErr is the error of r, a cancellation recorded before inner
// existed: a parent's cancellation stays.
func (c *streamCtx) recordedErr(r *cancelRecord) error {
	if r.byParent {
		return c.parent.Err()
	}
	return context.Canceled
}

// cancel cancels the context with cause, as the CancelCauseFunc of
// context.WithCancelCause(parent) would: a no-op if it was cancelled
// already, by an earlier cancel or by its parent.
func (c *streamCtx) cancel(cause error) {
	if in := c.inner.Load(); in != nil {
		in.cancel(cause)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if in := c.inner.Load(); in != nil {
		in.cancel(cause)
		return
	}
	c.cancelLocked(cause)
}

// cancelLocked records a cancellation before inner exists: by the
// parent, if it was cancelled, else with cause; c.mu is held.
func (c *streamCtx) cancelLocked(cause error) {
	if c.rec.Load() != nil {
		return
	}
	var r *cancelRecord
	switch {
	case c.errOf.Err() != nil:
		// The parent was cancelled first: the child would have been
		// cancelled with its error and cause.
		r = &cancelRecord{byParent: true, cause: context.Cause(c.parent)}
	case cause == nil || cause == context.Canceled:
		r = recCanceled
	case cause == ErrStreamDone:
		r = recStreamDone
	default:
		r = &cancelRecord{cause: cause}
	}
	c.rec.Store(r)
}

// real returns inner, making it first if needed.
func (c *streamCtx) real() context.Context {
	if in := c.inner.Load(); in != nil {
		return in.ctx
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if in := c.inner.Load(); in != nil {
		return in.ctx
	}
	in := &cancelable{}
	if r := c.rec.Load(); r != nil && !r.byParent {
		// Cancelled first by cancel: inner must say so, whatever the
		// parent does from now on. (Cancelled by the parent first, inner
		// made from the parent, whose cancellation stays, says what was
		// recorded.)
		in.ctx, in.cancel = context.WithCancelCause(noCancel{c.parent})
		in.cancel(r.cause)
	} else {
		in.ctx, in.cancel = context.WithCancelCause(c.parent)
	}
	c.inner.Store(in)
	return in.ctx
}

// noCancel is a context's values and deadline without its cancellation.
type noCancel struct{ context.Context }

func (noCancel) Done() <-chan struct{} { return nil }
func (noCancel) Err() error            { return nil }
