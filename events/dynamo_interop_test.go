//go:build interop

package events_test

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/codec"
	"github.com/loomrt/loom/events"
)

// TestDynamoDecodesLoomEnvelopesOnNATS takes what a Loom publisher puts on
// core NATS and reads it as Dynamo does (python3-msgpack, Dynamo's five
// fields and types, published_at in milliseconds).
func TestInteropDynamoDecodesLoomEnvelopesOnNATS(t *testing.T) {
	s := newSystem(t, "nats")
	rt := s.Runtime()
	nc, err := nats.Connect(s.NATS.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	scope := events.Scope{Namespace: "interop", Component: "go"}
	subject, _ := events.Subject(scope, "kv_events")
	raw, err := nc.SubscribeSync(subject)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	pub := publisher[kv](t, rt, scope, "kv_events")
	const n = 5
	var hexes []string
	for i := range n {
		if err := pub.Publish(t.Context(), kv{Hashes: []uint64{uint64(i)}, Note: "loom"}); err != nil {
			t.Fatal(err)
		}
		m, err := raw.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		hexes = append(hexes, hex.EncodeToString(m.Data))
	}
	py := startPy(t, append([]string{"decode"}, hexes...)...)
	for i := range n {
		js, payload, _ := strings.Cut(py.line("env"), " ")
		var env struct {
			Topic       string `json:"topic"`
			PublisherID uint64 `json:"publisher_id"`
			Sequence    uint64 `json:"sequence"`
			PublishedAt int64  `json:"published_at"`
		}
		if err := json.Unmarshal([]byte(js), &env); err != nil {
			t.Fatal(err)
		}
		if env.Topic != "kv_events" || env.Sequence != uint64(i) || env.PublisherID == 0 ||
			time.Since(time.UnixMilli(env.PublishedAt)).Abs() > time.Minute {
			t.Fatalf("Dynamo's reading of event %d: %+v", i, env)
		}
		b, _ := hex.DecodeString(payload)
		var v kv
		if err := codec.MsgPack.Unmarshal(b, &v); err != nil || v.Hashes[0] != uint64(i) {
			t.Fatalf("payload %d: %+v %v", i, v, err)
		}
	}
}

// TestLoomReadsDynamoEnvelopesOnNATS publishes envelopes written as
// Dynamo writes them (python3-msgpack) and subscribes with Loom.
func TestInteropLoomReadsDynamoEnvelopesOnNATS(t *testing.T) {
	s := newSystem(t, "nats")
	rt := s.Runtime()
	nc, err := nats.Connect(s.NATS.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	sub := subscribe[kv](t, rt, events.Scope{Namespace: "interop", Component: events.Any}, "kv_events")
	const n = 5
	py := startPy(t, "encode", fmt.Sprint(n))
	subject, _ := events.Subject(events.Scope{Namespace: "interop", Component: "py"}, "kv_events")
	for range n {
		b, err := hex.DecodeString(py.line("env"))
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.Publish(subject, b); err != nil {
			t.Fatal(err)
		}
	}
	for i, ev := range collect(t, sub, n, 10*time.Second) {
		if ev.Sequence != uint64(i) || ev.PublisherID != 77 || ev.Value.Note != "libzmq" || ev.Value.Hashes[0] != uint64(i) ||
			time.Since(ev.PublishedAt).Abs() > time.Minute {
			t.Fatalf("event %d from Dynamo's envelope: %+v (published %v)", i, ev, ev.PublishedAt)
		}
	}
	if st := sub.Stats(); st.Malformed != 0 || st.Lost != 0 {
		t.Fatalf("stats %+v", st)
	}
}
