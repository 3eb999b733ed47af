package loom_test

import (
	"context"
	"fmt"
	"iter"
	"strings"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/discovery/memory"
)

// Call an endpoint that answers once.
func ExampleClient_Call() {
	ctx := context.Background()
	rt, err := loom.NewRuntime(ctx, loom.WithConfig(config.Default()), loom.WithDiscovery(memory.New()), loom.WithLogger(quiet))
	if err != nil {
		panic(err)
	}
	defer rt.Shutdown(ctx)

	ep, err := rt.Endpoint("example/words/upper")
	if err != nil {
		panic(err)
	}
	upper := loom.EngineFunc[string, string](func(ctx context.Context, s string) iter.Seq2[string, error] {
		return func(yield func(string, error) bool) { yield(strings.ToUpper(s), nil) }
	})
	if err := loom.Serve(ctx, ep, upper); err != nil {
		panic(err)
	}

	client, err := loom.NewClient[string, string](ctx, ep)
	if err != nil {
		panic(err)
	}
	defer client.Close()
	got, err := client.Call(ctx, "hello")
	if err != nil {
		panic(err)
	}
	fmt.Println(got)
	// Output: HELLO
}
