package events_test

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/events"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/loomtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// transports are the ways events travel; semantic tests run on each.
// "zmq-broker" is ZeroMQ through a Broker.
var transports = []string{"nats", "zmq", "zmq-broker", "jetstream"}

// system is a set of runtimes in this process sharing a NATS server and a
// private discovery store, standing in for several processes.
type system struct{ *loomtest.System }

func newSystem(t *testing.T, transport string) *system {
	t.Helper()
	s := &system{loomtest.New(t, loomtest.Options{NATS: true, JetStream: transport == "jetstream"})}
	s.Config.Events.Transport = transport
	s.Config.Events.JetStream.Storage = "memory"
	if transport == "zmq-broker" {
		b, err := events.StartBroker(events.BrokerConfig{PubEndpoint: "tcp://127.0.0.1:0", SubEndpoint: "tcp://127.0.0.1:0"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		s.Config.Events.Transport = "zmq"
		s.Config.Events.ZMQ.BrokerPub, s.Config.Events.ZMQ.BrokerSub = b.PubEndpoint(), b.SubEndpoint()
	}
	return s
}

// publisher makes a publisher, shut down when the test ends.
func publisher[T any](t *testing.T, rt *loom.Runtime, scope events.Scope, topic string, opts ...events.Option) *events.Publisher[T] {
	t.Helper()
	p, err := events.NewPublisher[T](testutil.Timeout(t, 5*time.Second), rt, scope, topic, opts...)
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
	if err := p.WaitForSubscribers(testutil.Timeout(t, 5*time.Second), n); err != nil {
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
