package mux

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

type ctxKey string

// Each case drives a streamCtx and a context.WithCancelCause of an
// identical parent through the same steps; the two must then agree on
// Err, Cause, Done and a context derived from them.
func TestAStreamContextActsAsWithCancelCause(t *testing.T) {
	errStream, errParent := errors.New("stream's cause"), errors.New("parent's cause")
	type ctxs struct {
		lazy   *streamCtx
		real   context.Context
		cancel context.CancelCauseFunc
		// the parents of each
		cancelLazyParent, cancelRealParent context.CancelCauseFunc
	}
	step := map[string]func(c *ctxs){
		"cancel":        func(c *ctxs) { c.lazy.cancel(errStream); c.cancel(errStream) },
		"cancel nil":    func(c *ctxs) { c.lazy.cancel(nil); c.cancel(nil) },
		"cancel parent": func(c *ctxs) { c.cancelLazyParent(errParent); c.cancelRealParent(errParent) },
		"done":          func(c *ctxs) { c.lazy.Done(); c.real.Done() },
		"cause":         func(c *ctxs) { context.Cause(c.lazy); context.Cause(c.real) },
	}
	for _, steps := range [][]string{
		{},
		{"cancel"},
		{"cancel nil"},
		{"cancel parent"},
		{"cancel", "cancel parent"},
		{"cancel parent", "cancel"},
		{"done", "cancel"},
		{"done", "cancel parent"},
		{"cancel", "done"},
		{"cancel parent", "done"},
		{"cancel", "cause", "cancel parent"},
		{"cancel parent", "cause", "cancel"},
		{"cancel", "cancel parent", "done"},
		{"cancel parent", "cancel", "done"},
		{"cancel", "cancel"},
	} {
		// The parent is a cancelCtx, or one behind a value (as Loom's
		// endpoints give their requests), whose Err the stream's context
		// asks directly.
		for _, wrapped := range []bool{false, true} {
			name := fmtSteps(steps)
			if wrapped {
				name += ",wrapped"
			}
			t.Run(name, func(t *testing.T) {
				base := context.WithValue(context.Background(), ctxKey("k"), "v")
				lp, lcancel := context.WithCancelCause(base)
				rp, rcancel := context.WithCancelCause(base)
				if wrapped {
					lp, rp = context.WithValue(lp, ctxKey("w"), 1), context.WithValue(rp, ctxKey("w"), 1)
				}
				c := &ctxs{lazy: newStreamCtx(lp), cancelLazyParent: lcancel, cancelRealParent: rcancel}
				c.real, c.cancel = context.WithCancelCause(rp)
				defer c.cancel(nil)
				defer c.lazy.cancel(nil)
				for _, s := range steps {
					step[s](c)
				}
				if got, want := c.lazy.Err(), c.real.Err(); got != want {
					t.Fatalf("Err %v, want %v", got, want)
				}
				// A context derived from each, before Cause makes the lazy
				// one real (when nothing else has).
				ld, lstop := context.WithTimeout(c.lazy, time.Hour)
				defer lstop()
				rd, rstop := context.WithTimeout(c.real, time.Hour)
				defer rstop()
				if got, want := context.Cause(c.lazy), context.Cause(c.real); got != want {
					t.Fatalf("Cause %v, want %v", got, want)
				}
				if got, want := closed(c.lazy.Done()), closed(c.real.Done()); got != want {
					t.Fatalf("Done closed %v, want %v", got, want)
				}
				if c.lazy.Value(ctxKey("k")) != "v" {
					t.Fatal("the parent's value is not seen")
				}
				// Then both are cancelled: the derived contexts follow, with
				// the same cause.
				c.lazy.cancel(errStream)
				c.cancel(errStream)
				if !closed(ld.Done()) || !closed(rd.Done()) {
					t.Fatalf("a derived context is not cancelled with its parent: lazy %v, real %v", closed(ld.Done()), closed(rd.Done()))
				}
				if got, want := context.Cause(ld), context.Cause(rd); got != want {
					t.Fatalf("the derived context's Cause %v, want %v", got, want)
				}
			})
		}
	}
}

// A stream's context asks the cancelCtx behind its parent for the
// parent's error only when that cancelCtx is the parent's own: a parent
// that keeps its own cancellation over an embedded one is asked itself.
func TestAStreamContextAsksOnlyItsParentsOwnCancelCtx(t *testing.T) {
	inner, cancelInner := context.WithCancel(context.Background())
	defer cancelInner()
	wrapped := context.WithValue(inner, ctxKey("k"), "v")
	if c := newStreamCtx(wrapped); c.errOf == wrapped {
		t.Fatal("the cancelCtx behind a value is not asked directly")
	}
	own := &ownCancel{Context: inner, done: make(chan struct{})}
	c := newStreamCtx(own)
	if c.Err() != nil {
		t.Fatalf("Err %v before any cancellation", c.Err())
	}
	own.cancel()
	if c.Err() != context.Canceled {
		t.Fatalf("after the parent's own cancellation: Err %v, want Canceled (the embedded context, still live, was asked)", c.Err())
	}
}

// ownCancel embeds a live context, whose cancelCtx its Value gives, but
// is cancelled on its own.
type ownCancel struct {
	context.Context
	done      chan struct{}
	cancelled atomic.Bool
}

func (c *ownCancel) Done() <-chan struct{} { return c.done }
func (c *ownCancel) Err() error {
	if c.cancelled.Load() {
		return context.Canceled
	}
	return nil
}
func (c *ownCancel) cancel() { c.cancelled.Store(true); close(c.done) }

// Until something waits on it, a stream's context holds nothing of its
// parent's: it is cancelled with its parent all the same.
func TestAStreamContextNotWaitedOnSeesItsParentCancelled(t *testing.T) {
	parent, cancel := context.WithCancelCause(context.WithValue(context.Background(), ctxKey("k"), "v"))
	c := newStreamCtx(parent)
	if c.Value(ctxKey("k")) != "v" || c.Err() != nil {
		t.Fatalf("value %v, err %v; want the parent's value, no error", c.Value(ctxKey("k")), c.Err())
	}
	if c.inner.Load() != nil {
		t.Fatal("reading a value or Err made the context register with its parent")
	}
	cancel(ErrServerClosed)
	if c.Err() != context.Canceled || context.Cause(c) != ErrServerClosed {
		t.Fatalf("after the parent's cancel: Err %v, Cause %v; want Canceled, ErrServerClosed", c.Err(), context.Cause(c))
	}
	if !closed(c.Done()) {
		t.Fatal("Done is not closed after the parent's cancel")
	}
	dl, stop := context.WithDeadline(context.Background(), time.Now().Add(time.Hour))
	defer stop()
	if d, ok := newStreamCtx(dl).Deadline(); !ok || !d.Equal(func() time.Time { d, _ := dl.Deadline(); return d }()) {
		t.Fatalf("deadline %v, %v; want the parent's", d, ok)
	}
}

func TestTheContextPackageAsksCauseByAKey(t *testing.T) {
	if cancelCtxKey == nil {
		t.Fatal("context.Cause asked for no Value key: every stream context registers with its parent (correct, but each costs allocations and the parent's lock)")
	}
}

func fmtSteps(steps []string) string {
	if len(steps) == 0 {
		return "nothing"
	}
	s := steps[0]
	for _, x := range steps[1:] {
		s += ", then " + x
	}
	return s
}

// Waiting, reading and cancelling at once: every waiter is woken, all
// agree on the cause of the one cancel that won, and Err, once it said
// so, keeps saying the context is cancelled (a first version let Err
// answer from the parent, then from an inner context the parent's cancel
// had not reached yet: nil after Canceled).
func TestAStreamContextCancelledWhileWaitedOn(t *testing.T) {
	for range 1000 {
		parent, cancelParent := context.WithCancelCause(context.Background())
		c := newStreamCtx(parent)
		causes := make(chan error, 4)
		for range 2 {
			go func() {
				<-c.Done()
				causes <- context.Cause(c)
			}()
		}
		go func() {
			for c.Err() == nil {
				c.Value(ctxKey("k"))
			}
			if c.Err() == nil {
				causes <- errors.New("Err said nil after it said the context was cancelled")
				return
			}
			causes <- context.Cause(c)
		}()
		go func() { c.cancel(errKilled) }()
		go cancelParent(ErrServerClosed)
		first := <-causes
		if first != errKilled && first != ErrServerClosed {
			t.Fatalf("%v, want the stream's cause or the parent's", first)
		}
		for range 2 {
			if got := <-causes; got != first {
				t.Fatalf("causes disagree: %v and %v", first, got)
			}
		}
	}
}

// BenchmarkStreamContextErr: a streamed item's check of its context, whose
// parent is a cancelCtx behind a value (as Loom's endpoints give): asking
// the cancelCtx directly, as it does, beside asking the parent, as it did.
func BenchmarkStreamContextErr(b *testing.B) {
	inner, cancel := context.WithCancel(context.Background())
	defer cancel()
	parent := context.WithValue(inner, ctxKey("k"), "v")
	var sink error
	for _, direct := range []bool{false, true} {
		name := "parent"
		if direct {
			name = "cancelCtx"
		}
		b.Run(name, func(b *testing.B) {
			sc := newStreamCtx(parent)
			if !direct {
				sc.errOf = parent
			}
			var c context.Context = sc
			for b.Loop() {
				sink = c.Err()
			}
		})
	}
	if sink != nil {
		b.Fatal(sink)
	}
}
