// Command tracehop is the set of processes of the cross-process tracing
// test (e2e/trace_test.go): two servers, a client, a job producer and a
// job consumer, each exporting its spans where the OTEL_* variables say
// (otelsetup, through loom.Run):
//
//	tracehop leaf      serve trace/b/leaf
//	tracehop mid       serve trace/a/mid, which calls trace/b/leaf
//	tracehop call      call trace/a/mid once, print "got <answer>" and exit
//	tracehop enqueue   enqueue one job on queue "traced" and exit
//	tracehop consume   handle one job of queue "traced", print "handled" and exit
//
// The servers print "serving <instance id>" and run until SIGTERM. They
// connect with Loom's configuration (NATS_SERVER, LOOM_*).
package main

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"os"
	"sync"

	"github.com/loomrt/loom"
	_ "github.com/loomrt/loom/discovery/all" // every discovery backend, chosen by discovery.backend
	_ "github.com/loomrt/loom/otelsetup"     // traces exported as OTEL_* says
	"github.com/loomrt/loom/workqueue"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: tracehop leaf|mid|call|enqueue|consume")
		os.Exit(2)
	}
	mode := os.Args[1]
	loom.Run(func(ctx context.Context, rt *loom.Runtime) error {
		switch mode {
		case "leaf":
			return serve(ctx, rt, "trace/b/leaf", func(ctx context.Context, s string) iter.Seq2[string, error] {
				return func(yield func(string, error) bool) { yield(s+"+b", nil) }
			})
		case "mid":
			ep, err := rt.Endpoint("trace/b/leaf")
			if err != nil {
				return err
			}
			leaf, err := loom.NewClient[string, string](ctx, ep)
			if err != nil {
				return err
			}
			return serve(ctx, rt, "trace/a/mid", func(ctx context.Context, s string) iter.Seq2[string, error] {
				return leaf.Generate(ctx, s+"+a")
			})
		case "call":
			ep, err := rt.Endpoint("trace/a/mid")
			if err != nil {
				return err
			}
			c, err := loom.NewClient[string, string](ctx, ep)
			if err != nil {
				return err
			}
			for v, err := range c.Generate(ctx, "x") {
				if err != nil {
					return err
				}
				fmt.Println("got", v)
			}
			return nil
		case "enqueue", "consume":
			cfg := workqueue.Config{Name: "traced"}
			cfg.Storage = "memory"
			q, err := workqueue.Open[string](ctx, rt, cfg)
			if err != nil {
				return err
			}
			if mode == "enqueue" {
				return q.Enqueue(ctx, "job")
			}
			done := make(chan struct{})
			var once sync.Once
			c, err := q.Consume(workqueue.HandlerFunc[string](func(ctx context.Context, j *workqueue.Job[string]) error {
				once.Do(func() { close(done) })
				return nil
			}))
			if err != nil {
				return err
			}
			select {
			case <-done:
			case <-ctx.Done():
			}
			if err := c.Shutdown(context.Background()); err != nil {
				return err
			}
			fmt.Println("handled")
			return nil
		}
		return errors.New("unknown mode " + mode)
	})
}

// serve serves path with fn and waits for the process to be stopped.
func serve(ctx context.Context, rt *loom.Runtime, path string, fn loom.EngineFunc[string, string]) error {
	ep, err := rt.Endpoint(path)
	if err != nil {
		return err
	}
	if err := loom.Serve(ctx, ep, fn); err != nil {
		return err
	}
	fmt.Printf("serving %x\n", rt.ID())
	<-ctx.Done()
	return nil
}
