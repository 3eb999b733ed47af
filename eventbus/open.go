package eventbus

import (
	"context"
	"fmt"
	"time"

	"github.com/loomrt/loom"
)

// runtimeShutdownWait bounds the drain when the runtime shuts a bus down:
// within the runtime's wait for its tasks.
const runtimeShutdownWait = 3 * time.Second

// Open returns a Bus on rt's NATS connection: the common way onto the
// EventBus in a Loom program. Every setting cfg leaves zero is rt's: the
// queue.* keys of its loaded configuration (not the built-in defaults),
// its NATS settings (for name servers other than its own), its logger and
// metrics, and it traces with rt's tracer (New's bus with the global
// TracerProvider), so the smallest call is
//
//	bus, err := eventbus.Open(ctx, rt, eventbus.Config{})
//
// The name server "" (and rt's nats.url) is rt's connection, which the bus
// never closes. ctx bounds the connecting. The bus lives until its
// Shutdown or Close, or the runtime's shutdown, which shuts it down
// (draining for up to 3 seconds) before the connection closes.
func Open(ctx context.Context, rt *loom.Runtime, cfg Config) (*Bus, error) {
	nc, err := rt.NATS(ctx)
	if err != nil {
		return nil, fmt.Errorf("eventbus: the bus needs NATS (nats.url, NATS_SERVER): %w", err)
	}
	rc := rt.Config()
	cfg.Queue = cfg.Queue.Or(rc.Queue)
	if cfg.NATS.URL == "" {
		cfg.NATS = rc.NATS
	}
	if cfg.Logger == nil {
		cfg.Logger = rt.Logger()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = rt.Metrics()
	}
	b, err := NewWithConn(nc, cfg)
	if err != nil {
		return nil, err
	}
	b.tracer = rt.Tracer
	err = rt.Go("eventbus", func(rctx context.Context) error {
		select {
		case <-b.done:
			return nil
		case <-rctx.Done():
		}
		sctx, cancel := context.WithTimeout(context.Background(), runtimeShutdownWait)
		defer cancel()
		return b.Shutdown(sctx)
	})
	if err != nil {
		_ = b.Close()
		return nil, fmt.Errorf("eventbus: the runtime is shut down: %w", err)
	}
	return b, nil
}
