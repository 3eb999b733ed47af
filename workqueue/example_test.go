package workqueue_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/workqueue"
)

// PrefillRequest is a job: what a decode worker asks a prefill worker to
// compute.
type PrefillRequest struct {
	RequestID string `json:"request_id"`
	Tokens    []int  `json:"prompt_token_ids"`
}

// The seed's PrefillQueue in a Loom program: open it from the Runtime,
// enqueue, then dequeue and acknowledge once done.
func Example() {
	ns, _ := embedded.StartNATS(embedded.NATSOptions{JetStream: true})
	defer ns.Shutdown()
	cfg := config.Default()
	cfg.NATS.URL = ns.ClientURL()
	ctx := context.Background()
	rt, _ := loom.NewRuntime(ctx, loom.WithConfig(cfg), loom.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	defer rt.Shutdown(ctx)

	// The runtime's connection, queue.* settings, logger and metrics.
	q, err := workqueue.Open[PrefillRequest](ctx, rt, workqueue.Config{Name: "prefill_queue"})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer q.Shutdown(ctx)
	if err := q.Enqueue(ctx, PrefillRequest{RequestID: "req-1", Tokens: []int{101, 102, 103}}); err != nil {
		fmt.Println(err)
		return
	}

	dctx, cancel := context.WithTimeout(ctx, time.Second) // the seed's dequeue_timeout
	defer cancel()
	job, err := q.Dequeue(dctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(job.Value.RequestID, len(job.Value.Tokens), "tokens, delivery", job.Deliveries)
	if err := job.Ack(ctx); err != nil { // done: it leaves the queue
		fmt.Println(err)
	}
	// Output: req-1 3 tokens, delivery 1
}

// Consume runs a handler on every job, acknowledging after it succeeds.
// Without a Runtime (a tool, a test), New opens a queue on any NATS
// connection, with its settings given in full.
func ExampleQueue_Consume() {
	ns, _ := embedded.StartNATS(embedded.NATSOptions{JetStream: true})
	defer ns.Shutdown()
	nc, _ := nats.Connect(ns.ClientURL())
	defer nc.Close()
	ctx := context.Background()

	cfg := workqueue.DefaultConfig("thumbnails")
	cfg.Storage = "memory"
	q, err := workqueue.New[string](ctx, nc, cfg)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer q.Shutdown(ctx)
	if err := q.EnqueueBatch(ctx, []string{"a.png", "b.png", "c.png"}); err != nil {
		fmt.Println(err)
		return
	}
	done := make(chan string)
	c, err := q.Consume(workqueue.HandlerFunc[string](func(ctx context.Context, j *workqueue.Job[string]) error {
		done <- j.Value
		return nil // ack
	}), workqueue.WithConcurrency(1))
	if err != nil {
		fmt.Println(err)
		return
	}
	for range 3 {
		fmt.Println("resized", <-done)
	}
	_ = c.Shutdown(ctx)
	// Output:
	// resized a.png
	// resized b.png
	// resized c.png
}
