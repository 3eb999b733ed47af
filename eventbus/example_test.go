package eventbus_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/eventbus"
)

// Coze Studio's EventBus shape, in a deployment configured by Coze
// Studio's environment variables: a bus with its own connection, a
// producer of a topic, a consumer group registered with a handler. With
// JetStream, a group receives what was sent before it registered.
func Example() {
	ns, _ := embedded.StartNATS(embedded.NATSOptions{JetStream: true})
	defer ns.Shutdown()

	// In a deployment: cfg, err := eventbus.ConfigFromEnv(loaded.Config),
	// from NATS_SERVER_URL, NATS_USE_JETSTREAM and the others.
	base := config.Default()
	base.NATS.URL = ns.ClientURL()
	base.Queue.EventBusJetStream = true
	bus, err := eventbus.New(eventbus.Config{NATS: base.NATS, Queue: base.Queue})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer bus.Shutdown(context.Background())

	p, err := bus.NewProducer("", "opencoze.app.published", "app-service", 3)
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx := context.Background()
	if err := p.BatchSend(ctx, [][]byte{[]byte("app-1"), []byte("app-2")}, eventbus.WithShardingKey("space-7")); err != nil {
		fmt.Println(err)
		return
	}

	got := make(chan *eventbus.Message)
	err = bus.RegisterConsumer("", "opencoze.app.published", "search-indexer", eventbus.HandlerFunc(
		func(ctx context.Context, msg *eventbus.Message) error {
			got <- msg
			return nil // acknowledged; an error would retry with backoff
		}), eventbus.WithOrderly())
	if err != nil {
		fmt.Println(err)
		return
	}
	for range 2 {
		m := <-got
		fmt.Println(m.Group, string(m.Body), m.ShardingKey)
	}
	// Output:
	// search-indexer app-1 space-7
	// search-indexer app-2 space-7
}

// In a Loom program the bus shares the Runtime's connection, settings,
// logger and metrics, and stops with it.
func ExampleOpen() {
	ns, _ := embedded.StartNATS(embedded.NATSOptions{})
	defer ns.Shutdown()
	cfg := config.Default()
	cfg.NATS.URL = ns.ClientURL()
	ctx := context.Background()
	rt, _ := loom.NewRuntime(ctx, loom.WithConfig(cfg), loom.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	defer rt.Shutdown(ctx)

	bus, err := eventbus.Open(ctx, rt, eventbus.Config{})
	if err != nil {
		fmt.Println(err)
		return
	}
	got := make(chan string)
	err = bus.RegisterConsumer("", "opencoze.app.published", "search-indexer", eventbus.HandlerFunc(
		func(ctx context.Context, msg *eventbus.Message) error {
			got <- string(msg.Body)
			return nil
		}))
	if err != nil {
		fmt.Println(err)
		return
	}
	p, _ := bus.NewProducer("", "opencoze.app.published", "app-service", 3)
	if err := p.Send(ctx, []byte("app-1")); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(<-got)
	// Output: app-1
}
