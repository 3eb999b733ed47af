package loom_test

import (
	"bufio"
	"context"
	"fmt"
	"iter"
	"os"
	"strings"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/discovery/memory"
)

// Serve an endpoint that streams words and call it through a Client.
func ExampleServe() {
	ctx := context.Background()
	cfg := config.Default()
	rt, err := loom.NewRuntime(ctx, loom.WithConfig(cfg), loom.WithDiscovery(memory.New()), loom.WithLogger(quiet))
	if err != nil {
		panic(err)
	}
	defer rt.Shutdown(ctx)

	ep, err := rt.Endpoint("example/words/split")
	if err != nil {
		panic(err)
	}
	split := loom.EngineFunc[string, string](func(ctx context.Context, s string) iter.Seq2[string, error] {
		return func(yield func(string, error) bool) {
			for _, w := range strings.Fields(s) {
				if !yield(w, nil) {
					return
				}
			}
		}
	})
	if err := loom.Serve(ctx, ep, split); err != nil {
		panic(err)
	}

	client, err := loom.NewClient[string, string](ctx, ep)
	if err != nil {
		panic(err)
	}
	defer client.Close()
	for word, err := range client.Generate(ctx, "hello from loom") {
		if err != nil {
			panic(err)
		}
		fmt.Println(word)
	}
	// Output:
	// hello
	// from
	// loom
}

// A caller asks a handler to finish gracefully with WithStop; the handler
// watches Stopped and sends a last item.
func ExampleWithStop() {
	ctx := context.Background()
	rt, _ := loom.NewRuntime(ctx, loom.WithConfig(config.Default()), loom.WithDiscovery(memory.New()), loom.WithLogger(quiet))
	defer rt.Shutdown(ctx)
	ep, _ := rt.Endpoint("example/count/up")
	_ = loom.Serve(ctx, ep, loom.EngineFunc[int, string](func(ctx context.Context, _ int) iter.Seq2[string, error] {
		return func(yield func(string, error) bool) {
			for i := 0; ; i++ {
				if loom.IsStopped(ctx) {
					yield("stopped cleanly", nil)
					return
				}
				if !yield(fmt.Sprint(i), nil) {
					return
				}
			}
		}
	}))
	client, _ := loom.NewClient[int, string](ctx, ep)
	defer client.Close()

	sctx, stop := loom.WithStop(ctx)
	defer stop()
	for s := range client.Generate(sctx, 0) {
		fmt.Println(s)
		if s == "2" {
			stop()
		}
	}
	// Output:
	// 0
	// 1
	// 2
	// stopped cleanly
}

// Run is a Loom program's entry point: it handles SIGINT / SIGTERM with a
// graceful, phased shutdown and exits with the right code.
func ExampleRun() {
	loom.Run(func(ctx context.Context, rt *loom.Runtime) error {
		ep, err := rt.Endpoint("example/echo/echo")
		if err != nil {
			return err
		}
		echo := loom.EngineFunc[string, string](func(ctx context.Context, s string) iter.Seq2[string, error] {
			return func(yield func(string, error) bool) { yield(s, nil) }
		})
		if err := loom.Serve(ctx, ep, echo); err != nil {
			return err
		}
		<-ctx.Done() // serve until asked to stop
		return nil
	})
}

// A pipeline: an operator that upper-cases what the next engine streams.
// A Client is an Engine, so the next stage may be in another process.
func ExampleOperator() {
	var upper loom.Operator[string, string, string, string] = func(next loom.Engine[string, string]) loom.Engine[string, string] {
		return loom.EngineFunc[string, string](func(ctx context.Context, s string) iter.Seq2[string, error] {
			return func(yield func(string, error) bool) {
				for w, err := range next.Generate(ctx, s) {
					if !yield(strings.ToUpper(w), err) || err != nil {
						return
					}
				}
			}
		})
	}
	words := loom.EngineFunc[string, string](func(ctx context.Context, s string) iter.Seq2[string, error] {
		return func(yield func(string, error) bool) {
			for _, w := range strings.Fields(s) {
				if !yield(w, nil) {
					return
				}
			}
		}
	})
	for w := range upper(words).Generate(context.Background(), "pipelines compose") {
		fmt.Println(w)
	}
	// Output:
	// PIPELINES
	// COMPOSE
}

// Copy a call's responses to a buffered writer, flushing only when no
// further response waits: a caller that keeps up flushes each one as it
// comes, and one that falls behind flushes a burst of them once.
func ExampleLookahead() {
	ctx := context.Background()
	rt, err := loom.NewRuntime(ctx, loom.WithConfig(config.Default()), loom.WithDiscovery(memory.New()), loom.WithLogger(quiet))
	if err != nil {
		panic(err)
	}
	defer rt.Shutdown(ctx)
	ep, err := rt.Endpoint("example/words/count")
	if err != nil {
		panic(err)
	}
	count := loom.EngineFunc[int, string](func(ctx context.Context, n int) iter.Seq2[string, error] {
		return func(yield func(string, error) bool) {
			for i := range n {
				if !yield(fmt.Sprint("line ", i+1), nil) {
					return
				}
			}
		}
	})
	if err := loom.Serve(ctx, ep, count); err != nil {
		panic(err)
	}
	client, err := loom.NewClient[int, string](ctx, ep)
	if err != nil {
		panic(err)
	}
	defer client.Close()

	var ahead loom.Lookahead
	w := bufio.NewWriter(os.Stdout)
	for line, err := range client.Generate(loom.WithLookahead(ctx, &ahead), 3) {
		if err != nil {
			panic(err)
		}
		fmt.Fprintln(w, line)
		if !ahead.Ready() {
			w.Flush()
		}
	}
	w.Flush()
	// Output:
	// line 1
	// line 2
	// line 3
}
