package workqueue_test

import (
	"context"
	"errors"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/workqueue"
)

func TestOpenTakesTheRuntimesConnectionSettingsAndLifetime(t *testing.T) {
	ns, nc := startNATS(t, nil)
	cfg := config.Default()
	cfg.NATS.URL = ns.ClientURL()
	cfg.Queue.Storage = "memory"
	cfg.Queue.MaxDeliver = 7
	cfg.Queue.AckWait = 3 * time.Second
	rt, err := loom.NewRuntime(context.Background(), loom.WithConfig(cfg), loom.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.Shutdown(context.Background()) })
	ctx := ctxFor(t, 20*time.Second)
	q, err := workqueue.Open[job](ctx, rt, workqueue.Config{Name: "opened", Queue: config.Queue{AckWait: 2 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	got := q.Config()
	if got.MaxDeliver != 7 || got.Storage != "memory" || got.AckWait != 2*time.Second || got.Logger != rt.Logger() || got.Metrics != rt.Metrics() {
		t.Fatalf("config: max_deliver %d storage %s ack_wait %s, logger and metrics the runtime's: %v %v; want 7 memory 2s true true",
			got.MaxDeliver, got.Storage, got.AckWait, got.Logger == rt.Logger(), got.Metrics == rt.Metrics())
	}
	handled := make(chan int, 1)
	c, err := q.Consume(workqueue.HandlerFunc[job](func(ctx context.Context, j *workqueue.Job[job]) error {
		handled <- j.Value.ID
		return nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Enqueue(ctx, job{ID: 1}); err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-handled:
		if id != 1 {
			t.Fatalf("handled %d, want 1", id)
		}
	case <-ctx.Done():
		t.Fatal("the job was not handled")
	}
	shutdown(t, c)
	testutil.Eventually(t, 10*time.Second, "the handled job acknowledged", func() bool {
		info, err := q.Info(ctx)
		return err == nil && info.Jobs == 0
	})
	// The runtime's shutdown shuts the queue down, after its asynchronous
	// enqueues are stored.
	const n = 50
	for i := range n {
		if _, err := q.EnqueueAsync(ctx, job{ID: i}); err != nil {
			t.Fatal(err)
		}
	}
	if err := rt.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := q.Enqueue(ctx, job{ID: -1}); !errors.Is(err, workqueue.ErrClosed) {
		t.Fatalf("Enqueue after the runtime's shutdown: %v, want ErrClosed", err)
	}
	admin, err := workqueue.NewAdmin(nc)
	if err != nil {
		t.Fatal(err)
	}
	info, err := admin.Info(ctx, "opened")
	if err != nil || info.Jobs != n {
		t.Fatalf("after the runtime's shutdown the queue holds %d jobs (%v), want %d", info.Jobs, err, n)
	}
	if _, err := workqueue.Open[job](ctx, rt, workqueue.Config{Name: "late"}); err == nil {
		t.Fatal("Open on a runtime that was shut down succeeded")
	}
}

func TestOpenTracesWithTheRuntimesTracer(t *testing.T) {
	ns, _ := startNATS(t, nil)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	cfg := config.Default()
	cfg.NATS.URL = ns.ClientURL()
	cfg.Queue.Storage = "memory"
	rt, err := loom.NewRuntime(context.Background(), loom.WithConfig(cfg), loom.WithLogger(quiet), loom.WithTracerProvider(tp))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.Shutdown(context.Background()) })
	ctx := ctxFor(t, 20*time.Second)
	q, err := workqueue.Open[job](ctx, rt, workqueue.Config{Name: "traced_by_runtime"})
	if err != nil {
		t.Fatal(err)
	}
	handled := make(chan struct{}, 1)
	c, err := q.Consume(workqueue.HandlerFunc[job](func(ctx context.Context, j *workqueue.Job[job]) error {
		handled <- struct{}{}
		return nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer shutdown(t, c)
	if err := q.Enqueue(ctx, job{ID: 1}); err != nil {
		t.Fatal(err)
	}
	<-handled
	testutil.Eventually(t, 10*time.Second, "a send and a process span in the runtime's TracerProvider", func() bool {
		var send, process bool
		for _, s := range rec.Ended() {
			send = send || s.Name() == "send traced_by_runtime"
			process = process || s.Name() == "process traced_by_runtime"
		}
		return send && process
	})
}
