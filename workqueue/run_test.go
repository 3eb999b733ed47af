package workqueue_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/workqueue"
)

// TestRunDrainsWhenItsContextEnds: Run handles jobs until its context
// ends, then lets the running handler finish and acks its job; a handler
// still running at the drain timeout is cancelled, its job handed back,
// and Run says so.
func TestRunDrainsWhenItsContextEnds(t *testing.T) {
	_, nc := startNATS(t, nil)
	q := newQueue[job](t, nc, testConfig(t))
	ctx := ctxFor(t, 20*time.Second)
	if err := q.Enqueue(ctx, job{ID: 1}); err != nil {
		t.Fatal(err)
	}
	started, release := make(chan struct{}), make(chan struct{})
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	ran := make(chan error, 1)
	go func() {
		ran <- q.Run(rctx, workqueue.HandlerFunc[job](func(ctx context.Context, j *workqueue.Job[job]) error {
			close(started)
			<-release
			return nil
		}))
	}()
	<-started
	stop()
	select {
	case err := <-ran:
		t.Fatalf("Run returned %v while its handler still ran", err)
	case <-time.After(100 * time.Millisecond): // Run must still be draining
	}
	close(release)
	if err := <-ran; err != nil {
		t.Fatalf("Run after a clean drain: %v", err)
	}
	testutil.Eventually(t, 5*time.Second, "the drained job acked", func() bool {
		info, err := q.Info(ctx)
		return err == nil && info.Jobs == 0
	})

	// A handler that outlasts the drain timeout is cancelled.
	if err := q.Enqueue(ctx, job{ID: 2}); err != nil {
		t.Fatal(err)
	}
	started = make(chan struct{})
	rctx, stop = context.WithCancel(ctx)
	defer stop()
	go func() {
		ran <- q.Run(rctx, workqueue.HandlerFunc[job](func(ctx context.Context, j *workqueue.Job[job]) error {
			close(started)
			<-ctx.Done()
			return ctx.Err()
		}), workqueue.WithDrainTimeout(200*time.Millisecond))
	}()
	<-started
	stop()
	err := <-ran
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "drain timeout 200ms") {
		t.Fatalf("Run past its drain timeout: %v; want the deadline, naming the drain timeout", err)
	}
	if info, err := q.Info(ctx); err != nil || info.Jobs != 1 {
		t.Errorf("queue after the cancelled drain: %+v, %v; want the job kept", info, err)
	}
}
