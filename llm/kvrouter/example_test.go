package kvrouter_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/discovery/memory"
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/llm"
	"github.com/loomrt/loom/llm/kvrouter"
	"github.com/loomrt/loom/llm/mocker"
)

// Routing with the kv router: a second prompt sharing the first's prefix
// goes to the worker that cached it.
func Example() {
	ctx := context.Background()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	nats, err := embedded.StartNATS(embedded.NATSOptions{JetStream: true})
	if err != nil {
		panic(err)
	}
	defer nats.Shutdown()
	store := memory.NewStore()
	cfg := config.Default()
	cfg.NATS.URL = nats.ClientURL()
	workers, err := mocker.StartCluster(ctx, mocker.ClusterConfig{Workers: 4, Runtime: cfg, NATS: nats, Store: store, Logger: quiet})
	if err != nil {
		panic(err)
	}
	defer workers.Shutdown(ctx)

	// The frontend's side: a runtime, the router, the workers' client.
	rt, err := loom.NewRuntime(ctx, loom.WithConfig(cfg), loom.WithDiscovery(store.Connect()), loom.WithLogger(quiet))
	if err != nil {
		panic(err)
	}
	defer rt.Shutdown(ctx)
	router, err := kvrouter.New(ctx, rt, kvrouter.KV, kvrouter.Config{})
	if err != nil {
		panic(err)
	}
	defer router.Close()
	ep, err := rt.Endpoint("llm/backend/generate")
	if err != nil {
		panic(err)
	}
	client, err := loom.NewClient[llm.Request, llm.Response](ctx, ep, loom.WithPicker(router))
	if err != nil {
		panic(err)
	}

	ask := func(id string, prompt []uint32) (cached int) {
		ri := &llm.RouteInfo{RequestID: id, Model: mocker.DefaultModel, TokenIDs: prompt}
		defer router.Done(id)
		for resp, err := range client.Generate(llm.WithRoute(ctx, ri), llm.Request{ID: id, Model: mocker.DefaultModel, TokenIDs: prompt, MaxTokens: 4}) {
			if err != nil {
				panic(err)
			}
			if resp.Worker != 0 {
				cached = resp.CachedTokens
			}
		}
		return cached
	}
	system := make([]uint32, 256)
	for i := range system {
		system[i] = uint32(1000 + i)
	}
	fmt.Println("first:", ask("r1", system), "tokens cached")
	// The router learns of the cached blocks from the worker's kv_events,
	// and that the worker is idle again from its load_metrics.
	for !caughtUp(router.Stats()) {
		time.Sleep(time.Millisecond)
	}
	fmt.Println("second:", ask("r2", append(system, 7, 8, 9)), "tokens cached")
	// Output:
	// first: 0 tokens cached
	// second: 256 tokens cached
}

func caughtUp(st kvrouter.Stats) bool {
	if st.EventsApplied == 0 {
		return false
	}
	for _, w := range st.Workers {
		if w.Load != nil && w.Load.ActiveSlots+w.Load.Waiting > 0 {
			return false
		}
	}
	return true
}
