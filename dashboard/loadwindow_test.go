package dashboard

import (
	"context"
	"testing"
	"time"

	"github.com/loomrt/loom/llm"
)

// TestServingLoadCountsTheLoadMetricsOfTheLast10Seconds holds the serving
// headline's row in docs/dashboard.md: KV hit rate, KV cache used and
// waiting come from the workers' load_metrics heard in the last 10 s, and
// a worker silent for longer drops out of them.
func TestServingLoadCountsTheLoadMetricsOfTheLast10Seconds(t *testing.T) {
	w := newEventWatch(context.Background(), true)
	defer w.close()
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	w.pubs[1] = &pubTrack{load: &llm.LoadMetrics{PrefixHitRate: 0.5, CacheUsage: 0.25, Waiting: 3}, loadAt: t0}
	w.pubs[2] = &pubTrack{load: &llm.LoadMetrics{PrefixHitRate: 0.25, CacheUsage: 0.75, Waiting: 1}, loadAt: t0.Add(2 * time.Second)}
	for _, c := range []struct {
		after               time.Duration
		workers             int
		hit, usage, waiting float64
	}{
		{after: 10 * time.Second, workers: 2, hit: 0.375, usage: 0.5, waiting: 4},
		{after: 10*time.Second + time.Millisecond, workers: 1, hit: 0.25, usage: 0.75, waiting: 1},
		{after: 12 * time.Second, workers: 1, hit: 0.25, usage: 0.75, waiting: 1},
		{after: 12*time.Second + time.Millisecond, workers: 0},
	} {
		hit, usage, waiting, n := w.loadSummary(t0.Add(c.after))
		if n != c.workers {
			t.Errorf("%v after the first report: %d workers' load counted, want %d", c.after, n, c.workers)
			continue
		}
		if n == 0 {
			if hit.Known() || usage.Known() || waiting.Known() {
				t.Errorf("%v after the first report, with no fresh load: hit rate %v, usage %v, waiting %v; want them unknown", c.after, hit, usage, waiting)
			}
			continue
		}
		if float64(hit) != c.hit || float64(usage) != c.usage || float64(waiting) != c.waiting {
			t.Errorf("%v after the first report: hit rate %v, usage %v, waiting %v; want %v, %v, %v", c.after, hit, usage, waiting, c.hit, c.usage, c.waiting)
		}
	}
}

// TestThePercentileWindowIs10Seconds holds the other "10 s" of
// docs/dashboard.md, the window p50 / p99 are taken over, where Config
// leaves it to the default (as loom dashboard does); what the window does
// is TestPercentilesForgetRequestsOlderThanTheWindow's.
func TestThePercentileWindowIs10Seconds(t *testing.T) {
	for _, c := range []struct {
		cfg  Config
		want time.Duration
	}{
		{Config{}, 10 * time.Second},
		{Config{Interval: 2 * time.Second}, 10 * time.Second},
		{Config{Interval: 30 * time.Second}, 30 * time.Second},                // at least one interval
		{Config{Interval: time.Second, Window: time.Second / 2}, time.Second}, // shorter than the interval
		{Config{Interval: 100 * time.Millisecond, Window: time.Second}, time.Second},
	} {
		if got := c.cfg.withDefaults().Window; got != c.want {
			t.Errorf("Config{Interval: %v, Window: %v}: window %v, want %v", c.cfg.Interval, c.cfg.Window, got, c.want)
		}
	}
}
