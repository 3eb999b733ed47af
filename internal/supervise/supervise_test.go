package supervise

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestAPanicIsRecoveredCountedAndReported(t *testing.T) {
	var reported atomic.Value
	g := New(context.Background(), quiet, func(task string) { reported.Store(task) })
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
		t.Fatalf("onPanic got %v, want boom", reported.Load())
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
