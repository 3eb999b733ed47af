package events_test

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/loomrt/loom/events"
	"github.com/loomrt/loom/internal/testutil"
)

// balance is what a subscription (and, on ZeroMQ, its publisher) has
// accounted for so far: every published event is delivered, dropped,
// lost or waiting somewhere the counts see.
type balance struct {
	sub events.Stats
	pub events.PublisherStats
}

// accounted counts the events accounted for. On ZeroMQ the publisher's
// drops for a full send queue are counted there at once, and by the
// subscription as lost only when a later event shows the gap: the
// publisher's count stands for both.
func (b balance) accounted(transport string) uint64 {
	s := b.sub
	if transport == events.ZMQ {
		return s.Delivered + s.Dropped + uint64(s.Buffered) + b.pub.Dropped
	}
	return s.Delivered + s.Dropped + s.Lost + uint64(s.Buffered)
}

// TestEveryOverflowPolicyBalancesAtEveryPoint floods a subscription whose
// reader first stalls and then reads slowly, and checks that the counts
// account for every published event while the reader is stalled, at
// checkpoints while it reads, and at the end.
func TestEveryOverflowPolicyBalancesAtEveryPoint(t *testing.T) {
	for _, c := range []struct {
		transport string
		overflow  events.Overflow
		stalled   int // events published while the reader stalls
	}{
		// Above the NATS client's own buffer (65536 messages), so that
		// with block its slow-consumer path drops.
		{"nats", events.Block, 80000},
		{"nats", events.DropOldest, 80000},
		{"nats", events.DropNewest, 80000},
		{"zmq", events.Block, 20000},
		{"zmq", events.DropOldest, 20000},
		{"zmq", events.DropNewest, 20000},
		{"jetstream", events.Block, 2000},
	} {
		t.Run(fmt.Sprintf("%s with %s", c.transport, c.overflow), func(t *testing.T) {
			s := newSystem(t, c.transport)
			s.Config.Events.ZMQ.SendQueue = 256
			pubRT, subRT := s.Runtime(), s.Runtime()
			scope := events.Scope{Namespace: "flood", Component: "worker"}
			p := publisher[[]byte](t, pubRT, scope, "kv_events")
			sub := subscribe[[]byte](t, subRT, scope, "kv_events", events.WithBuffer(64, c.overflow))
			waitSubscribed(t, p, 1)
			read := func() balance { return balance{sub: sub.Stats(), pub: p.Stats()} }
			payload := make([]byte, 16)
			var published uint64
			publish := func(n int) {
				t.Helper()
				for range n {
					if err := p.Publish(t.Context(), payload); err != nil {
						t.Fatal(err)
					}
					published++
				}
				if c.transport == events.ZMQ {
					return // a blocked subscriber holds the send queue
				}
				if err := p.Flush(testutil.Timeout(t, 20*time.Second)); err != nil {
					t.Fatal(err)
				}
			}
			// check fails if the counts ever claim more than was published
			// (reading the counters one by one may only miss an event that
			// moves between them, never count one twice), or if a durable
			// subscription lost or dropped anything.
			check := func(when string, b balance) {
				t.Helper()
				if got := b.accounted(c.transport); got > published {
					t.Fatalf("%s: %d events accounted for, only %d published: %+v", when, got, published, b)
				}
				if c.transport == events.ZMQ && b.sub.Lost > b.pub.Dropped {
					t.Fatalf("%s: the subscription counts %d lost, the publisher dropped only %d: %+v", when, b.sub.Lost, b.pub.Dropped, b)
				}
				if c.transport == events.JetStream && b.sub.Lost+b.sub.Dropped != 0 {
					t.Fatalf("%s: the durable transport lost events: %+v", when, b)
				}
			}
			// balanced waits until the counts account for every event
			// published so far.
			balanced := func(when string) balance {
				t.Helper()
				deadline := time.Now().Add(30 * time.Second)
				for {
					b := read()
					check(when, b)
					if b.accounted(c.transport) == published {
						return b
					}
					if time.Now().After(deadline) {
						if c.transport == events.JetStream {
							jsz, _ := s.NATS.Server().Jsz(&server.JSzOptions{Accounts: true, Consumer: true})
							for _, a := range jsz.AccountDetails {
								for _, st := range a.Streams {
									for _, ci := range st.Consumer {
										t.Logf("consumer %s: %+v delivered %+v ackfloor %+v", ci.Name, ci, ci.Delivered, ci.AckFloor)
									}
								}
							}
						}
						t.Fatalf("%s: %d of %d published events accounted for after 30s: %+v", when, b.accounted(c.transport), published, b)
					}
					time.Sleep(5 * time.Millisecond)
				}
			}

			// The reader stalls: the counts must balance without it.
			publish(c.stalled)
			switch {
			case c.transport == events.JetStream:
				check("stalled", read()) // the stream holds the rest
			case c.transport == events.ZMQ && c.overflow == events.Block:
				// The publisher's send queue and the sockets hold events
				// nobody can count; the publisher's drops show once they
				// are full. Loopback sockets grow their buffers to several
				// MiB, which can hold all of c.stalled: publish more until
				// the queue overflows.
				deadline := time.Now().Add(30 * time.Second)
				for b := read(); b.pub.Dropped == 0; b = read() {
					check("stalled", b)
					if time.Now().After(deadline) {
						t.Fatalf("stalled: the publisher dropped nothing for a blocked subscriber after 30s and %d events: %+v", published, b)
					}
					publish(1000)
					time.Sleep(5 * time.Millisecond)
				}
			default:
				b := balanced("stalled")
				if b.sub.Dropped == 0 {
					t.Fatalf("stalled: %d events published to a buffer of 64, none dropped: %+v", published, b)
				}
				t.Logf("reader stalled: published %d, dropped %d, lost %d, waiting %d", published, b.sub.Dropped, b.sub.Lost, b.sub.Buffered)
			}

			// The reader reads, slowly, while more is published.
			var delivered atomic.Uint64
			var wg sync.WaitGroup
			wg.Go(func() {
				for _, err := range sub.Events(t.Context()) {
					if err != nil {
						t.Error(err)
						return
					}
					if delivered.Add(1)%100 == 0 {
						time.Sleep(time.Millisecond) // a slow reader
					}
				}
			})
			defer func() { _ = sub.Close(); wg.Wait() }()
			each := 10000
			if c.transport == events.JetStream {
				each = 4000
			}
			for i := range 4 {
				publish(each)
				b := balanced(fmt.Sprintf("checkpoint %d", i+1))
				t.Logf("checkpoint %d: published %d, delivered %d, dropped %d, lost %d, waiting %d, publisher dropped %d",
					i+1, published, b.sub.Delivered, b.sub.Dropped, b.sub.Lost, b.sub.Buffered, b.pub.Dropped)
			}

			// The reader drains: nothing is left waiting.
			deadline := time.Now().Add(30 * time.Second)
			b := read()
			for ; b.sub.Buffered != 0 || b.sub.Delivered != delivered.Load() || b.accounted(c.transport) != published; b = read() {
				check("draining", b)
				if time.Now().After(deadline) {
					t.Fatalf("the reader did not drain in 30s: reader got %d, %+v", delivered.Load(), b)
				}
				time.Sleep(5 * time.Millisecond)
			}
			if c.transport == events.ZMQ {
				t.Logf("%s/%s: published %d = delivered %d + dropped %d + dropped by the publisher %d (of which the subscription saw %d as lost)",
					c.transport, c.overflow, published, b.sub.Delivered, b.sub.Dropped, b.pub.Dropped, b.sub.Lost)
			} else {
				t.Logf("%s/%s: published %d = delivered %d + dropped %d + lost %d",
					c.transport, c.overflow, published, b.sub.Delivered, b.sub.Dropped, b.sub.Lost)
			}
			if c.transport == events.JetStream && b.sub.Delivered != published {
				t.Fatalf("the durable transport delivered %d of %d", b.sub.Delivered, published)
			}
		})
	}
}
