package loom_test

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"time"

	"golang.org/x/time/rate"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/discovery/memory"
)

// An auth interceptor on the server refuses requests without the right
// token in their "authorization" header; the caller gets a
// *loom.RefusedError it can branch on. Callers send the header with
// loom.WithHeader (or a client interceptor that sets Call.Header).
func ExampleRefuse_auth() {
	ctx := context.Background()
	auth := func(next loom.Engine[any, any]) loom.Engine[any, any] {
		return loom.EngineFunc[any, any](func(ctx context.Context, req any) iter.Seq2[any, error] {
			if loom.CallFromContext(ctx).Header["authorization"] != "Bearer s3cret" {
				return loom.Fail[any](loom.Refuse("unauthenticated", "send the token in the authorization header"))
			}
			return next.Generate(ctx, req)
		})
	}
	rt, err := loom.NewRuntime(ctx, loom.WithConfig(config.Default()), loom.WithDiscovery(memory.New()), loom.WithLogger(quiet),
		loom.WithServerInterceptors(auth))
	if err != nil {
		panic(err)
	}
	defer rt.Shutdown(ctx)
	ep, _ := rt.Endpoint("example/vault/open")
	err = loom.Serve(ctx, ep, loom.EngineFunc[string, string](func(ctx context.Context, who string) iter.Seq2[string, error] {
		return func(yield func(string, error) bool) { yield("welcome, "+who, nil) }
	}))
	if err != nil {
		panic(err)
	}
	c, _ := loom.NewClient[string, string](ctx, ep)
	defer c.Close()

	for _, err := range c.Generate(ctx, "eve") {
		var re *loom.RefusedError
		if errors.As(err, &re) {
			fmt.Println("refused:", re.Reason)
		}
	}
	for v, err := range c.Generate(loom.WithHeader(ctx, "authorization", "Bearer s3cret"), "bob") {
		fmt.Println(v, err)
	}
	// Output:
	// refused: unauthenticated
	// welcome, bob <nil>
}

// A rate limiter on one endpoint refuses what exceeds its budget with the
// reason "rate_limited" (here a burst of 2 and one more per hour).
func ExampleWithServeInterceptors_rateLimit() {
	ctx := context.Background()
	limiter := rate.NewLimiter(rate.Every(time.Hour), 2)
	limit := func(next loom.Engine[any, any]) loom.Engine[any, any] {
		return loom.EngineFunc[any, any](func(ctx context.Context, req any) iter.Seq2[any, error] {
			if !limiter.Allow() {
				return loom.Fail[any](loom.Refuse("rate_limited", "over 2 requests; retry later"))
			}
			return next.Generate(ctx, req)
		})
	}
	rt, err := loom.NewRuntime(ctx, loom.WithConfig(config.Default()), loom.WithDiscovery(memory.New()), loom.WithLogger(quiet))
	if err != nil {
		panic(err)
	}
	defer rt.Shutdown(ctx)
	ep, _ := rt.Endpoint("example/api/ping")
	err = loom.Serve(ctx, ep, loom.EngineFunc[int, int](func(ctx context.Context, n int) iter.Seq2[int, error] {
		return func(yield func(int, error) bool) { yield(n, nil) }
	}), loom.WithServeInterceptors(limit))
	if err != nil {
		panic(err)
	}
	c, _ := loom.NewClient[int, int](ctx, ep)
	defer c.Close()
	for i := range 3 {
		for v, err := range c.Generate(ctx, i) {
			if errors.Is(err, loom.ErrRefused) {
				fmt.Println(i, "refused")
				continue
			}
			fmt.Println(i, "->", v)
		}
	}
	// Output:
	// 0 -> 0
	// 1 -> 1
	// 2 refused
}
