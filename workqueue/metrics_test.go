package workqueue_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/workqueue"
)

// TestEachQueueMetricMovesWithItsJobs: the metrics docs/queues.md lists,
// labelled by queue, each move for the jobs that should move them: three
// jobs enqueued three ways; one handled at once, one failing once then
// handled, one refused for good and dead-lettered.
func TestEachQueueMetricMovesWithItsJobs(t *testing.T) {
	_, nc := startNATS(t, nil)
	cfg := testConfig(t)
	q := newQueue[job](t, nc, cfg)
	ctx := ctxFor(t, 30*time.Second)
	if err := q.Enqueue(ctx, job{ID: 1}); err != nil {
		t.Fatal(err)
	}
	p, err := q.EnqueueAsync(ctx, job{ID: 2})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if err := q.EnqueueBatch(ctx, []job{{ID: 3}}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	tries := map[int]int{}
	consume(t, q, func(ctx context.Context, j *workqueue.Job[job]) error {
		mu.Lock()
		tries[j.Value.ID]++
		n := tries[j.Value.ID]
		mu.Unlock()
		switch {
		case j.Value.ID == 3:
			return workqueue.Permanent(errors.New("poison"))
		case j.Value.ID == 2 && n == 1:
			return errors.New("try again")
		}
		return nil
	})
	want := map[string]float64{
		"loom_queue_enqueued_total":           3,
		"loom_queue_acked_total":              2,
		"loom_queue_nakked_total":             1,
		"loom_queue_redelivered_total":        1,
		"loom_queue_dead_lettered_total":      1,
		"loom_queue_handler_duration_seconds": 4,
		"loom_queue_pending":                  0,
	}
	testutil.EventuallyNoError(t, 20*time.Second, "every job settled and counted", func() error {
		got := map[string]float64{}
		for name := range want {
			got[name] = testutil.Metric(t, cfg.Metrics.Registry(), name, "queue", cfg.Name)
		}
		if !maps.Equal(got, want) {
			return fmt.Errorf("metrics %v, want %v", got, want)
		}
		return nil
	})
}
