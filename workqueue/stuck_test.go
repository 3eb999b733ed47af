package workqueue_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/workqueue"
)

// TestHandlerIgnoringItsContextCostsOneSlot runs a consumer of concurrency
// 2 in which one job's handler ignores its context and blocks: it must
// keep one slot and no more (its redeliveries never start a second copy
// here), the other jobs must all be done by the other slot, the job must
// be dead-lettered after max_deliver with the reason, and Shutdown must
// return when its context ends, naming the handler it abandoned.
func TestHandlerIgnoringItsContextCostsOneSlot(t *testing.T) {
	_, nc := startNATS(t, nil)
	cfg := testConfig(t)
	cfg.AckWait = 300 * time.Millisecond
	cfg.HandlerTimeout = 300 * time.Millisecond
	cfg.MaxDeliver = 3
	q := newQueue[job](t, nc, cfg)
	ctx := ctxFor(t, 30*time.Second)

	release := make(chan struct{})
	started := make(chan uint64, 1)
	var stuckCalls atomic.Int64
	var mu sync.Mutex
	done := map[int]int{} // job id -> handler calls
	c, err := q.Consume(workqueue.HandlerFunc[job](func(ctx context.Context, j *workqueue.Job[job]) error {
		if j.Value.ID == 0 {
			if stuckCalls.Add(1) == 1 {
				started <- j.Seq
			}
			<-release // ignores ctx
			return nil
		}
		mu.Lock()
		done[j.Value.ID]++
		mu.Unlock()
		return nil
	}), workqueue.WithConcurrency(2))
	if err != nil {
		t.Fatal(err)
	}
	released := false
	defer func() {
		if !released {
			close(release)
			shutdown(t, c)
		}
		<-c.Done()
	}()
	doneCount := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(done)
	}

	if err := q.Enqueue(ctx, job{ID: 0, Text: "ignores its context"}); err != nil {
		t.Fatal(err)
	}
	stuckSeq := <-started
	enqueue := func(from, to int) {
		for id := from; id < to; id++ {
			if err := q.Enqueue(ctx, job{ID: id}); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Half of the other jobs while the stuck one is within its timeout,
	// half once it has been redelivered and dead-lettered.
	enqueue(1, 11)
	testutil.Eventually(t, 10*time.Second, "10 jobs done beside the stuck one", func() bool { return doneCount() == 10 })
	admin, _ := workqueue.NewAdmin(nc)
	var dead []workqueue.DeadLetter
	testutil.Eventually(t, 20*time.Second, "the stuck job dead-lettered", func() bool {
		dead, _ = admin.DeadLetters(ctx, q.Name(), 10)
		return len(dead) == 1
	})
	enqueue(11, 21)
	testutil.Eventually(t, 10*time.Second, "20 jobs done beside the stuck one", func() bool { return doneCount() == 20 })

	if n := stuckCalls.Load(); n != 1 {
		t.Errorf("the stuck job's handler was started %d times; its redeliveries must not take another slot", n)
	}
	mu.Lock()
	for id, n := range done {
		if n != 1 {
			t.Errorf("job %d was handled %d times", id, n)
		}
	}
	mu.Unlock()
	d := dead[0]
	if d.Reason != "expired" || d.Deliveries != cfg.MaxDeliver || !strings.Contains(d.Error, "did not return when its context was cancelled") {
		t.Errorf("dead letter: reason %q after %d deliveries, error %q; want expired after %d, saying the handler ignored its context",
			d.Reason, d.Deliveries, d.Error, cfg.MaxDeliver)
	}
	testutil.Eventually(t, 10*time.Second, "no job left in the queue (acks and the dead letter's term are asynchronous)", func() bool {
		info, err := q.Info(ctx)
		return err == nil && info.Jobs == 0
	})

	// Shutdown returns once its context ends, though the handler still
	// blocks (release is not closed), and names the job it abandoned.
	sctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err = c.Shutdown(sctx)
	var ab *workqueue.AbandonedError
	if !errors.As(err, &ab) || !errors.Is(err, context.DeadlineExceeded) || !slices.Equal(ab.Seqs, []uint64{stuckSeq}) {
		t.Fatalf("Shutdown with a stuck handler: %v; want an AbandonedError for job %d wrapping the deadline", err, stuckSeq)
	}
	select {
	case <-c.Done():
		t.Fatal("the consumer is done while its abandoned handler still runs")
	default:
	}
	t.Logf("Shutdown: %v", err)
	close(release)
	released = true
	<-c.Done()
}
