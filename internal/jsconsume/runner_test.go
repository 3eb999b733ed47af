package jsconsume

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/metrics"
)

// Once Shutdown has begun, the pull loop hands no message to a worker,
// even one that is free: the message may be one a cancelled handler has
// just handed back, and Next can return it after Shutdown because its
// select picks at random.
func TestDispatchRefusesOnceShutdownBegan(t *testing.T) {
	// Room for every message: a send is always ready, as with a free
	// worker.
	r := &Runner{work: make(chan jetstream.Msg, 1000)}
	r.pullCtx, r.stopPull = context.WithCancel(context.Background())
	r.stopPull()
	for i := range cap(r.work) {
		if r.dispatch(nil) {
			t.Fatalf("dispatch %d after Shutdown handed the message to a worker", i)
		}
	}
	if n := len(r.work); n != 0 {
		t.Fatalf("workers got %d messages after Shutdown", n)
	}
}

// A message that reaches a worker after Close is handed back at once
// (redelivered long before AckWait) without starting its handler.
func TestWorkerHandsBackWhatArrivesAfterClose(t *testing.T) {
	ns, err := embedded.StartNATS(embedded.NATSOptions{JetStream: true})
	if err != nil {
		t.Fatalf("StartNATS: %v", err)
	}
	defer ns.Shutdown()
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "jobs", Subjects: []string{"jobs"}, Storage: jetstream.MemoryStorage}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "jobs", []byte("1")); err != nil {
		t.Fatal(err)
	}
	cons, err := js.CreateConsumer(ctx, "jobs", jetstream.ConsumerConfig{
		Durable: "workers", AckPolicy: jetstream.AckExplicitPolicy, AckWait: time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	fetch := func() jetstream.Msg {
		t.Helper()
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for msg := range batch.Messages() {
			return msg
		}
		t.Fatalf("no message within 10s (AckWait is a minute): %v", batch.Error())
		return nil
	}
	msg := fetch()

	var handled atomic.Int64
	r := &Runner{
		cfg: Config{Handler: func(context.Context, *Delivery) error { handled.Add(1); return nil }},
		s: &Settler{Queue: "jobs", Group: "workers", JS: js, Policy: Policy{MaxDeliver: 5, AckWait: time.Minute},
			Metrics: metrics.NopQueue(), Log: slog.New(slog.DiscardHandler)},
		work: make(chan jetstream.Msg, 1),
	}
	r.baseCtx, r.kill = context.WithCancel(context.Background())
	r.kill() // Close
	r.work <- msg
	close(r.work)
	r.worker(nil, &slot{})

	if n := handled.Load(); n != 0 {
		t.Fatalf("the handler ran %d times after Close", n)
	}
	again := fetch()
	meta, err := again.Metadata()
	if err != nil {
		t.Fatal(err)
	}
	if meta.Sequence.Stream != 1 || meta.NumDelivered != 2 {
		t.Fatalf("got message %d, delivery %d; want message 1 handed back (delivery 2)", meta.Sequence.Stream, meta.NumDelivered)
	}
	_ = again.Ack()
}
