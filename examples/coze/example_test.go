package coze_test

import (
	"context"
	"log"

	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/eventbus"
	"github.com/loomrt/loom/examples/coze"
)

// A Coze Studio service that built its producer and consumer service with
// Coze's constructors builds them with these instead.
func Example() {
	c := config.Default() // NATS_SERVER, NATS_USE_JETSTREAM... as Coze reads them
	bus, err := eventbus.New(eventbus.Config{NATS: c.NATS, Queue: c.Queue})
	if err != nil {
		log.Fatal(err)
	}
	defer bus.Shutdown(context.Background())
	p, err := coze.NewProducer(bus, "", "opencoze_app", "cg_app", 3)
	if err != nil {
		log.Fatal(err)
	}
	_ = p.Send(context.Background(), []byte(`{"op":"index"}`), coze.WithShardingKey("space-7"))
	_ = coze.NewConsumerService(bus).RegisterConsumer("", "opencoze_app", "cg_app", nil, coze.WithConsumerOrderly(true))
}
