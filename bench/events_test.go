package bench

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/discovery/memory"
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/events"
)

// BenchmarkEvents measures the event plane: one publisher, one subscriber,
// 128-byte payloads, every peer on its own embedded nats-server on
// loopback (ZeroMQ goes publisher to subscriber directly).
//
// The publisher keeps at most evWindow events in flight (published, not
// yet received) so that no peer drops events and the rate is the one
// sustained without loss: events/s is b.N over the time from the first
// publish to the last receipt. lat-p50-µs and lat-p99-µs are the one-way
// latency of those events (receipt minus the publisher's timestamp: the
// envelope's published_at for Loom, the first 8 payload bytes for the
// others), so they include the queueing the window allows. idle-p50-µs
// and idle-p99-µs are the one-way latency of evIdleSamples events sent one
// at a time, each after the previous one arrived.
//
// natsraw is plain nats.go publish / subscribe. watermill-nats is
// ThreeDotsLabs' watermill-nats v2 on core NATS (JetStream disabled: its
// fastest configuration; its subscriber hands each message to the reader
// and waits for its Ack before the next).
func BenchmarkEvents(b *testing.B) {
	for _, p := range []struct {
		name  string
		start evStarter
	}{
		{"natsraw", startEvNATSRaw},
		{"loom-nats", startEvLoom("nats")},
		{"loom-zmq", startEvLoom("zmq")},
		{"loom-jetstream", startEvLoom("jetstream")},
		{"watermill-nats", startEvWatermill},
	} {
		b.Run(p.name, func(b *testing.B) { runEvents(b, p.start) })
	}
}

// BenchmarkEventsDurable compares the durable transports: Loom's
// JetStream events with watermill-nats on JetStream (its stream
// provisioned, a durable consumer; acknowledgements asynchronous, its
// fastest setting), the same flow control and measures as
// BenchmarkEvents.
func BenchmarkEventsDurable(b *testing.B) {
	b.Run("loom-jetstream", func(b *testing.B) { runEvents(b, startEvLoom("jetstream")) })
	b.Run("watermill-jetstream", func(b *testing.B) { runEvents(b, startEvWatermillJS) })
}

const (
	evPayload     = 128
	evCredit      = 256 // events per flow-control token
	evWindow      = 16  // tokens: at most 4096 events in flight
	evIdleSamples = 300
)

// evPeer is one system under test. publish sends a 128-byte payload whose
// first 8 bytes are the send time; the receiving side calls the recv func
// given to the starter, from one goroutine, with the one-way latency.
type evPeer struct {
	publish func(ctx context.Context, payload []byte) error
	close   func()
}

type evStarter func(tb testing.TB, recv func(latency time.Duration)) *evPeer

func runEvents(b *testing.B, start evStarter) {
	var (
		received atomic.Int64
		idle     atomic.Bool
		lat      = make([]time.Duration, 0, b.N)
		idleLat  = make([]time.Duration, 0, evIdleSamples)
		credit   = make(chan struct{}, evWindow)
		arrived  = make(chan struct{}, 1)
	)
	for range evWindow {
		credit <- struct{}{}
	}
	p := start(b, func(d time.Duration) {
		n := received.Add(1)
		if idle.Load() {
			idleLat = append(idleLat, d)
			arrived <- struct{}{}
			return
		}
		lat = append(lat, d)
		if n%evCredit == 0 {
			credit <- struct{}{}
		}
	})
	defer p.close()
	ctx := b.Context()
	payload := make([]byte, evPayload)
	for i := range payload {
		payload[i] = byte('a' + i%26)
	}
	stamp := func() []byte {
		binary.BigEndian.PutUint64(payload, uint64(time.Now().UnixNano()))
		return payload
	}

	b.ResetTimer()
	began := time.Now()
	for i := range b.N {
		if i%evCredit == 0 {
			<-credit
		}
		if err := p.publish(ctx, stamp()); err != nil {
			b.Fatal(err)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for received.Load() < int64(b.N) {
		if time.Now().After(deadline) {
			b.Fatalf("received %d of %d events after 30s", received.Load(), b.N)
		}
		time.Sleep(50 * time.Microsecond)
	}
	elapsed := time.Since(began)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
	reportPercentiles(b, "lat", lat)

	idle.Store(true)
	for range evIdleSamples {
		if err := p.publish(ctx, stamp()); err != nil {
			b.Fatal(err)
		}
		select {
		case <-arrived:
		case <-time.After(10 * time.Second):
			b.Fatal("an event sent alone did not arrive within 10s")
		}
	}
	reportPercentiles(b, "idle", idleLat)
}

func reportPercentiles(b *testing.B, name string, d []time.Duration) {
	if len(d) == 0 {
		return
	}
	slices.Sort(d)
	at := func(q float64) float64 { return float64(d[int(q*float64(len(d)-1))]) / 1e3 }
	b.ReportMetric(at(0.50), name+"-p50-µs")
	b.ReportMetric(at(0.99), name+"-p99-µs")
}

// sentAt reads the send time from a payload.
func sentAt(p []byte) time.Duration {
	if len(p) < 8 {
		return 0
	}
	return time.Since(time.Unix(0, int64(binary.BigEndian.Uint64(p))))
}

func startEvServer(tb testing.TB, jetstream bool) *embedded.NATS {
	ns, err := embedded.StartNATS(embedded.NATSOptions{JetStream: jetstream})
	if err != nil {
		tb.Fatalf("nats-server: %v", err)
	}
	return ns
}

const evSubject = "namespace.bench.component.worker.kv_events"

func startEvNATSRaw(tb testing.TB, recv func(time.Duration)) *evPeer {
	ns := startEvServer(tb, false)
	pub, err := nats.Connect(ns.ClientURL())
	if err != nil {
		ns.Shutdown()
		tb.Fatal(err)
	}
	sub, err := nats.Connect(ns.ClientURL())
	if err != nil {
		pub.Close()
		ns.Shutdown()
		tb.Fatal(err)
	}
	s, err := sub.Subscribe(evSubject, func(m *nats.Msg) { recv(sentAt(m.Data)) })
	if err == nil {
		_ = s.SetPendingLimits(-1, -1)
		err = sub.Flush()
	}
	closeAll := func() { pub.Close(); sub.Close(); ns.Shutdown() }
	if err != nil {
		closeAll()
		tb.Fatal(err)
	}
	return &evPeer{
		publish: func(_ context.Context, p []byte) error { return pub.Publish(evSubject, p) },
		close:   closeAll,
	}
}

// startEvLoom runs two runtimes, a publisher's and a subscriber's, with a
// raw publisher and a raw subscription (no payload codec: the same bytes
// as the others carry, inside Loom's envelope).
func startEvLoom(transport string) evStarter {
	return func(tb testing.TB, recv func(time.Duration)) *evPeer {
		ns := startEvServer(tb, transport == "jetstream")
		cfg := config.Default()
		cfg.NATS.URL = ns.ClientURL()
		cfg.Events.Transport = transport
		cfg.Events.JetStream.Storage = "memory"
		store := memory.NewStore()
		quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
		var rts []*loom.Runtime
		var cleanups []func()
		closeAll := func() {
			for i := len(cleanups) - 1; i >= 0; i-- {
				cleanups[i]()
			}
			for _, rt := range rts {
				_ = rt.Shutdown(context.Background())
			}
			ns.Shutdown()
		}
		fail := func(err error) *evPeer {
			closeAll()
			tb.Fatalf("loom-%s: %v", transport, err)
			return nil
		}
		for range 2 {
			rt, err := loom.NewRuntime(context.Background(), loom.WithConfig(cfg), loom.WithDiscovery(store.Connect()), loom.WithLogger(quiet))
			if err != nil {
				return fail(err)
			}
			rts = append(rts, rt)
		}
		ctx := context.Background()
		scope := events.Scope{Namespace: "bench", Component: "worker"}
		pub, err := events.NewRawPublisher(ctx, rts[0], scope, "kv_events", events.WithEnvelope(events.EnvelopeCompact))
		if err != nil {
			return fail(err)
		}
		cleanups = append(cleanups, func() { _ = pub.Shutdown(context.Background()) })
		sub, err := events.SubscribeRaw(ctx, rts[1], scope, "kv_events", events.WithBuffer(4*evWindow*evCredit, events.Block))
		if err != nil {
			return fail(err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			for ev, err := range sub.Events(context.Background()) {
				if err != nil {
					return
				}
				recv(time.Since(ev.PublishedAt))
			}
		}()
		cleanups = append(cleanups, func() { _ = sub.Close(); <-done })
		if transport == "zmq" {
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			if err := pub.WaitForSubscribers(wctx, 1); err != nil {
				return fail(err)
			}
		}
		return &evPeer{
			publish: func(ctx context.Context, p []byte) error { return pub.Publish(ctx, p) },
			close: func() {
				closeAll()
				if st := sub.Stats(); st.Lost+st.Dropped+st.Malformed > 0 {
					tb.Errorf("loom-%s lost events: %+v", transport, st)
				}
			},
		}
	}
}

func startEvWatermill(tb testing.TB, recv func(time.Duration)) *evPeer {
	return startWatermill(tb, recv, false)
}

func startEvWatermillJS(tb testing.TB, recv func(time.Duration)) *evPeer {
	return startWatermill(tb, recv, true)
}

// startWatermill runs watermill-nats on connections of its own, so that
// the subscription can be flushed to the server before publishing
// (watermill's Subscribe returns before the server has the interest).
func startWatermill(tb testing.TB, recv func(time.Duration), jetstream bool) *evPeer {
	ns := startEvServer(tb, jetstream)
	topic := evSubject
	js := wmnats.JetStreamConfig{Disabled: true}
	if jetstream {
		topic = "bench_events" // a stream name: no dots
		js = wmnats.JetStreamConfig{AutoProvision: true, AckAsync: true, DurablePrefix: "bench"}
	}
	var conns []*nats.Conn
	closeConns := func() {
		for _, c := range conns {
			c.Close()
		}
		ns.Shutdown()
	}
	for range 2 {
		c, err := nats.Connect(ns.ClientURL())
		if err != nil {
			closeConns()
			tb.Fatal(err)
		}
		conns = append(conns, c)
	}
	logger := watermill.NopLogger{}
	pub, err := wmnats.NewPublisherWithNatsConn(conns[0], wmnats.PublisherPublishConfig{JetStream: js,
		Marshaler: &wmnats.NATSMarshaler{}, SubjectCalculator: wmnats.DefaultSubjectCalculator}, logger)
	if err != nil {
		closeConns()
		tb.Fatal(err)
	}
	sub, err := wmnats.NewSubscriberWithNatsConn(conns[1], wmnats.SubscriberSubscriptionConfig{JetStream: js,
		SubscribersCount: 1, AckWaitTimeout: 30 * time.Second, CloseTimeout: 5 * time.Second}, logger)
	if err != nil {
		_ = pub.Close()
		closeConns()
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	closeAll := func() { cancel(); _ = sub.Close(); _ = pub.Close(); closeConns() }
	msgs, err := sub.Subscribe(ctx, topic)
	if err == nil {
		err = conns[1].Flush()
	}
	if err != nil {
		closeAll()
		tb.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m := range msgs {
			recv(sentAt(m.Payload))
			m.Ack()
		}
	}()
	return &evPeer{
		publish: func(_ context.Context, p []byte) error {
			return pub.Publish(topic, message.NewMessage(watermill.NewUUID(), slices.Clone(p)))
		},
		close: func() { closeAll(); <-done },
	}
}
