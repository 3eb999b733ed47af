package workqueue_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/workqueue"
)

// enqueueUnderWay stops the server and starts an Enqueue, which retries
// until the server is back; it returns once the job waits in the
// connection's reconnect buffer, and the channel of Enqueue's result.
func enqueueUnderWay(t *testing.T, srv *testutil.RestartableNATS, nc *nats.Conn, q *workqueue.Queue[job]) <-chan error {
	t.Helper()
	srv.Stop()
	testutil.Eventually(t, 10*time.Second, "the connection lost", func() bool { return !nc.IsConnected() })
	done := make(chan error, 1)
	go func() { done <- q.Enqueue(ctxFor(t, 30*time.Second), job{ID: 1}) }()
	testutil.Eventually(t, 10*time.Second, "the enqueue under way", func() bool { n, err := nc.Buffered(); return err == nil && n > 0 })
	return done
}

// TestCloseStopsAnEnqueueUnderWay: Close stops an Enqueue still retrying
// (here, through a server restart) with ErrClosed, as it fails every
// enqueue made after it; such an Enqueue once went on retrying until its
// own deadline, on a queue its owner had closed.
func TestCloseStopsAnEnqueueUnderWay(t *testing.T) {
	srv := testutil.StartRestartableNATS(t)
	nc := connect(t, srv.URL())
	cfg := testConfig(t)
	cfg.Storage = "file"
	q := newQueue[job](t, nc, cfg)
	done := enqueueUnderWay(t, srv, nc, q)
	if err := q.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, workqueue.ErrClosed) {
			t.Fatalf("Enqueue under way at Close: %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Enqueue under way at Close still runs 5s later")
	}
}

// TestShutdownWaitsForAnEnqueueUnderWay: Shutdown returns only after an
// Enqueue under way has its answer (here, once the server is back); it
// once returned at once, and a runtime then closed the connection under
// the Enqueue.
func TestShutdownWaitsForAnEnqueueUnderWay(t *testing.T) {
	srv := testutil.StartRestartableNATS(t)
	nc := connect(t, srv.URL())
	cfg := testConfig(t)
	cfg.Storage = "file"
	q := newQueue[job](t, nc, cfg)
	done := enqueueUnderWay(t, srv, nc, q)
	var called, serverBack atomic.Bool
	shut := make(chan bool, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		called.Store(true)
		if err := q.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		shut <- serverBack.Load()
	}()
	testutil.Eventually(t, 10*time.Second, "Shutdown called", called.Load)
	serverBack.Store(true)
	srv.Start()
	if back := <-shut; !back {
		t.Fatal("Shutdown returned while an Enqueue under way still awaited the server")
	}
	if err := <-done; err != nil {
		t.Fatalf("Enqueue under way at Shutdown: %v", err)
	}
	info, err := q.Info(ctxFor(t, 10*time.Second))
	if err != nil || info.Jobs != 1 {
		t.Fatalf("queue holds %+v (%v), want the job", info, err)
	}
	if err := q.Enqueue(ctxFor(t, 10*time.Second), job{ID: 2}); !errors.Is(err, workqueue.ErrClosed) {
		t.Fatalf("Enqueue after Shutdown: %v, want ErrClosed", err)
	}
}
