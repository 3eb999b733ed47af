package workqueue_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/workqueue"
)

func TestQueueCarriesOnThroughAServerRestart(t *testing.T) {
	srv := testutil.StartRestartableNATS(t)
	// No reconnect buffer: a publish while the server is down fails at
	// once, and only the queue's retries carry it through.
	nc := connect(t, srv.URL(), nats.ReconnectBufSize(-1))
	cfg := testConfig(t)
	cfg.Storage = "file"
	cfg.AutoID = true
	q := newQueue[job](t, nc, cfg)
	ctx := ctxFor(t, 60*time.Second)

	var seen jobsSeen
	consume(t, q, func(ctx context.Context, j *workqueue.Job[job]) error {
		seen.add(j.Value.ID)
		return nil
	}, workqueue.WithConcurrency(4), workqueue.WithPullExpiry(time.Second))

	const n = 50
	for i := range n {
		if err := q.Enqueue(ctx, job{ID: i}); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, 20*time.Second, "jobs before the restart handled", func() bool { return seen.distinct() == n })

	srv.Stop()
	// An enqueue while the server is down waits for it, within its deadline.
	during := make(chan error, 1)
	go func() { during <- q.Enqueue(ctx, job{ID: n}) }()
	testutil.Eventually(t, 10*time.Second, "the client notices the server is gone", func() bool { return !nc.IsConnected() })
	srv.Start()
	if err := <-during; err != nil {
		t.Fatalf("Enqueue through the restart: %v", err)
	}
	for i := n + 1; i < 2*n; i++ {
		if err := q.Enqueue(ctx, job{ID: i}); err != nil {
			t.Fatalf("Enqueue after the restart: %v", err)
		}
	}
	testutil.Eventually(t, 30*time.Second, "jobs after the restart handled", func() bool { return seen.distinct() == 2*n })
	testutil.Eventually(t, 10*time.Second, "queue empty", func() bool {
		info, err := q.Info(ctx)
		return err == nil && info.Jobs == 0
	})
}

// TestQueueWhoseStreamsWentAwayMakesThemAgain: a queue on memory storage
// loses its streams when the server restarts (as a queue does whose
// stream an operator removed). The queue makes them again, as New would:
// enqueueing, consuming, pulling with Dequeue and dead-lettering work
// without restarting the process.
func TestQueueWhoseStreamsWentAwayMakesThemAgain(t *testing.T) {
	srv := testutil.StartRestartableNATS(t)
	nc := connect(t, srv.URL())
	cfg := testConfig(t)
	cfg.Storage = "memory"
	cfg.MaxDeliver = 1
	q := newQueue[job](t, nc, cfg)
	ctx := ctxFor(t, 60*time.Second)

	var seen jobsSeen
	consume(t, q, func(ctx context.Context, j *workqueue.Job[job]) error {
		if j.Value.Text == "poison" {
			return errors.New("poison")
		}
		seen.add(j.Value.ID)
		return nil
	}, workqueue.WithPullExpiry(time.Second))
	if err := q.Enqueue(ctx, job{ID: 0}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the job before the restart handled", func() bool { return seen.distinct() == 1 })

	srv.Restart(nc)

	ectx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := q.Enqueue(ectx, job{ID: 1}); err != nil {
		t.Fatalf("Enqueue after the streams went away: %v", err)
	}
	if err := q.EnqueueBatch(ectx, []job{{ID: 2}, {ID: 3}}); err != nil {
		t.Fatalf("EnqueueBatch after the streams went away: %v", err)
	}
	testutil.Eventually(t, 20*time.Second, "the jobs after the restart handled", func() bool { return seen.distinct() == 4 })
	if err := q.Enqueue(ectx, job{ID: 4, Text: "poison"}); err != nil {
		t.Fatal(err)
	}
	testutil.EventuallyNoError(t, 20*time.Second, "the poison job dead-lettered", func() error {
		dls, err := q.DeadLetters(ctx, 10)
		if err != nil {
			return err
		}
		if len(dls) != 1 || dls[0].Value.ID != 4 {
			return fmt.Errorf("dead letters %+v, want job 4", dls)
		}
		return nil
	})
}

// TestDequeueAfterTheStreamsWentAway: Dequeue, too, makes the streams and
// its consumer again.
func TestDequeueAfterTheStreamsWentAway(t *testing.T) {
	srv := testutil.StartRestartableNATS(t)
	nc := connect(t, srv.URL())
	cfg := testConfig(t)
	cfg.Storage = "memory"
	q := newQueue[job](t, nc, cfg)
	ctx := ctxFor(t, 60*time.Second)
	if err := q.Enqueue(ctx, job{ID: 0}); err != nil {
		t.Fatal(err)
	}
	j, err := q.Dequeue(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := j.Ack(ctx); err != nil {
		t.Fatal(err)
	}

	srv.Restart(nc)
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	got := make(chan error, 1)
	go func() {
		j, err := q.Dequeue(dctx)
		if err == nil && j.Value.ID != 1 {
			err = fmt.Errorf("dequeued job %d, want 1", j.Value.ID)
		}
		if err == nil {
			err = j.Ack(dctx)
		}
		got <- err
	}()
	if err := q.Enqueue(dctx, job{ID: 1}); err != nil {
		t.Fatalf("Enqueue after the streams went away: %v", err)
	}
	if err := <-got; err != nil {
		t.Fatalf("Dequeue after the streams went away: %v", err)
	}
}

// TestEnqueueAfterTheStreamsWentAway: a process that only enqueues makes
// the streams again, from Enqueue as from EnqueueAsync.
func TestEnqueueAfterTheStreamsWentAway(t *testing.T) {
	srv := testutil.StartRestartableNATS(t)
	nc := connect(t, srv.URL())
	cfg := testConfig(t)
	cfg.Storage = "memory"
	sync := newQueue[job](t, nc, cfg)
	cfg = testConfig(t)
	cfg.Storage = "memory"
	async := newQueue[job](t, nc, cfg)

	srv.Restart(nc)
	ctx := ctxFor(t, 5*time.Second)
	if err := sync.Enqueue(ctx, job{ID: 1}); err != nil {
		t.Errorf("Enqueue after the streams went away: %v", err)
	}
	if _, err := async.EnqueueAsync(ctx, job{ID: 1}); err != nil {
		t.Fatal(err)
	}
	if err := async.Flush(ctx); err != nil {
		t.Errorf("EnqueueAsync after the streams went away: %v", err)
	}
	for _, q := range []*workqueue.Queue[job]{sync, async} {
		info, err := q.Info(ctx)
		if err != nil || info.Jobs != 1 {
			t.Errorf("queue %s after the enqueue: %+v, %v; want 1 job", q.Name(), info, err)
		}
	}
}
