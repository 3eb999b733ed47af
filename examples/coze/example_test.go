package coze_test

import (
	"context"
	"fmt"
	"log"

	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/eventbus"
	"github.com/loomrt/loom/examples/coze"
)

// indexer is a Coze Studio consumer handler.
type indexer chan string

func (ix indexer) HandleMessage(ctx context.Context, msg *coze.Message) error {
	ix <- string(msg.Body)
	return nil
}

// A Coze Studio service that built its producer and consumer service with
// Coze's constructors builds them with these instead, on the bus that
// Coze's environment variables describe (NATS_SERVER_URL,
// NATS_USE_JETSTREAM, the auth variables).
func Example() {
	ctx := context.Background()
	cfg, err := eventbus.ConfigFromEnv(config.Default())
	if err != nil {
		log.Fatal(err)
	}
	bus, err := eventbus.New(cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer bus.Shutdown(ctx)

	done := make(indexer, 1)
	if err := coze.NewConsumerService(bus).RegisterConsumer("", "opencoze_app", "cg_app", done, coze.WithConsumerOrderly(true)); err != nil {
		log.Fatal(err)
	}
	p, err := coze.NewProducer(bus, "", "opencoze_app", "cg_app", 3)
	if err != nil {
		log.Fatal(err)
	}
	if err := p.Send(ctx, []byte(`{"op":"index"}`), coze.WithShardingKey("space-7")); err != nil {
		log.Fatal(err)
	}
	fmt.Println(<-done)
	// Output: {"op":"index"}
}
