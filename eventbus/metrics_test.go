package eventbus_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/loomrt/loom/eventbus"
	"github.com/loomrt/loom/internal/testutil"
)

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
				got[name] = testutil.Metric(t, cfg.Metrics.Registry(), name, "queue", "measured.topic/g")
			}
			if !maps.Equal(got, want) {
				return fmt.Errorf("metrics of measured.topic/g %v, want %v", got, want)
			}
			return nil
		})
	})
}
