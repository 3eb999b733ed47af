package mocker_test

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/codec"
	"github.com/loomrt/loom/events"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/llm"
	"github.com/loomrt/loom/llm/mocker"
)

// TestWorkerEventsTravelOnTheDocumentedSubjects: docs/llm.md tells an
// engine in any language where a router listens: kv_events on
// namespace.{ns}.component.backend.kv_events, load_metrics beside them,
// each in an event envelope whose payload is the llm type in MessagePack.
// A worker's events are read here off those literal subjects.
func TestWorkerEventsTravelOnTheDocumentedSubjects(t *testing.T) {
	s := newSystem(t, mocker.ClusterConfig{Workers: 1, Worker: fast()})
	ctx := testutil.Timeout(t, 20*time.Second)
	nc, err := s.caller.NATS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := nc.SubscribeSync("namespace.llm.component.backend.kv_events")
	if err != nil {
		t.Fatal(err)
	}
	load, err := nc.SubscribeSync("namespace.llm.component.backend.load_metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer kv.Unsubscribe()
	defer load.Unsubscribe()
	if err := nc.FlushWithContext(ctx); err != nil {
		t.Fatal(err)
	}
	if r := collect(ctx, s.client, llm.Request{ID: "subjects", TokenIDs: prompt(3, 64), MaxTokens: 2}); r.err != nil {
		t.Fatal(r.err)
	}
	w := s.cluster.Workers()[0]
	mp, err := codec.ByName(codec.MsgPackName)
	if err != nil {
		t.Fatal(err)
	}
	read := func(what string, next func(time.Duration) ([]byte, error), v any) events.Envelope {
		t.Helper()
		data, err := next(10 * time.Second)
		if err != nil {
			t.Fatalf("no %s on its documented subject: %v", what, err)
		}
		var env events.Envelope
		if _, err := events.DecodeEnvelope(data, &env); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if err := mp.Unmarshal(env.Payload, v); err != nil {
			t.Fatalf("%s payload: %v", what, err)
		}
		if env.InstanceID != w.ID() || env.Topic != what {
			t.Fatalf("%s from instance %x on topic %q; want the worker %x and %q", what, env.InstanceID, env.Topic, w.ID(), what)
		}
		return env
	}
	var ev llm.KvEvent
	read(llm.TopicKvEvents, func(d time.Duration) ([]byte, error) { m, err := kv.NextMsg(d); return msgData(m), err }, &ev)
	if ev.EventID != 1 || ev.Stored == nil || len(ev.Stored.BlockHashes) == 0 {
		t.Errorf("first kv_event: %+v; want event 1 storing the prompt's blocks", ev)
	}
	var lm llm.LoadMetrics
	read(llm.TopicLoadMetrics, func(d time.Duration) ([]byte, error) { m, err := load.NextMsg(d); return msgData(m), err }, &lm)
	if lm.TotalSlots == 0 || lm.TotalBlocks == 0 {
		t.Errorf("a load report: %+v; want the worker's slots and blocks", lm)
	}
}

func msgData(m *nats.Msg) []byte {
	if m == nil {
		return nil
	}
	return m.Data
}
