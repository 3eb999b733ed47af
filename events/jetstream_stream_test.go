package events_test

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/loomrt/loom/events"
	"github.com/loomrt/loom/internal/testutil"
)

// TestTheDurableEventStreamIsLaidOutAsDocumented holds docs/events.md's
// "JetStream (durable)": one stream LOOM_EVENTS on loom.events.> created
// with the events.jetstream.* limits (max_age 24h and max_bytes 1 GiB by
// default), each event stored on loom.events. + its core-NATS subject as
// the envelope alone, and with discard = new a full stream refuses the
// event and the publisher reports it.
func TestTheDurableEventStreamIsLaidOutAsDocumented(t *testing.T) {
	s := newSystem(t, "jetstream")
	s.Config.Events.JetStream.Discard = "new"
	s.Config.Events.JetStream.MaxMsgs = 3
	rt := s.Runtime()
	p := publisher[int](t, rt, events.Scope{Namespace: "js", Component: "w"}, "kv_events")
	ctx := testutil.Timeout(t, 20*time.Second)
	for i := range 3 {
		if err := p.Publish(ctx, i); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	nc, err := rt.NATS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, "LOOM_EVENTS")
	if err != nil {
		t.Fatal(err)
	}
	c := st.CachedInfo().Config
	if len(c.Subjects) != 1 || c.Subjects[0] != "loom.events.>" || c.MaxAge != 24*time.Hour || c.MaxBytes != 1<<30 ||
		c.MaxMsgs != 3 || c.Discard != jetstream.DiscardNew {
		t.Errorf("stream: subjects %v, max_age %v, max_bytes %d, max_msgs %d, discard %v; want [loom.events.>], 24h0m0s, %d, 3, DiscardNew",
			c.Subjects, c.MaxAge, c.MaxBytes, c.MaxMsgs, c.Discard, 1<<30)
	}
	m, err := st.GetLastMsgForSubject(ctx, "loom.events.namespace.js.component.w.kv_events")
	if err != nil {
		t.Fatalf("no event on loom.events. + the event's subject: %v", err)
	}
	var env events.Envelope
	if _, err := events.DecodeEnvelope(m.Data, &env); err != nil || env.Sequence != 2 || env.Topic != "kv_events" {
		t.Fatalf("stored message decodes as %+v (%x); want the envelope of event 2 of kv_events", env, m.Data)
	}
	var v int
	if err := msgpack.Unmarshal(env.Payload, &v); err != nil || v != 2 {
		t.Fatalf("payload %x: %d, %v; want 2", env.Payload, v, err)
	}

	// The stream is full: discard = new refuses the fourth event.
	err = p.Publish(ctx, 3)
	if err == nil {
		err = p.Flush(ctx)
	}
	if err == nil || !strings.Contains(err.Error(), "maximum messages exceeded") {
		t.Fatalf("a fourth event in a stream of max_msgs 3 with discard = new: %v; want the stream's refusal", err)
	}

	// A Publish that reports an earlier event's failure says that its
	// own event was not sent, and does not count it as published.
	var published uint64
	testutil.Eventually(t, 10*time.Second, "a Publish reporting an earlier failure", func() bool {
		published = p.Stats().Published
		err = p.Publish(ctx, 4)
		return err != nil
	})
	if !strings.Contains(err.Error(), "this event was not sent") || !strings.Contains(err.Error(), "maximum messages exceeded") {
		t.Fatalf("Publish after an earlier event failed: %v; want it to say its event was not sent, and why", err)
	}
	if n := p.Stats().Published; n != published {
		t.Fatalf("the event not sent was counted as published (%d, then %d)", published, n)
	}
}
