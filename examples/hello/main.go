// Command hello is Loom across processes: a server that streams a greeting
// and a client that calls it, run in separate terminals against `loom up`.
//
//	go run ./cmd/loom up                  # terminal 1: prints NATS_SERVER=..., LOOM_DISCOVERY=..., ETCD_ENDPOINTS=...
//	go run ./examples/hello server        # terminals 2 and 3, with those variables set
//	go run ./examples/hello client        # terminal 4: a few streaming calls, then exit 0
//	go run ./cmd/loom ls                  # the instances, as they come and go
package main

import (
	"context"
	"flag"
	"fmt"
	"iter"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loomrt/loom"
	_ "github.com/loomrt/loom/discovery/all" // every discovery backend, chosen by discovery.backend
)

// Greeting is the request.
type Greeting struct {
	Name string `json:"name"`
}

// Word is one streamed piece of the answer.
type Word struct {
	Text     string `json:"text"`
	Instance string `json:"instance"`
}

const path = "hello/greeter/greet"

func main() {
	if len(os.Args) < 2 || (os.Args[1] != "server" && os.Args[1] != "client") {
		fmt.Fprintln(os.Stderr, "usage: hello server [-delay d] | hello client [-calls n] [-concurrency n] [-interval d] [-name s] [-report d]")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "server":
		fs := flag.NewFlagSet("server", flag.ExitOnError)
		delay := fs.Duration("delay", 20*time.Millisecond, "pause between streamed words")
		_ = fs.Parse(os.Args[2:])
		loom.Run(func(ctx context.Context, rt *loom.Runtime) error { return server(ctx, rt, *delay) })
	case "client":
		fs := flag.NewFlagSet("client", flag.ExitOnError)
		calls := fs.Int("calls", 3, "calls to make; 0 calls until stopped, then prints a summary")
		interval := fs.Duration("interval", 0, "pause between calls")
		name := fs.String("name", "loom", "who to greet")
		concurrency := fs.Int("concurrency", 1, "callers at once (with -calls 0)")
		report := fs.Duration("report", 0, "with -calls 0, print the calls that succeeded in each period this long")
		_ = fs.Parse(os.Args[2:])
		loom.Run(func(ctx context.Context, rt *loom.Runtime) error {
			return client(ctx, rt, *calls, *interval, *name, *concurrency, *report)
		})
	}
}

func server(ctx context.Context, rt *loom.Runtime, delay time.Duration) error {
	ep, err := rt.Endpoint(path)
	if err != nil {
		return err
	}
	id := fmt.Sprintf("%x", rt.ID())
	greet := loom.EngineFunc[Greeting, Word](func(ctx context.Context, g Greeting) iter.Seq2[Word, error] {
		return func(yield func(Word, error) bool) {
			for _, w := range []string{"hello", g.Name, "from", id} {
				select {
				case <-ctx.Done():
					yield(Word{}, ctx.Err())
					return
				case <-time.After(delay):
				}
				if !yield(Word{Text: w, Instance: id}, nil) {
					return
				}
			}
		}
	})
	if err := loom.Serve(ctx, ep, greet); err != nil {
		return err
	}
	fmt.Printf("serving %s as instance %s\n", path, id)
	<-ctx.Done()
	return nil
}

func client(ctx context.Context, rt *loom.Runtime, calls int, interval time.Duration, name string, concurrency int, report time.Duration) error {
	ep, err := rt.Endpoint(path)
	if err != nil {
		return err
	}
	c, err := loom.NewClient[Greeting, Word](ctx, ep)
	if err != nil {
		return err
	}
	if calls > 0 {
		for range calls {
			words, err := greet(ctx, c, name)
			if err != nil {
				return err
			}
			fmt.Println(strings.Join(words, " "))
		}
		return nil
	}
	// Until stopped: report every failure, then a summary.
	var ok, failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range max(concurrency, 1) {
		wg.Go(func() {
			for ctx.Err() == nil {
				t0 := time.Now()
				words, err := greet(context.WithoutCancel(ctx), c, name)
				if err != nil {
					failed.Add(1)
					fmt.Printf("failed at=%s after=%s words=%d: %v\n", time.Since(start).Round(time.Millisecond), time.Since(t0).Round(time.Millisecond), len(words), err)
				} else {
					ok.Add(1)
				}
				if interval > 0 {
					select {
					case <-ctx.Done():
					case <-time.After(interval):
					}
				}
			}
		})
	}
	if report > 0 {
		// Throughput over time: "window end_ms=<unix ms> ok=<calls>".
		stop := make(chan struct{})
		var reported sync.WaitGroup
		reported.Go(func() {
			t := time.NewTicker(report)
			defer t.Stop()
			last := int64(0)
			for {
				select {
				case <-stop:
					return
				case now := <-t.C:
					n := ok.Load()
					fmt.Printf("window end_ms=%d ok=%d\n", now.UnixMilli(), n-last)
					last = n
				}
			}
		})
		defer func() { close(stop); reported.Wait() }()
	}
	wg.Wait()
	fmt.Printf("summary: ok=%d failed=%d\n", ok.Load(), failed.Load())
	return nil
}

func greet(ctx context.Context, c *loom.Client[Greeting, Word], name string) ([]string, error) {
	var words []string
	for w, err := range c.Generate(ctx, Greeting{Name: name}) {
		if err != nil {
			return words, err
		}
		words = append(words, w.Text)
	}
	return words, nil
}
