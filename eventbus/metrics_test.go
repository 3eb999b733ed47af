package eventbus_test

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

	"github.com/loomrt/loom/eventbus"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/metrics"
)

// queueMetric is the value of a loom_queue_* series labelled queue: a
// counter's or gauge's value, a histogram's count; -1 if there is none.
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

// TestAConsumerGroupsQueueMetricsMoveWithItsMessages: a consumer group's
// handling is measured on the loom_queue_* metrics labelled topic/group
// (docs/queues.md): one message handled at once, one failing once then
// handled, one refused for good and dead-lettered.
func TestAConsumerGroupsQueueMetricsMoveWithItsMessages(t *testing.T) {
	modes(t, func(t *testing.T, js bool) {
		ns := startNATS(t, nil)
		cfg := busConfig(ns, js)
		b := newBus(t, cfg)
		var mu sync.Mutex
		tries := map[string]int{}
		h := eventbus.HandlerFunc(func(ctx context.Context, msg *eventbus.Message) error {
			mu.Lock()
			tries[string(msg.Body)]++
			n := tries[string(msg.Body)]
			mu.Unlock()
			switch {
			case string(msg.Body) == "poison":
				return eventbus.Permanent(errors.New("poison"))
			case string(msg.Body) == "flaky" && n == 1:
				return errors.New("try again")
			}
			return nil
		})
		if err := b.RegisterConsumer("", "measured.topic", "g", h); err != nil {
			t.Fatal(err)
		}
		p, err := b.NewProducer("", "measured.topic", "producers", 1)
		if err != nil {
			t.Fatal(err)
		}
		for _, body := range []string{"fine", "flaky", "poison"} {
			if err := p.Send(ctxFor(t, 20*time.Second), []byte(body)); err != nil {
				t.Fatal(err)
			}
		}
		want := map[string]float64{
			"loom_queue_acked_total":              2,
			"loom_queue_nakked_total":             1,
			"loom_queue_redelivered_total":        1,
			"loom_queue_dead_lettered_total":      1,
			"loom_queue_handler_duration_seconds": 4,
		}
		testutil.EventuallyNoError(t, 20*time.Second, "every message settled and counted", func() error {
			got := map[string]float64{}
			for name := range want {
				got[name] = queueMetric(t, cfg.Metrics, name, "measured.topic/g")
			}
			if !maps.Equal(got, want) {
				return fmt.Errorf("metrics of measured.topic/g %v, want %v", got, want)
			}
			return nil
		})
	})
}
