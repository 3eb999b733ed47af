package workqueue_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/metrics"
	"github.com/loomrt/loom/workqueue"
)

// queueMetric is the value of a loom_queue_* series of the queue named
// queue: a counter's or gauge's value, a histogram's count.
func queueMetric(t testing.TB, m *metrics.Metrics, name, queue string) float64 {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, s := range mf.GetMetric() {
			if !slices.ContainsFunc(s.GetLabel(), func(l *dto.LabelPair) bool { return l.GetName() == "queue" && l.GetValue() == queue }) {
				continue
			}
			switch {
			case s.Counter != nil:
				return s.GetCounter().GetValue()
			case s.Gauge != nil:
				return s.GetGauge().GetValue()
			case s.Histogram != nil:
				return float64(s.GetHistogram().GetSampleCount())
			}
		}
	}
	return -1
}

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
			got[name] = queueMetric(t, cfg.Metrics, name, cfg.Name)
		}
		if !maps.Equal(got, want) {
			return fmt.Errorf("metrics %v, want %v", got, want)
		}
		return nil
	})
}
