package supervise

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/loomrt/loom/metrics"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// panicCounter records the last task whose panic it was told of.
type panicCounter struct{ reported atomic.Value }

func (*panicCounter) TaskStarted(string)         {}
func (c *panicCounter) TaskPanicked(task string) { c.reported.Store(task) }

func TestAPanicIsRecoveredCountedAndReported(t *testing.T) {
	var counts panicCounter
	reported := &counts.reported
	g := New(context.Background(), quiet, &counts)
	done := make(chan struct{})
	if err := g.Go("boom", func(context.Context) error {
		defer close(done)
		panic("kaboom")
	}); err != nil {
		t.Fatal(err)
	}
	<-done
	if err := g.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if g.Panics() != 1 {
		t.Fatalf("Panics() = %d, want 1", g.Panics())
	}
	if reported.Load() != "boom" {
		t.Fatalf("TaskPanicked got %v, want boom", reported.Load())
	}
}

func TestRestartRunsTheTaskAgainAfterAPanicOrError(t *testing.T) {
	g := New(context.Background(), quiet, nil)
	var runs atomic.Int32
	reached := make(chan struct{})
	_ = g.Go("flaky", func(ctx context.Context) error {
		switch runs.Add(1) {
		case 1:
			panic("first")
		case 2:
			return errors.New("second")
		}
		close(reached)
		<-ctx.Done()
		return nil
	}, Restart(time.Millisecond, 5*time.Millisecond))
	select {
	case <-reached:
	case <-time.After(5 * time.Second):
		t.Fatalf("task ran %d times; want a third run", runs.Load())
	}
	if err := g.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestStopCancelsAndWaits(t *testing.T) {
	g := New(context.Background(), quiet, nil)
	var finished atomic.Bool
	_ = g.Go("waiter", func(ctx context.Context) error {
		<-ctx.Done()
		time.Sleep(10 * time.Millisecond)
		finished.Store(true)
		return nil
	})
	if err := g.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !finished.Load() {
		t.Fatal("Stop returned before the task finished")
	}
	if err := g.Go("late", func(context.Context) error { return nil }); !errors.Is(err, ErrStopped) {
		t.Fatalf("Go after Stop = %v, want ErrStopped", err)
	}
}

func TestStopGivesUpWhenItsContextEnds(t *testing.T) {
	g := New(context.Background(), quiet, nil)
	release := make(chan struct{})
	_ = g.Go("stuck", func(context.Context) error { <-release; return nil })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := g.Stop(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Stop = %v, want a deadline error", err)
	}
	close(release)
	_ = g.Stop(context.Background())
}

func TestCancellingTheParentStopsTheTasks(t *testing.T) {
	parent, cancel := context.WithCancel(context.Background())
	g := New(parent, quiet, nil)
	stopped := make(chan struct{})
	_ = g.Go("child", func(ctx context.Context) error { <-ctx.Done(); close(stopped); return nil })
	cancel()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("task did not see its parent cancelled")
	}
	_ = g.Stop(context.Background())
}

// TestRestartWithAZeroMinimumStillBacksOff restarts a task that always
// fails with Restart(0, 8ms): the delays must still grow towards the
// maximum, not stay zero and spin (a zero backoff doubled is zero).
func TestRestartWithAZeroMinimumStillBacksOff(t *testing.T) {
	const max = 8 * time.Millisecond
	g := New(context.Background(), quiet, nil)
	var runs atomic.Int32
	start := time.Now()
	reached := make(chan time.Duration, 1)
	_ = g.Go("failing", func(ctx context.Context) error {
		if runs.Add(1) == 12 {
			reached <- time.Since(start)
			<-ctx.Done()
			return nil
		}
		return errors.New("fails")
	}, Restart(0, max))
	var took time.Duration
	select {
	case took = <-reached:
	case <-time.After(5 * time.Second):
		t.Fatalf("task ran %d times in 5s; want 12", runs.Load())
	}
	if err := g.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Each delay is at least half the backoff, which reaches max after a
	// few doublings: at least 6 of the 11 delays are max/2 or more.
	if least := 6 * max / 2; took < least {
		t.Errorf("11 restarts took %v, less than %v: the backoff did not grow", took, least)
	}
}

// A task's series of loom_background_task_panics_total is there, at 0,
// from its start: one born at the first panic, at 1, would hide that
// panic from increase() and rate(). A restart makes no second series,
// and a task that cannot start makes none.
func TestATasksPanicCountStartsAtZero(t *testing.T) {
	m := metrics.New()
	g := New(context.Background(), quiet, m)
	release := make(chan struct{})
	var runs atomic.Int32
	again := make(chan struct{})
	if err := g.Go("watch ns/backend/generate", func(ctx context.Context) error {
		if runs.Add(1) == 1 {
			<-release
			panic("nil map")
		}
		close(again)
		<-ctx.Done()
		return nil
	}, Restart(time.Millisecond, time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	const want = `
# HELP loom_background_task_panics_total Panics recovered in background tasks, by task.
# TYPE loom_background_task_panics_total counter
loom_background_task_panics_total{task="watch ns/backend/generate"} 0
`
	const family = "loom_background_task_panics_total"
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), family); err != nil {
		t.Fatalf("before any panic: %v", err)
	}
	close(release)
	select {
	case <-again:
	case <-time.After(5 * time.Second):
		t.Fatal("the task did not run again after its panic")
	}
	if err := g.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := g.Go("late", func(context.Context) error { return nil }); !errors.Is(err, ErrStopped) {
		t.Fatalf("Go after Stop = %v, want ErrStopped", err)
	}
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(strings.Replace(want, "} 0", "} 1", 1)), family); err != nil {
		t.Fatalf("after one panic: %v", err)
	}
}
