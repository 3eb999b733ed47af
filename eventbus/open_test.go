package eventbus_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/eventbus"
	"github.com/loomrt/loom/internal/testutil"
)

func TestOpenTakesTheRuntimesConnectionSettingsAndLifetime(t *testing.T) {
	ns := startNATS(t, nil)
	cfg := config.Default()
	cfg.NATS.URL = ns.ClientURL()
	cfg.Queue.Storage = "memory"
	cfg.Queue.EventBusJetStream = true // the runtime's setting, not the default
	rt, err := loom.NewRuntime(context.Background(), loom.WithConfig(cfg), loom.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.Shutdown(context.Background()) })
	ctx := ctxFor(t, 20*time.Second)
	b, err := eventbus.Open(ctx, rt, eventbus.Config{})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	err = b.RegisterConsumer("", "reports", "renderer", eventbus.HandlerFunc(func(ctx context.Context, msg *eventbus.Message) error {
		got <- string(msg.Body)
		return nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	p, err := b.NewProducer("", "reports", "", 3)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Send(ctx, []byte("1")); err != nil {
		t.Fatal(err)
	}
	select {
	case body := <-got:
		if body != "1" {
			t.Fatalf("got %q, want 1", body)
		}
	case <-ctx.Done():
		t.Fatal("the message was not handled")
	}
	// It went through JetStream, as the runtime's configuration says.
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, eventbus.StreamName("reports"))
	if err != nil {
		t.Fatalf("the topic's stream: %v", err)
	}
	if info, err := st.Info(ctx); err != nil || info.State.Msgs != 1 || info.Config.Storage != jetstream.MemoryStorage {
		t.Fatalf("stream %+v (%v): want the one message, in memory storage", info, err)
	}
	// The runtime's shutdown shuts the bus down.
	if err := rt.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.RegisterConsumer("", "reports", "late", newCollector()); err == nil {
		t.Fatal("RegisterConsumer after the runtime's shutdown succeeded")
	}
	if err := b.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown after the runtime's: %v", err)
	}
}

func TestOpenTracesWithTheRuntimesTracer(t *testing.T) {
	ns := startNATS(t, nil)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	cfg := config.Default()
	cfg.NATS.URL = ns.ClientURL()
	rt, err := loom.NewRuntime(context.Background(), loom.WithConfig(cfg), loom.WithLogger(quiet), loom.WithTracerProvider(tp))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.Shutdown(context.Background()) })
	ctx := ctxFor(t, 20*time.Second)
	b, err := eventbus.Open(ctx, rt, eventbus.Config{})
	if err != nil {
		t.Fatal(err)
	}
	handled := make(chan struct{}, 1)
	err = b.RegisterConsumer("", "traced.topic", "g", eventbus.HandlerFunc(func(ctx context.Context, msg *eventbus.Message) error {
		handled <- struct{}{}
		return nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	p, err := b.NewProducer("", "traced.topic", "", 3)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Send(ctx, []byte("x")); err != nil {
		t.Fatal(err)
	}
	<-handled
	testutil.Eventually(t, 10*time.Second, "a send and a process span in the runtime's TracerProvider", func() bool {
		var send, process bool
		for _, s := range rec.Ended() {
			send = send || s.Name() == "send traced.topic"
			process = process || s.Name() == "process traced.topic"
		}
		return send && process
	})
}
