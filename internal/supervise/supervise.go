// Package supervise runs a process's background work (keep-alives,
// watches, subscriptions) in a group that owns every goroutine it starts:
// a panic is recovered, logged with its stack and counted instead of taking
// the process down, and Stop cancels the work and waits for all of it.
package supervise

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// ErrStopped reports a Go on a group that has been stopped.
var ErrStopped = errors.New("supervise: group stopped")

// Group owns a set of background tasks. The zero value is not usable; use New.
type Group struct {
	ctx    context.Context
	cancel context.CancelFunc
	log    *slog.Logger
	counts Counter

	mu      sync.Mutex
	stopped bool
	wg      sync.WaitGroup
	panics  atomic.Uint64
}

// Counter counts a group's tasks by name, for metrics (package metrics'
// *Metrics is one).
type Counter interface {
	// TaskStarted is called with a task's name when Go starts it, before
	// it runs, so that its panic count is there, at 0, before any panic.
	TaskStarted(task string)
	// TaskPanicked is called with a task's name after each recovered
	// panic.
	TaskPanicked(task string)
}

// New returns a group whose tasks run under a child of ctx, counted by
// counts if it is not nil.
func New(ctx context.Context, log *slog.Logger, counts Counter) *Group {
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(ctx)
	return &Group{ctx: ctx, cancel: cancel, log: log, counts: counts}
}

// Task is one piece of background work. It should return when ctx is done.
type Task func(ctx context.Context) error

type options struct {
	restart    bool
	minBackoff time.Duration
	maxBackoff time.Duration
}

// Option tunes one task.
type Option func(*options)

// Restart makes the group run the task again, after a jittered exponential
// backoff between minBackoff and maxBackoff, whenever it panics or returns
// an error before the group stops. A minBackoff below 1ms is 1ms, so that
// the backoff grows (zero doubled stays zero: a failing task would spin),
// and a maxBackoff below minBackoff is minBackoff.
func Restart(minBackoff, maxBackoff time.Duration) Option {
	minBackoff = max(minBackoff, time.Millisecond)
	maxBackoff = max(maxBackoff, minBackoff)
	return func(o *options) { o.restart, o.minBackoff, o.maxBackoff = true, minBackoff, maxBackoff }
}

// Go starts fn in its own goroutine. It fails only if the group is stopped.
func (g *Group) Go(name string, fn Task, opts ...Option) error {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped {
		return fmt.Errorf("%w: cannot start %s", ErrStopped, name)
	}
	if g.counts != nil {
		g.counts.TaskStarted(name)
	}
	g.wg.Add(1)
	go g.run(name, fn, o)
	return nil
}

func (g *Group) run(name string, fn Task, o options) {
	defer g.wg.Done()
	backoff := o.minBackoff
	for {
		err := g.call(name, fn)
		if g.ctx.Err() != nil {
			return
		}
		if err != nil {
			g.log.Warn("background task failed", "task", name, "err", err)
		}
		if !o.restart || err == nil {
			return
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		t := time.NewTimer(wait)
		select {
		case <-g.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, o.maxBackoff)
	}
}

// call runs fn once, turning a panic into an error.
func (g *Group) call(name string, fn Task) (err error) {
	defer func() {
		if v := recover(); v != nil {
			g.panics.Add(1)
			g.log.Error("background task panicked", "task", name, "panic", v, "stack", string(debug.Stack()))
			if g.counts != nil {
				g.counts.TaskPanicked(name)
			}
			err = fmt.Errorf("supervise: task %s panicked: %v", name, v)
		}
	}()
	return fn(g.ctx)
}

// Panics returns how many panics the group has recovered.
func (g *Group) Panics() uint64 { return g.panics.Load() }

// Context returns the context the group's tasks run under.
func (g *Group) Context() context.Context { return g.ctx }

// Stop cancels every task and waits until all have returned or ctx ends.
// After Stop, Go fails.
func (g *Group) Stop(ctx context.Context) error {
	g.mu.Lock()
	g.stopped = true
	g.mu.Unlock()
	g.cancel()
	done := make(chan struct{})
	go func() {
		g.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("supervise: tasks still running after stop: %w", ctx.Err())
	}
}
