package events_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/loomrt/loom/codec"
	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/events"
	"github.com/loomrt/loom/internal/testutil"
)

func TestWildcardSubscriptionsReachEveryMatchingScope(t *testing.T) {
	for _, tr := range transports {
		t.Run("over "+tr, func(t *testing.T) {
			s := newSystem(t, tr)
			pubRT, subRT := s.Runtime(), s.Runtime()
			scopes := []events.Scope{
				{Namespace: "dyn"},
				{Namespace: "dyn", Component: "prefill"},
				{Namespace: "dyn", Component: "decode"},
				{Namespace: "dyn", Component: "decode", Endpoint: "generate"},
				{Namespace: "dyn.eu", Component: "decode"},
				{Namespace: "other", Component: "decode"},
			}
			type sub struct {
				scope events.Scope
				topic string
				want  []string
			}
			subs := []sub{
				{events.Scope{Namespace: "dyn", Component: "*"}, "kv_events", []string{"dyn/decode", "dyn/prefill"}},
				{events.Scope{Namespace: "dyn"}, "kv_events", []string{"dyn"}},
				{events.Scope{Namespace: "dyn"}, ">", []string{"dyn", "dyn/decode", "dyn/decode/generate", "dyn/prefill"}},
				{events.Scope{Namespace: "*", Component: "decode"}, "kv_events", []string{"dyn.eu/decode", "dyn/decode", "other/decode"}},
				{events.Scope{Namespace: "dyn", Component: "decode", Endpoint: "*"}, "*", []string{"dyn/decode/generate"}},
				{events.Scope{Namespace: "dyn.eu", Component: "decode"}, "kv_events", []string{"dyn.eu/decode"}},
			}
			var subscriptions []*events.Subscription[string]
			for _, sb := range subs {
				subscriptions = append(subscriptions, subscribe[string](t, subRT, sb.scope, sb.topic))
			}
			for _, sc := range scopes {
				p := publisher[string](t, pubRT, sc, "kv_events")
				if tr != "nats" && tr != "jetstream" {
					// Directly, each matching subscription has its own
					// socket; through a broker, the broker is the one.
					want := 0
					for _, sb := range subs {
						if slices.Contains(sb.want, sc.String()) {
							want++
						}
					}
					if tr != "zmq" {
						want = min(want, 1) // the broker is the publisher's one subscriber
					}
					waitSubscribed(t, p, want)
				}
				if err := p.Publish(t.Context(), sc.String()); err != nil {
					t.Fatal(err)
				}
			}
			for i, sb := range subs {
				evs := collect(t, subscriptions[i], len(sb.want), 5*time.Second)
				var got []string
				for _, ev := range evs {
					got = append(got, ev.Value)
					if ev.Scope().String() != ev.Value {
						t.Errorf("event %q arrived on subject %s, whose scope is %s", ev.Value, ev.Subject, ev.Scope())
					}
				}
				slices.Sort(got)
				if !slices.Equal(got, sb.want) {
					t.Errorf("%s %s received %v, want %v", sb.scope, sb.topic, got, sb.want)
				}
			}
		})
	}
}

// TestOverloadedSubscriberCountsEveryLoss floods a subscriber that reads
// slowly and checks that every event is accounted for: delivered, dropped
// by the buffer, or lost in transit; none silently.
func TestOverloadedSubscriberCountsEveryLoss(t *testing.T) {
	for _, c := range []struct {
		transport string
		overflow  events.Overflow
	}{
		{"nats", events.DropOldest},
		{"nats", events.Block},
		{"zmq", events.DropOldest},
		{"zmq", events.Block},
		{"jetstream", events.Block},
	} {
		t.Run(fmt.Sprintf("%s with %s", c.transport, c.overflow), func(t *testing.T) {
			s := newSystem(t, c.transport)
			if c.transport == "zmq" {
				s.Config.Events.ZMQ.SendQueue = 256
			}
			pubRT, subRT := s.Runtime(), s.Runtime()
			scope := events.Scope{Namespace: "load", Component: "worker"}
			p := publisher[[]byte](t, pubRT, scope, "kv_events")
			sub := subscribe[[]byte](t, subRT, scope, "kv_events", events.WithBuffer(64, c.overflow), events.WithLossErrors())
			waitSubscribed(t, p, 1)
			const n = 20000
			payload := make([]byte, 512)
			var notices, lostNoticed, droppedNoticed uint64
			var delivered uint64
			var last uint64
			done := make(chan struct{})
			go func() {
				defer close(done)
				for ev, err := range sub.Events(t.Context()) {
					var le *events.LossError
					if errors.As(err, &le) {
						notices++
						lostNoticed += le.Lost
						droppedNoticed += le.Dropped
						continue
					}
					if err != nil {
						t.Error(err)
						return
					}
					delivered++
					last = ev.Sequence
					if delivered%50 == 0 {
						time.Sleep(time.Millisecond) // a slow reader
					}
					if ev.Sequence == n-1 {
						return
					}
				}
			}()
			start := time.Now()
			for range n - 1 {
				if err := p.Publish(t.Context(), payload); err != nil {
					t.Fatal(err)
				}
			}
			published := time.Since(start)
			// The last event goes once the flood is on its way (at the
			// server, written to the ZeroMQ subscriber, stored), so that no
			// full queue drops it: its arrival tells the subscription about
			// every gap before it.
			if err := p.Flush(testutil.Timeout(t, 30*time.Second)); err != nil {
				t.Fatal(err)
			}
			if err := p.Publish(t.Context(), payload); err != nil {
				t.Fatal(err)
			}
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				_ = sub.Close()
				<-done
				t.Fatalf("the last event never arrived; stats %+v", sub.Stats())
			}
			st := sub.Stats()
			t.Logf("%s/%s: published %d in %v; delivered %d, dropped by the buffer %d, lost in transit %d, reordered %d, duplicates %d (%d loss notices in the stream)",
				c.transport, c.overflow, n, published.Round(time.Millisecond), delivered, st.Dropped, st.Lost, st.Reordered, st.Duplicates, notices)
			if last != n-1 || st.Delivered != delivered {
				t.Fatalf("last sequence %d, delivered %d, stats %+v", last, delivered, st)
			}
			if got := st.Delivered + st.Dropped + st.Lost + uint64(st.Buffered); got != n {
				t.Fatalf("delivered + dropped + lost + buffered = %d, want %d (stats %+v)", got, n, st)
			}
			if lostNoticed != st.Lost || droppedNoticed != st.Dropped {
				t.Fatalf("the stream reported %d lost and %d dropped, stats say %d and %d", lostNoticed, droppedNoticed, st.Lost, st.Dropped)
			}
			if c.transport == "jetstream" && st.Lost+st.Dropped != 0 {
				t.Fatalf("the durable transport lost events: %+v", st)
			}
			if c.overflow == events.Block && st.Dropped != 0 {
				t.Fatalf("a blocking buffer dropped events: %+v", st)
			}
		})
	}
}

func TestMalformedMessagesAreCountedAndSkipped(t *testing.T) {
	s := newSystem(t, "nats")
	rt := s.Runtime()
	scope := events.Scope{Namespace: "bad", Component: "w"}
	sub := subscribe[kv](t, rt, scope, "kv_events")
	nc, err := nats.Connect(s.NATS.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	subject, _ := events.Subject(scope, "kv_events")
	env := events.Envelope{PublisherID: 9, Topic: "kv_events"}
	wrongType := env
	wrongType.Payload, _ = codec.MsgPack.Marshal(nil, "a string, not a kv")
	good := env
	good.Sequence = 1
	good.Payload, _ = codec.MsgPack.Marshal(nil, kv{Note: "fine"})
	for _, m := range [][]byte{
		[]byte("not an envelope"),
		{0xdf, 0xff, 0xff, 0xff, 0xff},
		make([]byte, 2<<20), // over events.max_event_size
		wrongType.AppendMsgPack(nil),
		good.AppendMsgPack(nil),
	} {
		if err := nc.Publish(subject, m); err != nil && !errors.Is(err, nats.ErrMaxPayload) {
			t.Fatal(err)
		}
	}
	evs := collect(t, sub, 1, 5*time.Second)
	if evs[0].Value.Note != "fine" {
		t.Fatalf("got %+v", evs[0])
	}
	if st := sub.Stats(); st.Malformed < 3 || st.Delivered != 1 || st.Lost != 0 {
		t.Fatalf("stats %+v; want 3 or more malformed, 1 delivered, none lost", st)
	}
}

func TestPublisherRestartIsNotLoss(t *testing.T) {
	for _, tr := range []string{"nats", "zmq"} {
		t.Run("over "+tr, func(t *testing.T) {
			s := newSystem(t, tr)
			pubRT, subRT := s.Runtime(), s.Runtime()
			scope := events.Scope{Namespace: "r", Component: "w"}
			sub := subscribe[int](t, subRT, scope, "load_metrics")
			for round := range 3 {
				p, err := events.NewPublisher[int](t.Context(), pubRT, scope, "load_metrics")
				if err != nil {
					t.Fatal(err)
				}
				waitSubscribed(t, p, 1)
				for i := range 5 {
					if err := p.Publish(t.Context(), round*10+i); err != nil {
						t.Fatal(err)
					}
				}
				collect(t, sub, 5, 5*time.Second)
				if err := p.Shutdown(t.Context()); err != nil {
					t.Fatal(err)
				}
			}
			if st := sub.Stats(); st.Lost != 0 || st.Delivered != 15 {
				t.Fatalf("three publishers in turn: %+v; want 15 delivered, none lost", st)
			}
		})
	}
}

func TestGapsAreReportedInTheStreamBeforeTheNextEvent(t *testing.T) {
	s := newSystem(t, "nats")
	rt := s.Runtime()
	scope := events.Scope{Namespace: "gap"}
	sub := subscribe[uint64](t, rt, scope, "t", events.WithLossErrors())
	nc, err := nats.Connect(s.NATS.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	subject, _ := events.Subject(scope, "t")
	for _, seq := range []uint64{0, 1, 4, 3, 5, 5} {
		payload, _ := codec.MsgPack.Marshal(nil, seq)
		e := events.Envelope{PublisherID: 77, Sequence: seq, Topic: "t", Payload: payload}
		if err := nc.Publish(subject, e.AppendMsgPack(nil)); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	for ev, err := range sub.Events(t.Context()) {
		var le *events.LossError
		switch {
		case errors.As(err, &le):
			got = append(got, fmt.Sprintf("lost %d from %d of %x", le.Lost, le.From, le.PublisherID))
		case err != nil:
			t.Fatal(err)
		default:
			if ev.Value != ev.Sequence {
				t.Fatalf("event %d carries %d", ev.Sequence, ev.Value)
			}
			got = append(got, fmt.Sprint(ev.Sequence))
		}
		if len(got) == 6 {
			break
		}
	}
	want := "0,1,lost 2 from 2 of 4d,4,3,5"
	if strings.Join(got, ",") != want {
		t.Fatalf("stream %q, want %q", strings.Join(got, ","), want)
	}
	// The duplicate is not delivered, so the stream's end says nothing of
	// its arrival: wait for it.
	st := sub.Stats()
	for deadline := time.Now().Add(10 * time.Second); st.Duplicates == 0 && time.Now().Before(deadline); st = sub.Stats() {
		time.Sleep(5 * time.Millisecond)
	}
	if st.Lost != 1 || st.Reordered != 1 || st.Duplicates != 1 {
		t.Fatalf("stats %+v: want 1 lost (2 skipped, 1 came late), 1 reordered, 1 duplicate", st)
	}
	var le events.LossError
	le.PublisherID, le.Subject, le.From, le.Lost = 77, subject, 2, 2
	if !strings.Contains(le.Error(), "sequence 2 to 3 never arrived") {
		t.Fatalf("message %q", le.Error())
	}
}

func TestDurableSubscriptionsReplayFromWhereAsked(t *testing.T) {
	s := newSystem(t, "jetstream")
	rt := s.Runtime()
	scope := events.Scope{Namespace: "js", Component: "w"}
	p1 := publisher[int](t, rt, scope, "kv_events")
	p2 := publisher[int](t, rt, events.Scope{Namespace: "js", Component: "v"}, "kv_events")
	for i := range 5 {
		if err := p1.Publish(t.Context(), i); err != nil {
			t.Fatal(err)
		}
	}
	if err := p2.Publish(t.Context(), 100); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*events.Publisher[int]{p1, p2} {
		if err := p.Flush(t.Context()); err != nil { // stored: before mid
			t.Fatal(err)
		}
	}
	mid := time.Now()
	time.Sleep(20 * time.Millisecond)
	for i := 5; i < 8; i++ {
		if err := p1.Publish(t.Context(), i); err != nil {
			t.Fatal(err)
		}
	}
	if err := p1.Shutdown(t.Context()); err != nil { // waits for the acknowledgements
		t.Fatal(err)
	}
	if err := p2.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	all := events.Scope{Namespace: "js", Component: "*"}
	values := func(evs []events.Event[int]) []int {
		var out []int
		for _, ev := range evs {
			out = append(out, ev.Value)
		}
		return out
	}
	evs := collect(t, subscribe[int](t, rt, all, "kv_events", events.DeliverAll()), 9, 5*time.Second)
	if fmt.Sprint(values(evs)) != "[0 1 2 3 4 100 5 6 7]" {
		t.Fatalf("DeliverAll: %v", values(evs))
	}
	from := evs[3].StreamSequence
	if got := values(collect(t, subscribe[int](t, rt, all, "kv_events", events.DeliverFrom(from)), 6, 5*time.Second)); fmt.Sprint(got) != "[3 4 100 5 6 7]" {
		t.Fatalf("DeliverFrom(%d): %v", from, got)
	}
	if got := values(collect(t, subscribe[int](t, rt, all, "kv_events", events.DeliverSince(mid)), 3, 5*time.Second)); fmt.Sprint(got) != "[5 6 7]" {
		t.Fatalf("DeliverSince: %v", got)
	}
	got := values(collect(t, subscribe[int](t, rt, all, "kv_events", events.DeliverLastPerSubject()), 2, 5*time.Second))
	slices.Sort(got)
	if fmt.Sprint(got) != "[7 100]" {
		t.Fatalf("DeliverLastPerSubject: %v", got)
	}
}

func TestDurableConsumerResumesAfterTheLastProcessedEvent(t *testing.T) {
	s := newSystem(t, "jetstream")
	rt := s.Runtime()
	scope := events.Scope{Namespace: "js", Component: "w"}
	p := publisher[int](t, rt, scope, "jobs")
	for i := range 10 {
		if err := p.Publish(t.Context(), i); err != nil {
			t.Fatal(err)
		}
	}
	var seen []int
	for round := 0; len(seen) < 10 && round < 5; round++ {
		sub, err := events.Subscribe[int](t.Context(), rt, scope, "jobs", events.Durable("router"), events.DeliverAll())
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for ev, err := range sub.Events(t.Context()) {
			if err != nil {
				t.Fatal(err)
			}
			seen = append(seen, ev.Value)
			if n++; n == 4 {
				break // the fifth is not processed: it comes again
			}
		}
		// Ranging again goes on where the loop broke off.
		for ev, err := range sub.Events(t.Context()) {
			if err != nil {
				t.Fatal(err)
			}
			seen = append(seen, ev.Value)
			break
		}
		if err := sub.Close(); err != nil {
			t.Fatal(err)
		}
	}
	// Events fetched and not delivered are handed back at Close; JetStream
	// may then redeliver them out of order, but each comes once.
	slices.Sort(seen)
	if fmt.Sprint(seen) != "[0 1 2 3 4 5 6 7 8 9]" {
		t.Fatalf("a durable read in rounds saw %v, want each event once", seen)
	}
}

func TestDurableNameAndStartOptionsNeedJetStream(t *testing.T) {
	s := newSystem(t, "nats")
	rt := s.Runtime()
	_, err := events.Subscribe[int](t.Context(), rt, events.Scope{Namespace: "x"}, "t", events.DeliverAll())
	if err == nil || !strings.Contains(err.Error(), "jetstream") {
		t.Fatalf("got %v, want an error naming the jetstream transport", err)
	}
	_, err = events.Subscribe[int](t.Context(), rt, events.Scope{Namespace: "x"}, "t", events.WithTransport("kafka"))
	if err == nil || !strings.Contains(err.Error(), "events.transport") {
		t.Fatalf("got %v, want an error naming events.transport", err)
	}
}

func TestZMQSubscriberFollowsPublishersThroughDiscovery(t *testing.T) {
	s := newSystem(t, "zmq")
	subRT := s.Runtime()
	scope := events.Scope{Namespace: "z", Component: "*"}
	sub := subscribe[string](t, subRT, scope, "kv_events")
	// Publishers appear after the subscription, in other runtimes.
	var pubs []*events.Publisher[string]
	for i := range 3 {
		rt := s.Runtime()
		p := publisher[string](t, rt, events.Scope{Namespace: "z", Component: fmt.Sprintf("w%d", i)}, "kv_events")
		waitSubscribed(t, p, 1)
		pubs = append(pubs, p)
	}
	for i, p := range pubs {
		if err := p.Publish(t.Context(), fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	if evs := collect(t, sub, 3, 5*time.Second); len(evs) != 3 {
		t.Fatal(evs)
	}
	recs, err := subRT.Discovery().List(t.Context(), discovery.Query{Namespace: "z", Component: events.ChannelComponent})
	if err != nil || len(recs) != 3 || recs[0].Transport != "zmq" || !strings.HasPrefix(recs[0].Address, "tcp://127.0.0.1:") {
		t.Fatalf("event channel records %+v %v", recs, err)
	}
	// A publisher that shuts down leaves discovery; the subscription keeps
	// the others and tracks two publishers.
	if err := pubs[0].Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for sub.Stats().Publishers != 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := sub.Stats().Publishers; n != 2 {
		t.Fatalf("tracking %d publishers after one left, want 2", n)
	}
	if err := pubs[1].Publish(t.Context(), "after"); err != nil {
		t.Fatal(err)
	}
	if evs := collect(t, sub, 1, 5*time.Second); evs[0].Value != "after" {
		t.Fatal(evs)
	}
}

func TestSubscriptionLivesUntilCloseOrTheRuntimeAndEachRangeUntilItsContext(t *testing.T) {
	for _, tr := range transports {
		t.Run("over "+tr, func(t *testing.T) {
			s := newSystem(t, tr)
			rt := s.Runtime()
			// Subscribe's context bounds the setting up, Events' one range:
			// neither ends the subscription.
			setup, endSetup := context.WithCancel(t.Context())
			alive, err := events.Subscribe[int](setup, rt, events.Scope{Namespace: "alive"}, "t")
			endSetup()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = alive.Close() })
			rctx, endRange := context.WithCancel(t.Context())
			ranged := make(chan error, 1)
			go func() {
				for _, err := range alive.Events(rctx) {
					if err != nil {
						ranged <- err
						return
					}
				}
				ranged <- nil
			}()
			endRange()
			if err := <-ranged; err != nil {
				t.Fatalf("a range ended by its context: %v, want no error", err)
			}
			p := publisher[int](t, rt, events.Scope{Namespace: "alive"}, "t")
			waitSubscribed(t, p, 1)
			if err := p.Publish(t.Context(), 7); err != nil {
				t.Fatal(err)
			}
			if evs := collect(t, alive, 1, 10*time.Second); evs[0].Value != 7 {
				t.Fatal(evs)
			}

			scope := events.Scope{Namespace: "end"}
			byClose := subscribe[int](t, rt, scope, "t")
			byRuntime := subscribe[int](t, rt, scope, "t")
			var wg sync.WaitGroup
			for _, sub := range []*events.Subscription[int]{byClose, byRuntime} {
				wg.Go(func() {
					for _, err := range sub.Events(context.Background()) {
						if err != nil {
							t.Error(err)
						}
					}
				})
			}
			_ = byClose.Close()
			if err := rt.Shutdown(t.Context()); err != nil {
				t.Fatal(err)
			}
			wg.Wait()
			if _, err := events.Subscribe[int](t.Context(), rt, scope, "t"); err == nil {
				t.Fatal("subscribed on a runtime that was shut down")
			}
		})
	}
}

func TestPublisherCloseStopsAtOnceAndLeavesDiscovery(t *testing.T) {
	for _, tr := range transports {
		t.Run("over "+tr, func(t *testing.T) {
			s := newSystem(t, tr)
			rt := s.Runtime()
			scope := events.Scope{Namespace: "closing", Component: "w"}
			sub := subscribe[int](t, rt, scope, "t")
			p := publisher[int](t, rt, scope, "t")
			waitSubscribed(t, p, 1)
			if err := p.Publish(t.Context(), 1); err != nil {
				t.Fatal(err)
			}
			if evs := collect(t, sub, 1, 10*time.Second); evs[0].Value != 1 {
				t.Fatal(evs)
			}
			if err := p.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if err := p.Publish(t.Context(), 2); !errors.Is(err, events.ErrClosed) {
				t.Fatalf("Publish after Close: %v, want ErrClosed", err)
			}
			if err := p.Close(); err != nil {
				t.Fatalf("second Close: %v", err)
			}
			if err := p.Shutdown(t.Context()); err != nil {
				t.Fatalf("Shutdown after Close: %v", err)
			}
			recs, err := rt.Discovery().List(t.Context(), discovery.Query{Namespace: "closing", Component: events.ChannelComponent})
			if err != nil || len(recs) != 0 {
				t.Fatalf("event channel records after Close: %+v %v", recs, err)
			}
		})
	}
}

func TestMetricsCountWhatStatsCount(t *testing.T) {
	s := newSystem(t, "nats")
	rt := s.Runtime()
	scope := events.Scope{Namespace: "m", Component: "w"}
	sub := subscribe[int](t, rt, scope, "kv_events")
	p := publisher[int](t, rt, scope, "kv_events")
	for i := range 7 {
		if err := p.Publish(t.Context(), i); err != nil {
			t.Fatal(err)
		}
	}
	collect(t, sub, 7, 5*time.Second)
	reg := rt.Metrics().Registry()
	const want = `
# HELP loom_events_delivered_total Events a subscription handed to its reader.
# TYPE loom_events_delivered_total counter
loom_events_delivered_total{pattern="namespace.m.component.w.kv_events",transport="nats"} 7
# HELP loom_events_published_total Events published, by transport and subject.
# TYPE loom_events_published_total counter
loom_events_published_total{subject="namespace.m.component.w.kv_events",transport="nats"} 7
`
	if err := promtest.GatherAndCompare(reg, strings.NewReader(want), "loom_events_delivered_total", "loom_events_published_total"); err != nil {
		t.Fatal(err)
	}
	// Closed sources keep their counts in the totals.
	_ = sub.Close()
	_ = p.Shutdown(t.Context())
	if err := promtest.GatherAndCompare(reg, strings.NewReader(want), "loom_events_delivered_total", "loom_events_published_total"); err != nil {
		t.Fatal(err)
	}
}

func TestPublishRefusesEventsOverTheSizeLimit(t *testing.T) {
	s := newSystem(t, "nats")
	s.Config.Events.MaxEventSize = 2048
	rt := s.Runtime()
	p := publisher[[]byte](t, rt, events.Scope{Namespace: "big"}, "t")
	if err := p.Publish(t.Context(), make([]byte, 4096)); !errors.Is(err, events.ErrTooLarge) {
		t.Fatalf("got %v, want ErrTooLarge", err)
	}
	if err := p.Publish(t.Context(), make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
}

func TestOnGapReportsEachGapBeforeTheEventAfterIt(t *testing.T) {
	for _, transport := range []string{"nats", "jetstream"} {
		t.Run(transport, func(t *testing.T) {
			s := newSystem(t, transport)
			rt := s.Runtime()
			scope := events.Scope{Namespace: "gaphook"}
			gaps := make(chan events.Gap, 8)
			sub := subscribe[uint64](t, rt, scope, "t", events.OnGap(func(g events.Gap) { gaps <- g }))
			nc, err := nats.Connect(s.NATS.ClientURL())
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			subject, _ := events.Subject(scope, "t")
			if transport == "jetstream" {
				subject = events.DurablePrefix + subject
			}
			for _, seq := range []uint64{0, 1, 4, 5, 9} {
				payload, _ := codec.MsgPack.Marshal(nil, seq)
				e := events.Envelope{PublisherID: 77, InstanceID: 5, Sequence: seq, Topic: "t", Payload: payload}
				if err := nc.Publish(subject, e.AppendMsgPack(nil)); err != nil {
					t.Fatal(err)
				}
			}
			// The callback runs as the event after a gap arrives, so it has
			// run by the time that event is delivered.
			var seen []string
			var delivered []uint64
			for ev, err := range sub.Events(t.Context()) {
				if err != nil {
					t.Fatal(err)
				}
			drain:
				for {
					select {
					case g := <-gaps:
						seen = append(seen, fmt.Sprintf("%x/%d %d->%d (%d lost)", g.PublisherID, g.InstanceID, g.Expected, g.Got, g.Lost()))
					default:
						break drain
					}
				}
				want := map[uint64]int{0: 0, 1: 0, 4: 1, 5: 1, 9: 2}[ev.Sequence]
				if len(seen) < want {
					t.Fatalf("event %d delivered after only %d gap reports (%q), want %d", ev.Sequence, len(seen), seen, want)
				}
				delivered = append(delivered, ev.Sequence)
				if ev.Sequence == 9 {
					break
				}
			}
			if want := "4d/5 2->4 (2 lost),4d/5 6->9 (3 lost)"; strings.Join(seen, ",") != want {
				t.Fatalf("gaps %q, want %q (delivered %v)", strings.Join(seen, ","), want, delivered)
			}
			if st := sub.Stats(); st.Lost != 5 {
				t.Fatalf("stats %+v: want 5 lost", st)
			}
		})
	}
}

// TestADurableSubscriptionCountsWhatTheStreamHolds: on JetStream, Stats'
// Buffered is what the stream still holds for the subscription, so a
// reader can tell that it is behind.
func TestADurableSubscriptionCountsWhatTheStreamHolds(t *testing.T) {
	s := newSystem(t, "jetstream")
	rt := s.Runtime()
	scope := events.Scope{Namespace: "js", Component: "w"}
	p := publisher[int](t, rt, scope, "kv_events")
	const n = 10
	for i := range n {
		if err := p.Publish(t.Context(), i); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Flush(t.Context()); err != nil { // stored
		t.Fatal(err)
	}
	sub := subscribe[int](t, rt, scope, "kv_events", events.DeliverAll())
	for read := 1; read <= n; read++ {
		collect(t, sub, 1, 5*time.Second)
		if got := sub.Stats().Buffered; got != n-read {
			t.Fatalf("after reading %d of %d events stored before the subscription, Buffered = %d; want %d", read, n, got, n-read)
		}
	}
}
