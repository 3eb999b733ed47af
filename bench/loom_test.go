package bench

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/discovery/memory"
)

// Loom endpoints. Requests and responses are []byte, which MessagePack
// carries as bin: the cheapest encoding Loom has, and the same bytes the
// other peers carry.
const (
	loomUnary  = "bench/echo/unary"
	loomStream = "bench/echo/stream"
	// loomStreamReused is served WithReusedItems: its handler refills one
	// item, as rawtcp's server does.
	loomStreamReused = "bench/echo/streamreused"
	loomIdle         = "bench/echo/idle"
)

// loomPeer is a serving runtime and a calling runtime in one process that
// find each other through one memory discovery store and talk over TCP:
// the local fast path is off.
type loomPeer struct {
	srv, cli     *loom.Runtime
	idleCli      *loom.Runtime // the idle streams' caller: stall detection off
	discs        []discovery.Discovery
	unary        *loom.Client[[]byte, []byte]
	stream       *loom.Client[[]byte, []byte]
	streamReused *loom.Client[[]byte, []byte]
	idle         *loom.Client[[]byte, []byte]
	idleEntered  atomic.Int64
	idleReleased atomic.Pointer[chan struct{}]
}

func newLoomPeer(tb testing.TB) *loomPeer {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg := config.Default()
	cfg.Client.LocalFastPath = false
	// BenchmarkIdleStreams opens 10,000 streams through one connection,
	// more than a connection's default share of the server's slots.
	cfg.RequestPlane.MaxStreamsPerConn = -1
	store := memory.NewStore()
	log := slog.New(slog.DiscardHandler)
	lp := &loomPeer{}
	newRuntime := func(cfg config.Config) *loom.Runtime {
		d := store.Connect()
		lp.discs = append(lp.discs, d)
		rt, err := loom.NewRuntime(ctx, loom.WithConfig(cfg), loom.WithDiscovery(d), loom.WithLogger(log))
		if err != nil {
			lp.close()
			tb.Fatalf("loom: %v", err)
		}
		return rt
	}
	lp.srv = newRuntime(cfg)
	lp.cli = newRuntime(cfg)
	// BenchmarkIdleStreams' 10,000 streams all wait for a first response:
	// a PING answered late by a loaded process would have stall detection
	// fail them all. Their caller is a runtime of its own without it.
	idleCfg := cfg
	idleCfg.RequestPlane.StallTimeout = -1
	lp.idleCli = newRuntime(idleCfg)
	fail := func(err error) {
		lp.close()
		tb.Fatalf("loom: %v", err)
	}

	echo := loom.EngineFunc[[]byte, []byte](func(ctx context.Context, req []byte) iter.Seq2[[]byte, error] {
		return func(yield func([]byte, error) bool) { yield(req, nil) }
	})
	// A fresh item per yield, as a handler that hands its items over would
	// send them (and as the gRPC handler must).
	stream := loom.EngineFunc[[]byte, []byte](func(ctx context.Context, req []byte) iter.Seq2[[]byte, error] {
		return func(yield func([]byte, error) bool) {
			for i := range seqOf(req) {
				if !yield(fill(make([]byte, 0, msgSize), i), nil) {
					return
				}
			}
		}
	})
	streamReused := loom.EngineFunc[[]byte, []byte](func(ctx context.Context, req []byte) iter.Seq2[[]byte, error] {
		return func(yield func([]byte, error) bool) {
			item := make([]byte, 0, msgSize)
			for i := range seqOf(req) {
				item = fill(item, i)
				if !yield(item, nil) {
					return
				}
			}
		}
	})
	idle := loom.EngineFunc[[]byte, []byte](func(ctx context.Context, req []byte) iter.Seq2[[]byte, error] {
		return func(yield func([]byte, error) bool) {
			release := *lp.idleReleased.Load()
			lp.idleEntered.Add(1)
			select {
			case <-release:
				yield(req, nil)
			case <-ctx.Done():
				yield(nil, ctx.Err())
			}
		}
	})
	released := make(chan struct{})
	lp.idleReleased.Store(&released)
	for path, eng := range map[string]loom.Engine[[]byte, []byte]{loomUnary: echo, loomStream: stream, loomIdle: idle} {
		ep, err := lp.srv.Endpoint(path)
		if err != nil {
			fail(err)
		}
		if err := loom.Serve(ctx, ep, eng); err != nil {
			fail(err)
		}
	}
	ep, err := lp.srv.Endpoint(loomStreamReused)
	if err != nil {
		fail(err)
	}
	if err := loom.Serve(ctx, ep, loom.Engine[[]byte, []byte](streamReused), loom.WithReusedItems()); err != nil {
		fail(err)
	}
	client := func(rt *loom.Runtime, path string, opts ...loom.ClientOption) *loom.Client[[]byte, []byte] {
		ep, err := rt.Endpoint(path)
		if err != nil {
			fail(err)
		}
		c, err := loom.NewClient[[]byte, []byte](ctx, ep, opts...)
		if err != nil {
			fail(err)
		}
		if err := c.WaitForInstances(ctx, 1); err != nil {
			fail(err)
		}
		if c.Instances()[0].Transport != loom.TransportTCP {
			fail(fmt.Errorf("%s is served on %q, want tcp", path, c.Instances()[0].Transport))
		}
		return c
	}
	// The stream's items are checked and dropped, as rawtcp's are read into
	// one reused buffer: borrowed, not copied.
	lp.unary, lp.stream, lp.idle = client(lp.cli, loomUnary), client(lp.cli, loomStream, loom.WithBorrowedResponses()), client(lp.idleCli, loomIdle)
	lp.streamReused = client(lp.cli, loomStreamReused, loom.WithBorrowedResponses())
	return lp
}

func (lp *loomPeer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, rt := range []*loom.Runtime{lp.idleCli, lp.cli, lp.srv} {
		if rt != nil {
			_ = rt.Shutdown(ctx)
		}
	}
	for _, d := range lp.discs {
		_ = d.Close()
	}
}

func startLoom(tb testing.TB) *peer { return loomPeerOf(newLoomPeer(tb), false) }

// startLoomReused streams from the handler that refills one item.
func startLoomReused(tb testing.TB) *peer { return loomPeerOf(newLoomPeer(tb), true) }

func loomPeerOf(lp *loomPeer, reused bool) *peer {
	stream := lp.stream
	if reused {
		stream = lp.streamReused
	}
	return &peer{
		unary: func(ctx context.Context, req, _ []byte) ([]byte, error) {
			return lp.unary.Call(ctx, req)
		},
		stream: func(ctx context.Context, req []byte, item func([]byte) error) error {
			for it, err := range stream.Generate(ctx, req) {
				if err != nil {
					return err
				}
				if err := item(it); err != nil {
					return err
				}
			}
			return nil
		},
		close: lp.close,
	}
}

// openIdle opens n calls to the idle endpoint, each in its own goroutine,
// and returns once every handler is running. release lets them finish;
// wait waits for them and checks each got its one response.
func (lp *loomPeer) openIdle(ctx context.Context, n int) (release func(), wait func() error) {
	ch := make(chan struct{})
	lp.idleReleased.Store(&ch)
	lp.idleEntered.Store(0)
	errs := make(chan error, n)
	req := fill(nil, 7)
	for range n {
		go func() {
			got := 0
			for item, err := range lp.idle.Generate(ctx, req) {
				if err != nil {
					errs <- err
					return
				}
				if err := check(item, 7); err != nil {
					errs <- err
					return
				}
				got++
			}
			if got != 1 {
				errs <- fmt.Errorf("loom: idle stream got %d responses, want 1", got)
				return
			}
			errs <- nil
		}()
	}
	for lp.idleEntered.Load() < int64(n) && ctx.Err() == nil {
		time.Sleep(time.Millisecond)
	}
	return func() { close(ch) }, func() error {
		var all []error
		for range n {
			all = append(all, <-errs)
		}
		return errors.Join(all...)
	}
}
