package mocker_test

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/discovery/memory"
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/llm"
	"github.com/loomrt/loom/llm/mocker"
)

// Two mock workers in one process, and a client streaming from them.
func Example() {
	ctx := context.Background()
	nats, err := embedded.StartNATS(embedded.NATSOptions{JetStream: true})
	if err != nil {
		panic(err)
	}
	defer nats.Shutdown()
	store := memory.NewStore()
	quiet := slog.New(slog.DiscardHandler)
	cfg := config.Default()
	cfg.NATS.URL = nats.ClientURL()

	workers, err := mocker.StartCluster(ctx, mocker.ClusterConfig{
		Workers: 2,
		Worker:  mocker.Config{Model: "mock-llama", DecodeStep: time.Millisecond},
		Runtime: cfg, NATS: nats, Store: store, Logger: quiet,
	})
	if err != nil {
		panic(err)
	}
	defer workers.Shutdown(ctx)

	rt, err := loom.NewRuntime(ctx, loom.WithConfig(cfg), loom.WithDiscovery(store.Connect()), loom.WithLogger(quiet))
	if err != nil {
		panic(err)
	}
	defer rt.Shutdown(ctx)
	ep, err := rt.Endpoint("llm/backend/generate")
	if err != nil {
		panic(err)
	}
	client, err := loom.NewClient[llm.Request, llm.Response](ctx, ep)
	if err != nil {
		panic(err)
	}
	tokens, finish := 0, ""
	for resp, err := range client.Generate(ctx, llm.Request{ID: "r1", Model: "mock-llama", TokenIDs: []uint32{1, 2, 3, 4, 5}, MaxTokens: 8}) {
		if err != nil {
			panic(err)
		}
		tokens += len(resp.TokenIDs)
		finish = resp.FinishReason
	}
	fmt.Println(tokens, "tokens, finish reason", finish)
	// Output: 8 tokens, finish reason length
}
