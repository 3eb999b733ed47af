package events_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/events"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/internal/zmtp"
	"github.com/loomrt/loom/loomtest"
)

// restartSystem is a system whose runtimes use srv, with the events of
// transport kept in a stream on storage ("memory" loses it at a restart).
func restartSystem(t *testing.T, srv *testutil.RestartableNATS, transport, storage string) *system {
	s := &system{loomtest.New(t, loomtest.Options{})}
	s.Config.NATS.URL = srv.URL()
	s.Config.Events.Transport = transport
	s.Config.Events.JetStream.Storage = storage
	return s
}

func runtimeNATS(t *testing.T, rt *loom.Runtime) *nats.Conn {
	t.Helper()
	nc, err := rt.NATS(testutil.Timeout(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return nc
}

// eventsStream returns the durable events' stream, through rt's NATS
// connection.
func eventsStream(ctx context.Context, t *testing.T, rt *loom.Runtime) jetstream.Stream {
	t.Helper()
	js, err := jetstream.New(runtimeNATS(t, rt))
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, "LOOM_EVENTS")
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// reader reads a subscription in the background and keeps what it reads.
type reader struct {
	mu     sync.Mutex
	seqs   []uint64
	losses []*events.LossError
	err    error
	done   chan struct{}
}

func read[T any](t *testing.T, s *events.Subscription[T]) *reader {
	r := &reader{done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		defer close(r.done)
		for ev, err := range s.Events(ctx) {
			r.mu.Lock()
			var lost *events.LossError
			switch {
			case errors.As(err, &lost):
				r.losses = append(r.losses, lost)
			case err != nil:
				r.err = err
			default:
				r.seqs = append(r.seqs, ev.Sequence)
			}
			r.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-r.done
	})
	return r
}

// has reports whether sequence seq was read, and fails the test if the
// stream ended with an error.
func (r *reader) has(t *testing.T, seq uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		t.Fatalf("the subscription ended: %v", r.err)
	}
	for _, s := range r.seqs {
		if s == seq {
			return true
		}
	}
	return false
}

// readFrom reports whether an event of sequence first or later was read,
// and fails the test if the stream ended with an error.
func (r *reader) readFrom(t *testing.T, first uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		t.Fatalf("the subscription ended: %v", r.err)
	}
	for _, s := range r.seqs {
		if s >= first {
			return true
		}
	}
	return false
}

func (r *reader) lostTotal() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var n uint64
	for _, l := range r.losses {
		n += l.Lost
	}
	return n
}

// TestEventsCarryOnThroughAServerRestart: a publisher and a subscription
// live through a restart of the NATS server, on core NATS and on
// JetStream with the stream kept (file storage) or lost with the server
// (memory storage: as a stream an operator removed). Events published
// after the restart arrive, and what was published and never arrived is
// reported as lost, never silently missing: published = delivered + lost.
func TestEventsCarryOnThroughAServerRestart(t *testing.T) {
	for _, tc := range []struct{ name, transport, storage string }{
		{"core NATS", "nats", "file"},
		{"JetStream keeping its stream", "jetstream", "file"},
		{"JetStream losing its stream", "jetstream", "memory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := testutil.StartRestartableNATS(t)
			s := restartSystem(t, srv, tc.transport, tc.storage)
			pubRT, subRT := s.Runtime(), s.Runtime()
			scope := events.Scope{Namespace: "restart", Component: "w"}
			p := publisher[int](t, pubRT, scope, "kv_events")
			sub := subscribe[int](t, subRT, scope, "kv_events", events.WithLossErrors())
			r := read(t, sub)
			ctx := testutil.Timeout(t, 60*time.Second)

			const before = 20
			for i := range before {
				if err := p.Publish(ctx, i); err != nil {
					t.Fatal(err)
				}
			}
			testutil.Eventually(t, 10*time.Second, "events before the restart read", func() bool { return r.has(t, before-1) })

			pubNC, subNC := runtimeNATS(t, pubRT), runtimeNATS(t, subRT)
			subBefore := subNC.Stats().Reconnects
			srv.Restart(pubNC)
			testutil.Eventually(t, 10*time.Second, "the subscriber reconnected", func() bool {
				return subNC.Stats().Reconnects > subBefore && subNC.IsConnected()
			})

			// Publish until an event published after the restart arrives;
			// a Publish may fail, or its event be lost, while the transport
			// recovers. Any such event will do: asking for the one just
			// published would ask it to reach the subscriber before the
			// poll returns, which on a busy machine it rarely does.
			var published, failed uint64 = before, 0
			testutil.Eventually(t, 30*time.Second, "an event published after the restart read", func() bool {
				if err := p.Publish(ctx, int(published)); err != nil {
					failed++
				} else {
					published++
				}
				_ = p.Flush(ctx) // an earlier event's failure, if any, is a Publish that failed
				return r.readFrom(t, before)
			})
			// One more, so that a gap before the last is seen.
			if err := p.Publish(ctx, int(published)); err != nil {
				t.Fatalf("Publish after the transport recovered: %v", err)
			}
			published++
			testutil.Eventually(t, 10*time.Second, "every event delivered or reported lost", func() bool {
				st := sub.Stats()
				return st.Delivered+st.Lost == published && r.has(t, published-1)
			})
			st := sub.Stats()
			if st.Lost != r.lostTotal() {
				t.Fatalf("Stats %+v, but the stream reported %d lost", st, r.lostTotal())
			}
			t.Logf("published %d (%d Publish calls failed), stats %+v", published, failed, st)
		})
	}
}

// TestAJetStreamPublisherMakesItsLostStreamAgain: a publisher alone (no
// subscription to make the stream again) whose server restarted without
// the stream makes it again: after one failed event, its events are
// stored again, and the event that failed is reported (by Publish or
// Flush) rather than lost silently.
func TestAJetStreamPublisherMakesItsLostStreamAgain(t *testing.T) {
	srv := testutil.StartRestartableNATS(t)
	s := restartSystem(t, srv, "jetstream", "memory")
	rt := s.Runtime()
	p := publisher[int](t, rt, events.Scope{Namespace: "restart", Component: "w"}, "kv_events")
	ctx := testutil.Timeout(t, 30*time.Second)
	if err := p.Publish(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	nc := runtimeNATS(t, rt)
	srv.Restart(nc)

	var failures int
	testutil.Eventually(t, 10*time.Second, "an event stored after the restart", func() bool {
		err := p.Publish(ctx, 1)
		if err == nil {
			err = p.Flush(ctx)
		}
		if err != nil {
			failures++
			return false
		}
		return true
	})
	if failures == 0 {
		t.Fatal("no Publish or Flush reported the event the lost stream did not store")
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, "LOOM_EVENTS")
	if err != nil {
		t.Fatalf("the stream after the restart: %v", err)
	}
	if info, err := st.Info(ctx); err != nil || info.State.Msgs == 0 || info.Config.Storage != jetstream.MemoryStorage {
		t.Fatalf("the stream made again: %+v, %v; want the events.jetstream settings and the event stored", info, err)
	}
}

// TestADurableSubscriptionWhoseConsumerWasRemovedResumesAfterItsLastEvent:
// an operator removes the subscription's consumer (`nats consumer rm`).
// The subscription makes it again and resumes after the last event it
// received, in the stream it still has: nothing missed, nothing twice.
func TestADurableSubscriptionWhoseConsumerWasRemovedResumesAfterItsLastEvent(t *testing.T) {
	for _, durable := range []string{"", "router"} {
		t.Run("durable "+durable, func(t *testing.T) {
			s := newSystem(t, "jetstream")
			rt := s.Runtime()
			scope := events.Scope{Namespace: "rm", Component: "w"}
			p := publisher[int](t, rt, scope, "kv_events")
			var opts []events.Option
			if durable != "" {
				opts = append(opts, events.Durable(durable))
			}
			sub := subscribe[int](t, rt, scope, "kv_events", append(opts, events.WithLossErrors())...)
			r := read(t, sub)
			ctx := testutil.Timeout(t, 30*time.Second)
			for i := range 10 {
				if err := p.Publish(ctx, i); err != nil {
					t.Fatal(err)
				}
			}
			testutil.Eventually(t, 10*time.Second, "events before the removal read", func() bool { return r.has(t, 9) })

			st := eventsStream(ctx, t, rt)
			names := st.ConsumerNames(ctx)
			var removed int
			for name := range names.Name() {
				if err := st.DeleteConsumer(ctx, name); err != nil {
					t.Fatal(err)
				}
				removed++
			}
			if removed != 1 {
				t.Fatalf("removed %d consumers; want the subscription's one", removed)
			}
			for i := 10; i < 20; i++ {
				if err := p.Publish(ctx, i); err != nil {
					t.Fatal(err)
				}
			}
			testutil.Eventually(t, 20*time.Second, "events after the removal read", func() bool { return r.has(t, 19) })
			st2 := sub.Stats()
			if st2.Delivered != 20 || st2.Lost != 0 || st2.Duplicates != 0 {
				t.Fatalf("stats %+v; want the 20 events delivered once each, none lost", st2)
			}
		})
	}
}

// TestZMQPeersCarryOnThroughABrokerRestart: the ZeroMQ broker goes away
// and comes back on its endpoints. Publishers and subscribers dial it
// again, the subscriptions travel upstream again, events flow, and those
// published while it was away are counted as lost.
func TestZMQPeersCarryOnThroughABrokerRestart(t *testing.T) {
	pubEP := fmt.Sprintf("tcp://127.0.0.1:%d", testutil.FreePort(t))
	subEP := fmt.Sprintf("tcp://127.0.0.1:%d", testutil.FreePort(t))
	start := func() *events.Broker {
		b, err := events.StartBroker(events.BrokerConfig{PubEndpoint: pubEP, SubEndpoint: subEP})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	b := start()
	t.Cleanup(func() { b.Close() })
	s := &system{loomtest.New(t, loomtest.Options{})}
	s.Config.Events.Transport = "zmq"
	s.Config.Events.ZMQ.BrokerPub, s.Config.Events.ZMQ.BrokerSub = pubEP, subEP
	rt := s.Runtime()
	scope := events.Scope{Namespace: "broker", Component: "w"}
	p := publisher[int](t, rt, scope, "kv_events")
	sub := subscribe[int](t, rt, scope, "kv_events", events.WithLossErrors())
	r := read(t, sub)
	ctx := testutil.Timeout(t, 30*time.Second)
	waitSubscribed(t, p, 1)
	for i := range 5 {
		if err := p.Publish(ctx, i); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, 10*time.Second, "events before the restart read", func() bool { return r.has(t, 4) })

	b.Close()
	testutil.Eventually(t, 10*time.Second, "the publisher sees the broker gone", func() bool {
		n, _ := p.Subscribers()
		return n == 0
	})
	const away = 7
	for i := range away {
		if err := p.Publish(ctx, 5+i); err != nil {
			t.Fatal(err)
		}
	}
	b = start()
	// Once the publisher holds the subscription again, the broker had it
	// from the subscriber's new connection first: the path is whole, and
	// one event published now must arrive. (Publishing a new event at each
	// poll and looking for that very one would ask for it to have crossed
	// both hops before the poll returns, which on a busy machine it never
	// does.)
	waitSubscribed(t, p, 1)
	const published = 5 + away + 1
	if err := p.Publish(ctx, published-1); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 20*time.Second, "the event published after the restart read", func() bool { return r.has(t, published-1) })
	st := sub.Stats()
	if st.Delivered+st.Lost != published || st.Lost != away || st.Lost != r.lostTotal() {
		t.Fatalf("published %d, stats %+v, %d reported lost in the stream; want every event delivered or lost, and lost just the %d published while the broker was away",
			published, st, r.lostTotal(), away)
	}
}

// TestCloseAndShutdownEndWithTheServerDown: with the NATS server gone
// (and not back), closing subscriptions and publishers, and shutting down
// their runtime, return within a bounded time and leave no goroutine
// behind (TestMain checks for leaks).
func TestCloseAndShutdownEndWithTheServerDown(t *testing.T) {
	for _, transport := range []string{"nats", "jetstream"} {
		t.Run(transport, func(t *testing.T) {
			srv := testutil.StartRestartableNATS(t)
			s := restartSystem(t, srv, transport, "file")
			rt := s.Runtime()
			scope := events.Scope{Namespace: "down", Component: "w"}
			ctx := testutil.Timeout(t, 10*time.Second)
			closing := publisher[int](t, rt, scope, "kv_events")
			draining := publisher[int](t, rt, scope, "kv_events")
			sub := subscribe[int](t, rt, scope, "kv_events")
			r := read(t, sub)
			for i := range 3 {
				if err := closing.Publish(ctx, i); err != nil {
					t.Fatal(err)
				}
			}
			testutil.Eventually(t, 10*time.Second, "events read", func() bool { return r.has(t, 2) })
			nc := runtimeNATS(t, rt)
			srv.Stop()
			testutil.Eventually(t, 10*time.Second, "the client notices the server is gone", func() bool { return !nc.IsConnected() })
			// An event published while the server is down, for Shutdown
			// to wait for.
			_ = draining.Publish(ctx, 0)

			within := func(what string, d time.Duration, f func() error) {
				t.Helper()
				start := time.Now()
				err := f()
				if took := time.Since(start); took > d {
					t.Errorf("%s took %s with the server down; want at most %s (err %v)", what, took, d, err)
				}
			}
			within("Subscription.Close", 5*time.Second, sub.Close)
			within("Publisher.Close", time.Second, closing.Close)
			within("Publisher.Shutdown with a 1s context", 3*time.Second, func() error {
				sctx, cancel := context.WithTimeout(context.Background(), time.Second)
				defer cancel()
				return draining.Shutdown(sctx)
			})
			within("Runtime.Shutdown", 10*time.Second, func() error {
				sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				return rt.Shutdown(sctx)
			})
		})
	}
}

// TestADirectZMQSubscriberDialsAgainAPublisherThatCameBack: a direct
// publisher's socket goes away while its discovery record stays (its
// process lost the network, or restarted on the same port before its
// lease ran out). The subscription dials again until it is back, then
// receives, and counts what it missed meanwhile as lost.
func TestADirectZMQSubscriberDialsAgainAPublisherThatCameBack(t *testing.T) {
	s := newSystem(t, "zmq")
	rt := s.Runtime()
	scope := events.Scope{Namespace: "back", Component: "w"}
	sub := subscribe[int](t, rt, scope, "kv_events", events.WithLossErrors())
	r := read(t, sub)
	subject, err := events.Subject(scope, "kv_events")
	if err != nil {
		t.Fatal(err)
	}
	ep := fmt.Sprintf("tcp://127.0.0.1:%d", testutil.FreePort(t))
	listen := func() *zmtp.Socket {
		sock := zmtp.NewSocket(zmtp.Options{Type: zmtp.PUB})
		if _, err := sock.Listen(ep); err != nil {
			t.Fatal(err)
		}
		return sock
	}
	sock := listen()
	t.Cleanup(func() { sock.Close() })
	const id = 0x1234
	inst := discovery.Instance{Namespace: scope.Namespace, Component: events.ChannelComponent, Endpoint: "kv_events",
		ID: id, Transport: events.ZMQ, Address: ep, Codec: "msgpack", Metadata: map[string]string{"subject": subject}}
	if err := rt.Discovery().Register(t.Context(), inst); err != nil {
		t.Fatal(err)
	}
	send := func(seq uint64) {
		t.Helper()
		payload, err := msgpack.Marshal(int(seq))
		if err != nil {
			t.Fatal(err)
		}
		env := events.Envelope{PublisherID: id, Sequence: seq, PublishedAt: time.Now().UnixNano(), Topic: "kv_events", Payload: payload}
		var idb, seqb [8]byte
		binary.BigEndian.PutUint64(idb[:], id)
		binary.BigEndian.PutUint64(seqb[:], seq)
		frame := events.AppendFrame(nil, env.AppendMsgPack(nil))
		sock.Send([]byte(subject), zmtp.AppendMessage(nil, []byte(subject), idb[:], seqb[:], frame))
	}
	testutil.Eventually(t, 10*time.Second, "the subscription connected", func() bool { return sock.Subscribers([]byte(subject)) == 1 })
	send(0)
	testutil.Eventually(t, 10*time.Second, "the first event read", func() bool { return r.has(t, 0) })

	sock.Close()
	sock = listen()
	testutil.Eventually(t, 10*time.Second, "the subscription dialed again", func() bool { return sock.Subscribers([]byte(subject)) == 1 })
	send(5)
	testutil.Eventually(t, 10*time.Second, "the event after the return read", func() bool { return r.has(t, 5) })
	if st := sub.Stats(); st.Delivered != 2 || st.Lost != 4 || r.lostTotal() != 4 {
		t.Fatalf("stats %+v, %d reported lost in the stream; want 2 delivered and the 4 missed lost", st, r.lostTotal())
	}
}

// TestAHostileZMQPublisherCannotStopASubscription: a peer registered as
// a publisher sends messages of the wrong shape, frames of another
// version or claiming more than max_event_size, and one message past what
// a subscription reads at all. Each is counted as malformed, and the
// subscription goes on receiving the good events after them.
func TestAHostileZMQPublisherCannotStopASubscription(t *testing.T) {
	s := newSystem(t, "zmq")
	s.Config.Events.MaxEventSize = 4096
	rt := s.Runtime()
	scope := events.Scope{Namespace: "hostile", Component: "w"}
	sub := subscribe[int](t, rt, scope, "kv_events")
	r := read(t, sub)
	subject, err := events.Subject(scope, "kv_events")
	if err != nil {
		t.Fatal(err)
	}
	sock := zmtp.NewSocket(zmtp.Options{Type: zmtp.PUB})
	t.Cleanup(func() { sock.Close() })
	addr, err := sock.Listen("tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	const id = 0x4321
	inst := discovery.Instance{Namespace: scope.Namespace, Component: events.ChannelComponent, Endpoint: "kv_events",
		ID: id, Transport: events.ZMQ, Address: "tcp://" + addr.String(), Codec: "msgpack", Metadata: map[string]string{"subject": subject}}
	if err := rt.Discovery().Register(t.Context(), inst); err != nil {
		t.Fatal(err)
	}
	subj := []byte(subject)
	send := func(parts ...[]byte) { sock.Send(subj, zmtp.AppendMessage(nil, parts...)) }
	event := func(seq uint64) []byte {
		payload, err := msgpack.Marshal(int(seq))
		if err != nil {
			t.Fatal(err)
		}
		env := events.Envelope{PublisherID: id, Sequence: seq, PublishedAt: time.Now().UnixNano(), Topic: "kv_events", Payload: payload}
		return events.AppendFrame(nil, env.AppendMsgPack(nil))
	}
	testutil.Eventually(t, 10*time.Second, "the subscription connected", func() bool { return sock.Subscribers(subj) == 1 })
	send(subj, event(0))
	testutil.Eventually(t, 10*time.Second, "the first event read", func() bool { return r.has(t, 0) })

	bad := [][][]byte{
		{subj},                              // one part
		{subj, {1, 2}, {3}, event(1)},       // middle parts not 8 bytes
		{subj, {9, 0, 0, 0, 1, 0x90}},       // another frame version
		{subj, {1, 0xff, 0xff, 0xff, 0xff}}, // a frame claiming 4 GiB
		{subj, append([]byte{1, 0, 0, 0x20, 0}, make([]byte, 100)...)}, // claiming more than max_event_size
		{subj, events.AppendFrame(nil, []byte("not an envelope"))},
	}
	for _, m := range bad {
		send(m...)
	}
	send(subj, event(1))
	testutil.Eventually(t, 10*time.Second, "the good event after the bad ones read", func() bool { return r.has(t, 1) })
	if st := sub.Stats(); st.Malformed != uint64(len(bad)) || st.Delivered != 2 || st.Lost != 0 {
		t.Fatalf("stats %+v; want %d malformed, 2 delivered, none lost", st, len(bad))
	}

	// An event past what the subscription reads at all (max_event_size
	// and room for the parts) costs the connection, not the
	// subscription: it dials again, and the event is counted as lost once
	// the next one arrives.
	payload, err := msgpack.Marshal(make([]byte, 64<<10))
	if err != nil {
		t.Fatal(err)
	}
	huge := events.Envelope{PublisherID: id, Sequence: 2, PublishedAt: time.Now().UnixNano(), Topic: "kv_events", Payload: payload}
	send(subj, events.AppendFrame(nil, huge.AppendMsgPack(nil)))
	testutil.Eventually(t, 10*time.Second, "an event after the oversized one read", func() bool {
		send(subj, event(3))
		return r.has(t, 3)
	})
	if st := sub.Stats(); st.Malformed != uint64(len(bad)) || st.Delivered != 3 || st.Lost != 1 {
		t.Fatalf("stats %+v; want the oversized event counted as lost", st)
	}
}

// TestASubscriptionWhoseConsumerWentBeforeItsFirstEventMissesNothing: the
// consumer of a subscription that starts with new events (the default)
// goes away before the subscription received anything (an operator
// removed it, or the server removed the ephemeral consumer of a
// subscriber cut off for longer than a minute). Made again, it starts
// where the first one did, not at the events published from then on:
// those published in between are delivered, not silently skipped.
func TestASubscriptionWhoseConsumerWentBeforeItsFirstEventMissesNothing(t *testing.T) {
	for _, earlier := range []bool{false, true} {
		t.Run(fmt.Sprintf("an event stored before the subscription: %v", earlier), func(t *testing.T) {
			s := newSystem(t, "jetstream")
			rt := s.Runtime()
			scope := events.Scope{Namespace: "first", Component: "w"}
			p := publisher[int](t, rt, scope, "kv_events")
			ctx := testutil.Timeout(t, 30*time.Second)
			if earlier {
				if err := p.Publish(ctx, -1); err != nil { // not for the subscription
					t.Fatal(err)
				}
				if err := p.Flush(ctx); err != nil {
					t.Fatal(err)
				}
			}
			sub := subscribe[int](t, rt, scope, "kv_events")
			st := eventsStream(ctx, t, rt)
			for name := range st.ConsumerNames(ctx).Name() {
				if err := st.DeleteConsumer(ctx, name); err != nil {
					t.Fatal(err)
				}
			}
			for i := range 5 {
				if err := p.Publish(ctx, i); err != nil {
					t.Fatal(err)
				}
			}
			if err := p.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			evs := collect(t, sub, 5, 20*time.Second)
			for i, ev := range evs {
				if ev.Value != i {
					t.Fatalf("event %d is %d; want the events published after Subscribe, in order", i, ev.Value)
				}
			}
		})
	}
}

// TestLossesAreLoggedAtMostOnceInTenSeconds holds docs/events.md's "a
// warning is logged at most every 10 s while losses continue": a burst
// of gaps logs one warning, which names the subscription and the counts.
func TestLossesAreLoggedAtMostOnceInTenSeconds(t *testing.T) {
	s := newSystem(t, "nats")
	var logs testutil.SyncBuffer
	rt := s.Runtime(loom.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	scope := events.Scope{Namespace: "logged", Component: "w"}
	sub := subscribe[int](t, rt, scope, "kv_events")
	nc, err := nats.Connect(s.NATS.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	subject, _ := events.Subject(scope, "kv_events")
	for seq := uint64(0); seq <= 8; seq += 2 { // four gaps
		env := events.Envelope{PublisherID: 5, Sequence: seq, Topic: "kv_events", Payload: []byte{0}}
		if err := nc.Publish(subject, env.AppendMsgPack(nil)); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, 10*time.Second, "the four gaps counted", func() bool { return sub.Stats().Lost == 4 })
	out := logs.String()
	if n := strings.Count(out, "subscription losing events"); n != 1 {
		t.Fatalf("%d loss warnings for a burst of 4 gaps; want 1:\n%s", n, out)
	}
	if !strings.Contains(out, "subscription="+subject) || !strings.Contains(out, "level=WARN") {
		t.Fatalf("the warning does not name the subscription at warning level:\n%s", out)
	}
}

// TestAnEphemeralConsumerGoesAtCloseAndADurableStays holds docs/events.md:
// a subscription's consumer is ephemeral (removed at Close, and set to
// expire a minute after its process died), unless named with Durable,
// which outlives the subscription.
func TestAnEphemeralConsumerGoesAtCloseAndADurableStays(t *testing.T) {
	s := newSystem(t, "jetstream")
	rt := s.Runtime()
	ctx := testutil.Timeout(t, 20*time.Second)
	scope := events.Scope{Namespace: "eph", Component: "w"}
	ephemeral, err := events.Subscribe[int](ctx, rt, scope, "kv_events")
	if err != nil {
		t.Fatal(err)
	}
	durable, err := events.Subscribe[int](ctx, rt, scope, "kv_events", events.Durable("keeper"))
	if err != nil {
		t.Fatal(err)
	}
	st := eventsStream(ctx, t, rt)
	consumers := func() map[string]jetstream.ConsumerConfig {
		out := map[string]jetstream.ConsumerConfig{}
		l := st.ListConsumers(ctx)
		for ci := range l.Info() {
			out[ci.Name] = ci.Config
		}
		if err := l.Err(); err != nil {
			t.Fatal(err)
		}
		return out
	}
	before := consumers()
	if len(before) != 2 {
		t.Fatalf("consumers %v; want the two subscriptions'", before)
	}
	for name, cc := range before {
		if name == "keeper" {
			if cc.InactiveThreshold != 0 {
				t.Errorf("the durable consumer expires after %s; want never", cc.InactiveThreshold)
			}
		} else if cc.InactiveThreshold != time.Minute {
			t.Errorf("ephemeral consumer %s expires after %s; want a minute", name, cc.InactiveThreshold)
		}
	}
	if err := ephemeral.Close(); err != nil {
		t.Fatal(err)
	}
	if err := durable.Close(); err != nil {
		t.Fatal(err)
	}
	after := consumers()
	if _, ok := after["keeper"]; len(after) != 1 || !ok {
		t.Fatalf("consumers after Close %v; want only the durable one", after)
	}
}

// TestEventsTheLostStreamHeldAreReportedLost: a subscription that had not
// read what the stream held when the server restarted without it counts
// those events as lost, and reports them in its stream, once their
// publisher's next event arrives (for a publisher it had heard from: as
// everywhere, the first event heard from a publisher sets its baseline).
func TestEventsTheLostStreamHeldAreReportedLost(t *testing.T) {
	srv := testutil.StartRestartableNATS(t)
	s := restartSystem(t, srv, "jetstream", "memory")
	pubRT, subRT := s.Runtime(), s.Runtime()
	scope := events.Scope{Namespace: "held", Component: "w"}
	p := publisher[int](t, pubRT, scope, "kv_events")
	// A small buffer: at most 4 events are fetched ahead of the reader.
	sub := subscribe[int](t, subRT, scope, "kv_events", events.WithLossErrors(), events.WithBuffer(4, ""))
	ctx := testutil.Timeout(t, 60*time.Second)
	if err := p.Publish(ctx, 0); err != nil {
		t.Fatal(err)
	}
	collect(t, sub, 1, 10*time.Second) // the publisher is heard from
	const held = 20                    // then published and not read
	for i := 1; i <= held; i++ {
		if err := p.Publish(ctx, i); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	subNC := runtimeNATS(t, subRT)
	subBefore := subNC.Stats().Reconnects
	srv.Restart(runtimeNATS(t, pubRT))
	testutil.Eventually(t, 10*time.Second, "the subscriber reconnected", func() bool {
		return subNC.Stats().Reconnects > subBefore && subNC.IsConnected()
	})
	// Publish until an event is stored again (the publisher makes the
	// stream again), then read until it arrives.
	testutil.Eventually(t, 30*time.Second, "an event stored after the restart", func() bool {
		return p.Publish(ctx, held+1) == nil && p.Flush(ctx) == nil
	})
	published := p.Stats().Published
	r := read(t, sub)
	testutil.Eventually(t, 30*time.Second, "the event stored after the restart read", func() bool { return r.has(t, published-1) })
	st := sub.Stats()
	if st.Delivered+st.Lost != published || st.Lost < held-4 || r.lostTotal() != st.Lost {
		t.Fatalf("published %d, stats %+v, %d reported in the stream; want every event delivered or lost, at least the %d the stream held unfetched among the lost",
			published, st, r.lostTotal(), held-4)
	}
}
