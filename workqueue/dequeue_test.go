package workqueue_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/loomrt/loom/workqueue"
)

// TestDequeuedJobsSettleAsTheDocsSay: Job.Fail retries with the backoff
// and dead-letters on the last attempt (reason failed), Job.Terminate
// dead-letters at once (permanent), Job.InProgress keeps a job past
// AckWait, and a job never answered comes back until it is delivered more
// than max_deliver times, then is dead-lettered (expired) instead of
// returned.
func TestDequeuedJobsSettleAsTheDocsSay(t *testing.T) {
	_, nc := startNATS(t, nil)
	cfg := testConfig(t)
	cfg.AckWait = 300 * time.Millisecond
	cfg.MaxDeliver = 3
	cfg.BackoffInitial = 200 * time.Millisecond
	cfg.BackoffMax = time.Second
	q := newQueue[job](t, nc, cfg)
	ctx := ctxFor(t, 30*time.Second)
	dequeue := func(want int, deliveries int) *workqueue.Job[job] {
		t.Helper()
		j, err := q.Dequeue(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if j.Value.ID != want || j.Deliveries != deliveries {
			t.Fatalf("dequeued job %d on delivery %d, want job %d on delivery %d", j.Value.ID, j.Deliveries, want, deliveries)
		}
		return j
	}
	empty := func(within time.Duration) {
		t.Helper()
		short, cancel := context.WithTimeout(ctx, within)
		defer cancel()
		if j, err := q.Dequeue(short); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Dequeue: %+v, %v; want nothing within %s", j, err, within)
		}
	}
	deadLetter := func(i int) workqueue.DeadJob[job] {
		t.Helper()
		dls, err := q.DeadLetters(ctx, 10)
		if err != nil || len(dls) <= i {
			t.Fatalf("dead letters %+v, %v; want %d", dls, err, i+1)
		}
		return dls[i]
	}

	// Fail: backoff 200 ms, then 400 ms, then the dead letter.
	if err := q.Enqueue(ctx, job{ID: 1}); err != nil {
		t.Fatal(err)
	}
	j := dequeue(1, 1)
	for attempt, backoff := range []time.Duration{200 * time.Millisecond, 400 * time.Millisecond} {
		failed := time.Now()
		if err := j.Fail(fmt.Errorf("attempt %d failed", attempt+1)); err != nil {
			t.Fatal(err)
		}
		j = dequeue(1, attempt+2)
		if gap := time.Since(failed); gap < backoff*9/10 {
			t.Errorf("attempt %d came %s after the failure, before its backoff %s", attempt+2, gap, backoff)
		}
	}
	if err := j.Fail(errors.New("attempt 3 failed")); err != nil {
		t.Fatal(err)
	}
	if dl := deadLetter(0); dl.Value.ID != 1 || dl.Reason != "failed" || dl.Deliveries != 3 || dl.Error != "attempt 3 failed" {
		t.Errorf("dead letter of the failed job: %+v", dl)
	}

	// Terminate: the dead letter at once.
	if err := q.Enqueue(ctx, job{ID: 2}); err != nil {
		t.Fatal(err)
	}
	if err := dequeue(2, 1).Terminate(errors.New("bad request")); err != nil {
		t.Fatal(err)
	}
	if dl := deadLetter(1); dl.Value.ID != 2 || dl.Reason != "permanent" || dl.Deliveries != 1 || dl.Error != "bad request" {
		t.Errorf("dead letter of the terminated job: %+v", dl)
	}

	// InProgress: held for three AckWaits, never redelivered meanwhile.
	if err := q.Enqueue(ctx, job{ID: 3}); err != nil {
		t.Fatal(err)
	}
	j = dequeue(3, 1)
	held := make(chan error, 1)
	go func() {
		tick := time.NewTicker(cfg.AckWait / 3)
		defer tick.Stop()
		for range 9 {
			<-tick.C
			if err := j.InProgress(); err != nil {
				held <- err
				return
			}
		}
		held <- nil
	}()
	empty(3 * cfg.AckWait)
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	if err := j.Ack(ctx); err != nil {
		t.Fatal(err)
	}

	// Never answered: back after AckWait until max_deliver, then expired.
	if err := q.Enqueue(ctx, job{ID: 4}); err != nil {
		t.Fatal(err)
	}
	for n := 1; n <= cfg.MaxDeliver; n++ {
		dequeue(4, n)
	}
	empty(3 * cfg.AckWait)
	if dl := deadLetter(2); dl.Value.ID != 4 || dl.Reason != "expired" || dl.Deliveries != cfg.MaxDeliver+1 {
		t.Errorf("dead letter of the unanswered job: %+v", dl)
	}
}

// TestOnlyConsumingProcessesSetTheConsumer: a process that only enqueues
// leaves the shared consumer's settings alone; the last one to consume
// (Consume or Dequeue) sets its ack_wait.
func TestOnlyConsumingProcessesSetTheConsumer(t *testing.T) {
	_, nc := startNATS(t, nil)
	cfg := testConfig(t)
	worker := newQueue[job](t, nc, cfg)
	consume(t, worker, func(ctx context.Context, j *workqueue.Job[job]) error { return nil })
	ctx := ctxFor(t, 10*time.Second)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ackWait := func() time.Duration {
		t.Helper()
		c, err := js.Consumer(ctx, cfg.Name, workqueue.DefaultGroup)
		if err != nil {
			t.Fatal(err)
		}
		return c.CachedInfo().Config.AckWait
	}
	if got := ackWait(); got != cfg.AckWait {
		t.Fatalf("consumer ack_wait %s after Consume, want %s", got, cfg.AckWait)
	}

	other := cfg
	other.AckWait = 7 * time.Second
	producer := newQueue[job](t, nc, other)
	if err := producer.Enqueue(ctx, job{ID: 1}); err != nil {
		t.Fatal(err)
	}
	if got := ackWait(); got != cfg.AckWait {
		t.Errorf("consumer ack_wait %s after a process only enqueued, want the worker's %s", got, cfg.AckWait)
	}
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	_, _ = producer.Dequeue(short) // the job may be the worker's already
	if got := ackWait(); got != other.AckWait {
		t.Errorf("consumer ack_wait %s after another process dequeued, want its %s", got, other.AckWait)
	}
}

// TestAnAckThatFailedCanBeMadeAgain: a Job.Ack that did not reach the
// server (here its context had ended) leaves the job unsettled, so a
// second Ack acknowledges it. The first Ack once marked the job settled
// all the same: every later Ack returned ErrSettled, "already settled",
// for a job the server still held and would deliver again after AckWait.
func TestAnAckThatFailedCanBeMadeAgain(t *testing.T) {
	_, nc := startNATS(t, nil)
	q := newQueue[job](t, nc, testConfig(t))
	ctx := ctxFor(t, 20*time.Second)
	if err := q.Enqueue(ctx, job{ID: 1}); err != nil {
		t.Fatal(err)
	}
	j, err := q.Dequeue(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ended, cancel := context.WithCancel(ctx)
	cancel()
	if err := j.Ack(ended); !errors.Is(err, context.Canceled) {
		t.Fatalf("Ack with an ended context: %v, want context.Canceled", err)
	}
	if err := j.Ack(ctx); err != nil {
		t.Fatalf("Ack again after an Ack that failed: %v", err)
	}
	if err := j.Ack(ctx); !errors.Is(err, workqueue.ErrSettled) {
		t.Fatalf("Ack after a successful Ack: %v, want ErrSettled", err)
	}
	info, err := q.Info(ctx)
	if err != nil || info.Jobs != 0 || info.InFlight != 0 {
		t.Fatalf("queue after the ack: %+v, %v; want it empty", info, err)
	}
}
