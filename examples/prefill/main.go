// Command prefill is the seeds' prefill-queue scenario (Dynamo's
// disaggregated serving): decode workers hand the prompts that need a
// remote prefill to a durable JetStream work queue, prefill_queue, and
// prefill workers take them one at a time. Unlike the seed's NATSQueue,
// which acknowledges a request as it takes it (so a worker that dies loses
// it), a prefill worker here acknowledges only once the prefill is done; a
// request taken by a worker that dies comes back after the ack wait.
//
//	go run ./examples/prefill                  # one process: embedded NATS, a decode worker, two prefill workers
//	go run ./cmd/loom up                       # or: a control plane in terminal 1, then with its NATS_SERVER=...
//	go run ./examples/prefill worker           #   prefill workers, as many terminals as you like
//	go run ./examples/prefill enqueue -n 20    #   a decode worker handing over 20 requests
//	go run ./cmd/loom queue info prefill_queue #   the queue's state
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/codec"
	_ "github.com/loomrt/loom/discovery/all" // every discovery backend, chosen by discovery.backend
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/workqueue"
)

// RemotePrefillRequest is what a decode worker asks a prefill worker to do,
// with the fields of Dynamo's RemotePrefillRequest; JSON, as the seed's
// msgspec.json, so Python workers can share the queue.
type RemotePrefillRequest struct {
	EngineID       string `json:"engine_id"`
	RequestID      string `json:"request_id"`
	PromptTokenIDs []int  `json:"prompt_token_ids"`
	BlockIDs       []int  `json:"block_ids"`
}

const queueName = "prefill_queue"

// openQueue opens (creating if needed) the prefill queue on rt's NATS.
func openQueue(ctx context.Context, rt *loom.Runtime, ackWait time.Duration) (*workqueue.Queue[RemotePrefillRequest], error) {
	cfg := workqueue.Config{Name: queueName, Codec: codec.JSON}
	cfg.AckWait = ackWait // 0: the runtime's queue.ack_wait
	return workqueue.Open[RemotePrefillRequest](ctx, rt, cfg)
}

func main() {
	mode := "demo"
	args := os.Args[1:]
	if len(args) > 0 {
		mode, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	n := fs.Int("n", 50, "requests to hand over (demo, enqueue)")
	workers := fs.Int("workers", 2, "prefill workers (demo)")
	_ = fs.Parse(args)
	switch mode {
	case "demo":
		demo(*n, *workers)
	case "worker":
		loom.Run(func(ctx context.Context, rt *loom.Runtime) error {
			q, err := openQueue(ctx, rt, 0)
			if err != nil {
				return err
			}
			defer q.Shutdown(context.Background())
			fmt.Println("prefill worker: waiting for requests on", queueName)
			return prefillWorker(ctx, q, "worker", nil, func(r RemotePrefillRequest, deliveries int) {
				fmt.Printf("prefill worker: %s done (%d tokens, delivery %d)\n", r.RequestID, len(r.PromptTokenIDs), deliveries)
			})
		})
	case "enqueue":
		loom.Run(func(ctx context.Context, rt *loom.Runtime) error {
			q, err := openQueue(ctx, rt, 0)
			if err != nil {
				return err
			}
			defer q.Shutdown(context.Background())
			if err := decodeWorker(ctx, q, *n); err != nil {
				return err
			}
			fmt.Printf("decode worker: handed %d prefill requests to %s\n", *n, queueName)
			return nil
		})
	default:
		fmt.Fprintln(os.Stderr, "usage: prefill [demo [-n 50] [-workers 2] | worker | enqueue [-n 50]]")
		os.Exit(2)
	}
}

// decodeWorker hands n prefill requests to the queue.
func decodeWorker(ctx context.Context, q *workqueue.Queue[RemotePrefillRequest], n int) error {
	reqs := make([]RemotePrefillRequest, n)
	for i := range reqs {
		tokens := make([]int, 16+i%48)
		for j := range tokens {
			tokens[j] = 1000 + j
		}
		reqs[i] = RemotePrefillRequest{EngineID: "decode-0", RequestID: fmt.Sprintf("req-%03d", i), PromptTokenIDs: tokens, BlockIDs: []int{i}}
	}
	// The request id is the idempotency key: a decode worker that retries
	// after a crash does not prefill twice.
	for _, r := range reqs {
		if err := q.Enqueue(ctx, r, workqueue.WithKey(r.RequestID)); err != nil {
			return err
		}
	}
	return nil
}

// prefillWorker takes requests one at a time, in the seed's
// dequeue_prefill_request shape, and acknowledges each once its prefill
// is done. crash, if set, is called before each ack: returning true
// simulates a worker dying with the request in hand.
func prefillWorker(ctx context.Context, q *workqueue.Queue[RemotePrefillRequest], name string, crash func() bool, done func(RemotePrefillRequest, int)) error {
	for {
		job, err := q.Dequeue(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		r := job.Value
		time.Sleep(time.Duration(len(r.PromptTokenIDs)) * 20 * time.Microsecond) // the prefill
		if crash != nil && crash() {
			fmt.Printf("%s: dropped %s without acknowledging it (a crash)\n", name, r.RequestID)
			continue
		}
		if err := job.Ack(ctx); err != nil {
			return err
		}
		if done != nil {
			done(r, job.Deliveries)
		}
	}
}

// demo runs the whole scenario in one process, with an embedded NATS
// server unless NATS_SERVER names one.
func demo(n, workers int) {
	if err := runDemo(n, workers); err != nil {
		fmt.Fprintln(os.Stderr, "prefill:", err)
		os.Exit(1)
	}
}

func runDemo(n, workers int) error {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	if os.Getenv("NATS_SERVER") == "" && os.Getenv("LOOM_NATS_URL") == "" {
		ns, err := embedded.StartNATS(embedded.NATSOptions{JetStream: true})
		if err != nil {
			return err
		}
		defer ns.Shutdown()
		os.Setenv("LOOM_NATS_URL", ns.ClientURL())
		fmt.Println("embedded NATS with JetStream at", ns.ClientURL())
	}
	rt, err := loom.NewRuntime(ctx)
	if err != nil {
		return err
	}
	defer rt.Shutdown(context.Background())
	return func() error {
		q, err := openQueue(ctx, rt, time.Second)
		if err != nil {
			return err
		}
		defer q.Shutdown(context.Background())
		if err := decodeWorker(ctx, q, n); err != nil {
			return err
		}
		fmt.Printf("decode worker: handed %d prefill requests to %s\n", n, queueName)

		var mu sync.Mutex
		prefilled := map[string]int{}
		var redelivered atomic.Int64
		all := make(chan struct{})
		wctx, stop := context.WithCancel(ctx)
		defer stop()
		var wg sync.WaitGroup
		var crashed atomic.Bool
		for w := range workers {
			name := fmt.Sprintf("prefill worker %d", w+1)
			var crash func() bool
			if w == 0 {
				crash = func() bool { return crashed.CompareAndSwap(false, true) } // once
			}
			wg.Go(func() {
				_ = prefillWorker(wctx, q, name, crash, func(r RemotePrefillRequest, deliveries int) {
					mu.Lock()
					defer mu.Unlock()
					prefilled[r.RequestID]++
					if deliveries > 1 {
						redelivered.Add(1)
						fmt.Printf("%s: %s came back (delivery %d) and is done\n", name, r.RequestID, deliveries)
					}
					if len(prefilled) == n {
						close(all)
					}
				})
			})
		}
		select {
		case <-all:
		case <-time.After(30 * time.Second):
			stop()
			wg.Wait()
			return errors.New("prefill: not every request was prefilled within 30s")
		case <-ctx.Done():
		}
		stop()
		wg.Wait()
		info, err := q.Info(context.Background())
		if err != nil {
			return err
		}
		fmt.Printf("prefilled %d of %d requests; %d redelivered after a worker dropped it; %d left in %s, %d dead letters\n",
			len(prefilled), n, redelivered.Load(), info.Jobs, queueName, info.DeadLetters)
		return nil
	}()
}
