package events_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/events"
)

// LoadMetrics is an event type: any type the codec encodes will do.
type LoadMetrics struct {
	Worker      string  `json:"worker"`
	ActiveSlots int     `json:"active_slots"`
	CacheUsage  float64 `json:"cache_usage"`
}

// A publisher per worker component, one subscription to every component's
// load_metrics.
func Example() {
	ns, _ := embedded.StartNATS(embedded.NATSOptions{})
	defer ns.Shutdown()
	cfg := config.Default()
	cfg.NATS.URL = ns.ClientURL()
	ctx := context.Background()
	rt, _ := loom.NewRuntime(ctx, loom.WithConfig(cfg), loom.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	defer rt.Shutdown(ctx)

	sub, err := events.Subscribe[LoadMetrics](ctx, rt, events.Scope{Namespace: "dynamo", Component: events.Any}, "load_metrics")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer sub.Close()
	for _, w := range []string{"prefill", "decode"} {
		pub, err := events.NewPublisher[LoadMetrics](ctx, rt, events.Scope{Namespace: "dynamo", Component: w}, "load_metrics")
		if err != nil {
			fmt.Println(err)
			return
		}
		_ = pub.Publish(ctx, LoadMetrics{Worker: w, ActiveSlots: 3, CacheUsage: 0.5})
		_ = pub.Publish(ctx, LoadMetrics{Worker: w, ActiveSlots: 4, CacheUsage: 0.75})
	}
	n := 0
	for ev, err := range sub.Events(ctx) {
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Printf("%s seq %d: %d slots, %.0f%% cache\n", ev.Scope(), ev.Sequence, ev.Value.ActiveSlots, 100*ev.Value.CacheUsage)
		if n++; n == 4 {
			break
		}
	}
	fmt.Printf("%+v\n", sub.Stats())
	// Output:
	// dynamo/prefill seq 0: 3 slots, 50% cache
	// dynamo/prefill seq 1: 4 slots, 75% cache
	// dynamo/decode seq 0: 3 slots, 50% cache
	// dynamo/decode seq 1: 4 slots, 75% cache
	// {Received:4 Delivered:4 Lost:0 Reordered:0 Duplicates:0 Dropped:0 Malformed:0 Buffered:0 Publishers:2}
}

// WithLossErrors puts losses in the stream, where the reader can act on
// them (a router would ask the worker to resynchronise).
func ExampleWithLossErrors() {
	ns, _ := embedded.StartNATS(embedded.NATSOptions{})
	defer ns.Shutdown()
	cfg := config.Default()
	cfg.NATS.URL = ns.ClientURL()
	ctx := context.Background()
	rt, _ := loom.NewRuntime(ctx, loom.WithConfig(cfg), loom.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	defer rt.Shutdown(ctx)

	// A buffer of 2 events, and a reader that only starts reading after
	// 5 were published: the 3 oldest are dropped.
	sub, _ := events.Subscribe[int](ctx, rt, events.Scope{Namespace: "dynamo"}, "ticks",
		events.WithBuffer(2, events.DropOldest), events.WithLossErrors())
	defer sub.Close()
	pub, _ := events.NewPublisher[int](ctx, rt, events.Scope{Namespace: "dynamo"}, "ticks")
	for i := range 5 {
		_ = pub.Publish(ctx, i)
	}
	_ = pub.Flush(ctx)
	for sub.Stats().Received < 5 {
		time.Sleep(time.Millisecond)
	}
	n := 0
	for ev, err := range sub.Events(ctx) {
		if le := (*events.LossError)(nil); errors.As(err, &le) {
			fmt.Println("lost:", le)
			continue
		}
		fmt.Println("event", ev.Value)
		if n++; n == 2 {
			break
		}
	}
	// Output:
	// lost: events: 3 events dropped by the full subscription buffer (reader too slow; see events.buffer_size and events.overflow)
	// event 3
	// event 4
}

// A broker lets publishers and subscribers meet without discovery: point
// events.zmq.broker_pub and broker_sub at its endpoints.
func ExampleStartBroker() {
	b, err := events.StartBroker(events.BrokerConfig{PubEndpoint: "tcp://127.0.0.1:0", SubEndpoint: "tcp://127.0.0.1:0"})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer b.Close()
	cfg := config.Default()
	cfg.Events.Transport = events.ZMQ
	cfg.Events.ZMQ.BrokerPub, cfg.Events.ZMQ.BrokerSub = b.PubEndpoint(), b.SubEndpoint()
	ctx := context.Background()
	rt, _ := loom.NewRuntime(ctx, loom.WithConfig(cfg), loom.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	defer rt.Shutdown(ctx)

	sub, _ := events.Subscribe[string](ctx, rt, events.Scope{Namespace: "dynamo", Component: events.Any}, "kv_events")
	defer sub.Close()
	pub, _ := events.NewPublisher[string](ctx, rt, events.Scope{Namespace: "dynamo", Component: "worker"}, "kv_events")
	_ = pub.WaitForSubscribers(ctx, 1) // the broker, once it has a subscriber
	_ = pub.Publish(ctx, "stored 3 blocks")
	for ev := range sub.Events(ctx) {
		fmt.Println(ev.Subject, ev.Value)
		break
	}
	fmt.Printf("publishers %d, subscribers %d\n", b.Stats().Publishers, b.Stats().Subscribers)
	// Output:
	// namespace.dynamo.component.worker.kv_events stored 3 blocks
	// publishers 1, subscribers 1
}
