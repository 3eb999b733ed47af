package workqueue_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/workqueue"
)

func TestEveryEnqueuedJobIsHandledOnceAndAcked(t *testing.T) {
	_, nc := startNATS(t, nil)
	q := newQueue[job](t, nc, testConfig(t))
	ctx := ctxFor(t, 30*time.Second)
	const n = 600
	for i := range n / 3 {
		if err := q.Enqueue(ctx, job{ID: i, Text: "single"}); err != nil {
			t.Fatal(err)
		}
	}
	batch := make([]job, n/3)
	for i := range batch {
		batch[i] = job{ID: n/3 + i, Text: "batch"}
	}
	if err := q.EnqueueBatch(ctx, batch); err != nil {
		t.Fatal(err)
	}
	for i := range n / 3 {
		if _, err := q.EnqueueAsync(ctx, job{ID: 2*n/3 + i, Text: "async"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	seen := map[int]int{}
	var total atomic.Int64
	consume(t, q, func(ctx context.Context, j *workqueue.Job[job]) error {
		mu.Lock()
		seen[j.Value.ID]++
		mu.Unlock()
		total.Add(1)
		return nil
	}, workqueue.WithConcurrency(8))
	testutil.Eventually(t, 20*time.Second, "all jobs handled", func() bool { return total.Load() >= n })
	testutil.Eventually(t, 5*time.Second, "queue empty", func() bool {
		info, err := q.Info(ctx)
		return err == nil && info.Jobs == 0
	})
	mu.Lock()
	defer mu.Unlock()
	for i := range n {
		if seen[i] != 1 {
			t.Errorf("job %d handled %d times, want 1", i, seen[i])
		}
	}
}

func TestIdempotencyKeyNeverDropsDistinctJobs(t *testing.T) {
	_, nc := startNATS(t, nil)
	q := newQueue[job](t, nc, testConfig(t))
	ctx := ctxFor(t, 10*time.Second)
	// Ten distinct jobs under one key: all stored (Coze's eventbus would
	// keep one). The same job and key again: stored once.
	for i := range 10 {
		if err := q.Enqueue(ctx, job{ID: i}, workqueue.WithKey("order-42")); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		if err := q.Enqueue(ctx, job{ID: 0}, workqueue.WithKey("order-42")); err != nil {
			t.Fatal(err)
		}
	}
	batch := []job{{ID: 100}, {ID: 101}, {ID: 102}}
	if err := q.EnqueueBatch(ctx, batch, workqueue.WithKey("same-key")); err != nil {
		t.Fatal(err)
	}
	info, err := q.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Jobs != 13 {
		t.Fatalf("queue holds %d jobs, want 13 (10 distinct + 3 distinct in a batch; repeats stored once)", info.Jobs)
	}
	j, err := q.Dequeue(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if j.Key != "order-42" {
		t.Errorf("job key %q, want order-42", j.Key)
	}
	_ = j.Ack(ctx)
}

func TestUnreachableServerFailsEnqueueWithinTheDeadline(t *testing.T) {
	ns, nc := startNATS(t, nil)
	q := newQueue[job](t, nc, testConfig(t))
	ns.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := q.Enqueue(ctx, job{ID: 1})
	took := time.Since(start)
	if err == nil {
		t.Fatal("enqueue with the server down succeeded")
	}
	if took > 1500*time.Millisecond {
		t.Errorf("enqueue failed after %s, past its 700ms deadline", took)
	}
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), q.Name()) {
		t.Errorf("error %q should wrap the deadline and name the queue", err)
	}
	t.Logf("error after %s: %v", took.Round(time.Millisecond), err)
}

func TestAutoIDStoresARepeatedSendOnce(t *testing.T) {
	_, nc := startNATS(t, nil)
	cfg := testConfig(t)
	cfg.AutoID = true
	q := newQueue[job](t, nc, cfg)
	ctx := ctxFor(t, 10*time.Second)
	if err := q.EnqueueBatch(ctx, []job{{ID: 1}, {ID: 2}}); err != nil {
		t.Fatal(err)
	}
	j, err := q.Dequeue(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id := j.Header.Get("Nats-Msg-Id")
	if id == "" {
		t.Fatal("a job enqueued with AutoID has no message id")
	}
	// The same message sent again, as a retry after a lost
	// acknowledgement would, is dropped by the server.
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	m := nats.NewMsg(q.Config().Subject)
	m.Header.Set(nats.MsgIdHdr, id)
	m.Data = []byte{0x81}
	ack, err := js.PublishMsg(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	if !ack.Duplicate {
		t.Errorf("the server took the repeated send as new (stream seq %d)", ack.Sequence)
	}
	if err := j.Ack(ctx); err != nil { // waits for the server
		t.Fatal(err)
	}
	info, err := q.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Jobs != 1 {
		t.Errorf("queue holds %d jobs, want 1: the repeated send must be dropped", info.Jobs)
	}
}

func TestAsyncEnqueueWaitsForRoomAndNeverDropsSilently(t *testing.T) {
	ns, nc := startNATS(t, nil)
	cfg := testConfig(t)
	cfg.MaxPending = 2
	cfg.EnqueueTimeout = 800 * time.Millisecond
	q := newQueue[job](t, nc, cfg)
	ns.Shutdown() // every send now waits for an acknowledgement that never comes
	ctx := ctxFor(t, 10*time.Second)
	var pending []*workqueue.Pending
	for i := range 2 {
		// No deadline: queue.enqueue_timeout (800ms) bounds the retries.
		p, err := q.EnqueueAsync(context.Background(), job{ID: i})
		if err != nil {
			t.Fatalf("EnqueueAsync %d: %v", i, err)
		}
		pending = append(pending, p)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := q.EnqueueAsync(short, job{ID: 2})
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "queue.max_pending") {
		t.Fatalf("a third EnqueueAsync with max_pending 2: %v; want it to wait for room, then the deadline", err)
	}
	if took := time.Since(start); took < 250*time.Millisecond {
		t.Errorf("it returned after %s without waiting for room", took)
	}
	err = q.Flush(ctx)
	if err == nil {
		t.Fatal("Flush reported no error for two jobs the server never stored")
	}
	for i, p := range pending {
		if p.Err() == nil {
			t.Errorf("pending %d has no error", i)
		}
	}
	t.Logf("Flush: %v", err)
}
