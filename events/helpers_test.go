package events_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/discovery/memory"
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/events"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// transports are the ways events travel; semantic tests run on each.
// "zmq-broker" is ZeroMQ through a Broker.
var transports = []string{"nats", "zmq", "zmq-broker", "jetstream"}

// system is a set of runtimes in this process sharing a NATS server and a
// private discovery store, standing in for several processes.
type system struct {
	t     *testing.T
	store *memory.Store
	cfg   config.Config
	nats  *embedded.NATS
}

func newSystem(t *testing.T, transport string) *system {
	t.Helper()
	ns, err := embedded.StartNATS(embedded.NATSOptions{JetStream: transport == "jetstream"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	cfg := config.Default()
	cfg.NATS.URL = ns.ClientURL()
	cfg.Events.Transport = transport
	cfg.Events.JetStream.Storage = "memory"
	if transport == "zmq-broker" {
		b, err := events.StartBroker(events.BrokerConfig{PubEndpoint: "tcp://127.0.0.1:0", SubEndpoint: "tcp://127.0.0.1:0"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		cfg.Events.Transport = "zmq"
		cfg.Events.ZMQ.BrokerPub, cfg.Events.ZMQ.BrokerSub = b.PubEndpoint(), b.SubEndpoint()
	}
	return &system{t: t, store: memory.NewStore(), cfg: cfg, nats: ns}
}

// runtime starts a runtime in the system, shut down when the test ends.
func (s *system) runtime(opts ...loom.Option) *loom.Runtime {
	s.t.Helper()
	d := s.store.Connect()
	opts = append([]loom.Option{loom.WithConfig(s.cfg), loom.WithDiscovery(d), loom.WithLogger(quiet)}, opts...)
	rt, err := loom.NewRuntime(context.Background(), opts...)
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = rt.Shutdown(ctx)
		_ = d.Close()
	})
	return rt
}

func timeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// publisher makes a publisher, shut down when the test ends.
func publisher[T any](t *testing.T, rt *loom.Runtime, scope events.Scope, topic string, opts ...events.Option) *events.Publisher[T] {
	t.Helper()
	p, err := events.NewPublisher[T](timeout(t, 5*time.Second), rt, scope, topic, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Shutdown(context.Background()) })
	return p
}

func subscribe[T any](t *testing.T, rt *loom.Runtime, scope events.Scope, topic string, opts ...events.Option) *events.Subscription[T] {
	t.Helper()
	s, err := events.Subscribe[T](t.Context(), rt, scope, topic, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// waitSubscribed waits until a ZeroMQ publisher has n subscribers; on the
// other transports a subscription is in place when Subscribe returns.
func waitSubscribed[T any](t *testing.T, p *events.Publisher[T], n int) {
	t.Helper()
	if p.Transport() != events.ZMQ {
		return
	}
	if err := p.WaitForSubscribers(timeout(t, 5*time.Second), n); err != nil {
		t.Fatal(err)
	}
}

// collect reads n events (or fails after d).
func collect[T any](t *testing.T, s *events.Subscription[T], n int, d time.Duration) []events.Event[T] {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var out []events.Event[T]
	for ev, err := range s.Events(ctx) {
		if err != nil {
			t.Fatalf("after %d events: %v", len(out), err)
		}
		out = append(out, ev)
		if len(out) == n {
			return out
		}
	}
	t.Fatalf("got %d of %d events within %s; stats %+v", len(out), n, d, s.Stats())
	return nil
}

// kv is an event type for the tests, shaped like Dynamo's kv_events.
type kv struct {
	Hashes []uint64 `json:"hashes"`
	Note   string   `json:"note"`
}
