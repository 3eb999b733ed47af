package workqueue_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/loomrt/loom/codec"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/metrics"
	"github.com/loomrt/loom/workqueue"
)

func TestAdminListsPeeksAddsAndRequeues(t *testing.T) {
	_, nc := startNATS(t, nil)
	cfg := testConfig(t)
	cfg.MaxDeliver = 1
	q := newQueue[job](t, nc, cfg)
	jsonCfg := testConfig(t)
	jsonCfg.Codec = codec.JSON
	jq := newQueue[job](t, nc, jsonCfg)
	ctx := ctxFor(t, 10*time.Second)
	admin, err := workqueue.NewAdmin(nc)
	if err != nil {
		t.Fatal(err)
	}

	list, err := admin.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// List is in name order; the names come from a counter, so which
	// queue sorts first depends on how many tests ran before (test_9
	// sorts after test_10).
	want := []struct{ name, codec string }{{q.Name(), "msgpack"}, {jq.Name(), "json"}}
	if want[1].name < want[0].name {
		want[0], want[1] = want[1], want[0]
	}
	if len(list) != 2 || list[0].Name != want[0].name || list[0].Codec != want[0].codec ||
		list[1].Name != want[1].name || list[1].Codec != want[1].codec {
		t.Fatalf("List: %+v; want the two queues in name order, %v", list, want)
	}
	if _, err := admin.Info(ctx, "nope"); !errors.Is(err, workqueue.ErrNoQueue) {
		t.Errorf("Info of a missing queue: %v, want ErrNoQueue", err)
	}

	// A job added as JSON is encoded with the queue's codec.
	if _, err := admin.Add(ctx, q.Name(), json.RawMessage(`{"id": 5, "text": "from the CLI"}`), ""); err != nil {
		t.Fatal(err)
	}
	if err := q.Enqueue(ctx, job{ID: 6, Text: "typed"}); err != nil {
		t.Fatal(err)
	}
	peek, err := admin.Peek(ctx, q.Name(), 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(peek) != 2 {
		t.Fatalf("Peek: %d jobs, want 2", len(peek))
	}
	js0, err := peek[0].JSON()
	if err != nil || !strings.Contains(string(js0), `"from the CLI"`) {
		t.Errorf("peeked job as JSON: %s, %v", js0, err)
	}

	// Both fail once (MaxDeliver 1), are dead-lettered, then requeued.
	c, err := q.Consume(workqueue.HandlerFunc[job](func(ctx context.Context, j *workqueue.Job[job]) error {
		return errors.New("downstream unavailable")
	}))
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "two dead letters", func() bool {
		info, err := admin.Info(ctx, q.Name())
		return err == nil && info.DeadLetters == 2 && info.Jobs == 0
	})
	shutdown(t, c)
	dead, err := admin.DeadLetters(ctx, q.Name(), 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(dead) != 2 || dead[0].Error != "downstream unavailable" || dead[0].OriginalSeq == 0 {
		t.Fatalf("dead letters: %+v", dead)
	}
	n, err := admin.Requeue(ctx, q.Name())
	if err != nil || n != 2 {
		t.Fatalf("Requeue: %d, %v", n, err)
	}
	got := map[int]bool{}
	for range 2 {
		j, err := q.Dequeue(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got[j.Value.ID] = true
		if j.Deliveries != 1 {
			t.Errorf("a requeued job is on delivery %d, want a fresh 1", j.Deliveries)
		}
		_ = j.Ack(ctx)
	}
	if !got[5] || !got[6] {
		t.Errorf("requeued jobs %v, want 5 and 6", got)
	}
	info, _ := admin.Info(ctx, q.Name())
	if info.DeadLetters != 0 {
		t.Errorf("%d dead letters left after requeueing all", info.DeadLetters)
	}
}

func TestQueueMetricsCountEveryOutcome(t *testing.T) {
	_, nc := startNATS(t, nil)
	cfg := testConfig(t)
	cfg.MaxDeliver = 2
	cfg.BackoffInitial = 10 * time.Millisecond
	m := metrics.New()
	cfg.Metrics = m
	q := newQueue[job](t, nc, cfg)
	ctx := ctxFor(t, 10*time.Second)
	for i := range 5 {
		if err := q.Enqueue(ctx, job{ID: i}); err != nil {
			t.Fatal(err)
		}
	}
	consume(t, q, func(ctx context.Context, j *workqueue.Job[job]) error {
		if j.Value.ID == 0 {
			return errors.New("always fails")
		}
		return nil
	})
	qm := m.Queue(q.Name())
	testutil.Eventually(t, 5*time.Second, "4 acked, 1 dead-lettered", func() bool {
		return promtest.ToFloat64(qm.Acked) == 4 && promtest.ToFloat64(qm.DeadLettered) == 1
	})
	if v := promtest.ToFloat64(qm.Enqueued); v != 5 {
		t.Errorf("enqueued %v, want 5", v)
	}
	if v := promtest.ToFloat64(qm.Nakked); v != 1 {
		t.Errorf("nakked %v, want 1", v)
	}
	if v := promtest.ToFloat64(qm.Redelivered); v != 1 {
		t.Errorf("redelivered %v, want 1", v)
	}
	if v := promtest.ToFloat64(qm.Pending); v != 0 {
		t.Errorf("pending %v, want 0", v)
	}
	if n := promtest.CollectAndCount(m.Registry(), "loom_queue_handler_duration_seconds"); n != 1 {
		t.Errorf("%d handler duration series, want 1", n)
	}
}
