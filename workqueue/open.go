package workqueue

import (
	"context"
	"fmt"
	"time"

	"github.com/loomrt/loom"
)

// runtimeShutdownWait bounds the wait for asynchronous enqueues when the
// runtime shuts a queue down: within the runtime's wait for its tasks.
const runtimeShutdownWait = 3 * time.Second

// Open opens the queue cfg names on rt's NATS connection: the common way
// onto a queue in a Loom program. It is New, with every setting cfg
// leaves zero taken from rt's loaded configuration (the queue.* keys, not
// the built-in defaults) and rt's logger and metrics; it traces with rt's
// tracer (New's queue with the global TracerProvider). The smallest call
// is
//
//	q, err := workqueue.Open[Job](ctx, rt, workqueue.Config{Name: "prefill_queue"})
//
// ctx bounds the opening (connecting to NATS, creating or updating the
// streams). The queue lives until its Shutdown or Close, or the runtime's
// shutdown, which shuts it down (waiting up to 3 seconds for asynchronous
// enqueues) before the connection closes. Consumers started
// with Consume are the caller's to shut down; Run in rt.Go stops with the
// runtime.
func Open[T any](ctx context.Context, rt *loom.Runtime, cfg Config) (*Queue[T], error) {
	nc, err := rt.NATS(ctx)
	if err != nil {
		return nil, fmt.Errorf("workqueue: queue %s needs NATS with JetStream (nats.url, NATS_SERVER): %w", cfg.Name, err)
	}
	cfg.Queue = cfg.Queue.Or(rt.Config().Queue)
	if cfg.Logger == nil {
		cfg.Logger = rt.Logger()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = rt.Metrics()
	}
	q, err := New[T](ctx, nc, cfg)
	if err != nil {
		return nil, err
	}
	q.tracer = rt.Tracer
	err = rt.Go("workqueue "+q.Name(), func(rctx context.Context) error {
		select {
		case <-q.pub.done:
			return nil
		case <-rctx.Done():
		}
		sctx, cancel := context.WithTimeout(context.Background(), runtimeShutdownWait)
		defer cancel()
		return q.Shutdown(sctx)
	})
	if err != nil {
		_ = q.Close()
		return nil, fmt.Errorf("workqueue: queue %s: the runtime is shut down: %w", q.Name(), err)
	}
	return q, nil
}
