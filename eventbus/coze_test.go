package eventbus_test

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/loomrt/loom/eventbus"
	"github.com/loomrt/loom/internal/testutil"
)

// TestCozeShardingKeyHeaderBothWays: a message sent as Coze Studio's NATS
// producer sends it reaches a Loom consumer: on Core NATS with its key
// (Coze writes only a Sharding-Key header), on JetStream without one
// (Coze writes no header there, only the message id "<key>-<index>"); a
// Loom producer's message carries Sharding-Key on both.
func TestCozeShardingKeyHeaderBothWays(t *testing.T) {
	modes(t, func(t *testing.T, jetStream bool) {
		ns := startNATS(t, nil)
		b := newBus(t, busConfig(ns, jetStream))
		topic := "coze_keys"
		got := make(chan *eventbus.Message, 4)
		if err := b.RegisterConsumer("", topic, "g", eventbus.HandlerFunc(func(_ context.Context, m *eventbus.Message) error {
			got <- m
			return nil
		}), eventbus.WithConsumerOrderly(true)); err != nil {
			t.Fatal(err)
		}
		nc, err := nats.Connect(ns.ClientURL())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		raw, err := nc.SubscribeSync(topic)
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		// What Coze's producer sends. On Core NATS the consumer's queue
		// subscription reaches the server asynchronously: send until it
		// arrives.
		m := &nats.Msg{Subject: topic, Data: []byte("from coze"), Header: nats.Header{"Sharding-Key": []string{"space-1"}}}
		wantKey := "space-1"
		legacy, err := nc.JetStream()
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.After(10 * time.Second)
	wait:
		for {
			if jetStream {
				wantKey = ""
				if _, err := legacy.Publish(topic, []byte("from coze"), nats.MsgId("space-1-0")); err != nil {
					t.Fatal(err)
				}
			} else if err := nc.PublishMsg(m); err != nil {
				t.Fatal(err)
			}
			select {
			case msg := <-got:
				if msg.ShardingKey != wantKey || string(msg.Body) != "from coze" {
					t.Fatalf("Loom consumer got %+v; want body \"from coze\", key %q", msg, wantKey)
				}
				break wait
			case <-time.After(100 * time.Millisecond):
			case <-deadline:
				t.Fatal("Coze's message never reached the Loom consumer")
			}
		}
		// What Loom's producer sends, as Coze's consumer reads it.
		p, err := b.NewProducer("", topic, "g", 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Send(t.Context(), []byte("from loom"), eventbus.WithShardingKey("space-2")); err != nil {
			t.Fatal(err)
		}
		var rm *nats.Msg
		for rm == nil || string(rm.Data) == "from coze" {
			if rm, err = raw.NextMsg(5 * time.Second); err != nil {
				t.Fatal(err)
			}
		}
		if rm.Header.Get("Sharding-Key") != "space-2" || string(rm.Data) != "from loom" {
			t.Fatalf("on the wire: headers %v, body %q", rm.Header, rm.Data)
		}
	})
}

// TestCozeCreatedStreamKeepsItsLimits: Coze Studio creates <topic>_STREAM
// with 1,000,000 messages and 1 GiB; a Loom producer and consumer use it
// as it is and warn about the differences.
func TestCozeCreatedStreamKeepsItsLimits(t *testing.T) {
	ns := startNATS(t, nil)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	topic := "coze_topic"
	if _, err := js.CreateStream(t.Context(), jetstream.StreamConfig{Name: eventbus.StreamName(topic), Subjects: []string{topic},
		MaxMsgs: 1_000_000, MaxBytes: 1 << 30, Storage: jetstream.MemoryStorage, Description: "coze"}); err != nil {
		t.Fatal(err)
	}
	var logs testutil.SyncBuffer
	cfg := busConfig(ns, true)
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	b := newBus(t, cfg)
	p, err := b.NewProducer("", topic, "g", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Send(t.Context(), []byte("x")); err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(t.Context(), eventbus.StreamName(topic))
	if err != nil {
		t.Fatal(err)
	}
	c := s.CachedInfo().Config
	if c.MaxMsgs != 1_000_000 || c.MaxBytes != 1<<30 || c.Description != "coze" {
		t.Fatalf("Coze's stream changed: max_msgs %d, max_bytes %d, description %q", c.MaxMsgs, c.MaxBytes, c.Description)
	}
	if !strings.Contains(logs.String(), "max_msgs 1000000 (configured unlimited)") {
		t.Fatalf("no warning naming the differences; logs:\n%s", logs.String())
	}
}

// TestCozeCreatedConsumerIsTheGroupsConsumer: Coze Studio's JetStream
// member pulls with js.PullSubscribe(topic, group), which makes the
// durable consumer named as the group; a Loom member of that group
// registers on the same consumer, so the group's messages are shared,
// not handled once by each side.
func TestCozeCreatedConsumerIsTheGroupsConsumer(t *testing.T) {
	ns := startNATS(t, nil)
	topic, group := "opencoze_search_app", "cg_search_app"
	b := newBus(t, busConfig(ns, true))
	p, err := b.NewProducer("", topic, "", 0) // makes the stream, as Coze's would
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	legacy, err := nc.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	sub, err := legacy.PullSubscribe(topic, group)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	c := newCollector()
	if err := b.RegisterConsumer("", topic, group, c); err != nil {
		t.Fatal(err)
	}
	if err := p.BatchSend(t.Context(), [][]byte{[]byte("1"), []byte("2"), []byte("3")}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "the Loom member handled the three", func() bool { return c.n.Load() == 3 })
	js, _ := jetstream.New(nc)
	stream, err := js.Stream(t.Context(), eventbus.StreamName(topic))
	if err != nil {
		t.Fatal(err)
	}
	names := stream.ConsumerNames(t.Context())
	var all []string
	for n := range names.Name() {
		all = append(all, n)
	}
	if len(all) != 1 || all[0] != group {
		t.Fatalf("consumers of stream %s: %v; want only Coze's %s", eventbus.StreamName(topic), all, group)
	}
	// Coze's member, pulling now, finds nothing left: the group's
	// messages were handled once.
	if msgs, err := sub.Fetch(1, nats.MaxWait(200*time.Millisecond)); err == nil && len(msgs) > 0 {
		t.Fatalf("Coze's member of the group got %q after Loom's handled it", msgs[0].Data)
	}
}

// TestOrderlyKeepsTheOrderOfMessagesWithOnlyLoomsOldHeader: a message an
// earlier Loom stored with only Loom-Sharding-Key is handled in its key's
// order by a WithOrderly JetStream consumer, as one with Sharding-Key is.
func TestOrderlyKeepsTheOrderOfMessagesWithOnlyLoomsOldHeader(t *testing.T) {
	ns := startNATS(t, nil)
	b := newBus(t, busConfig(ns, true))
	const topic, perKey = "legacy_keys", 40
	var mu sync.Mutex
	order := map[string][]int{}
	busy := map[string]bool{}
	var overlaps, n atomic.Int64
	err := b.RegisterConsumer("", topic, "g", eventbus.HandlerFunc(func(_ context.Context, m *eventbus.Message) error {
		seq, _ := strconv.Atoi(string(m.Body))
		mu.Lock()
		if busy[m.ShardingKey] {
			overlaps.Add(1)
		}
		busy[m.ShardingKey] = true
		order[m.ShardingKey] = append(order[m.ShardingKey], seq)
		mu.Unlock()
		time.Sleep(time.Millisecond) // the handler's work, for another worker to overtake it if it could
		mu.Lock()
		busy[m.ShardingKey] = false
		mu.Unlock()
		n.Add(1)
		return nil
	}), eventbus.WithOrderly(), eventbus.WithConcurrency(8))
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	for i := range perKey {
		for _, key := range []string{"space-1", "space-2"} {
			m := &nats.Msg{Subject: topic, Data: []byte(strconv.Itoa(i)), Header: nats.Header{eventbus.LoomShardingKeyHeader: []string{key}}}
			if _, err := js.PublishMsg(t.Context(), m); err != nil {
				t.Fatal(err)
			}
		}
	}
	testutil.Eventually(t, 20*time.Second, "every message handled", func() bool { return n.Load() == 2*perKey })
	mu.Lock()
	defer mu.Unlock()
	if o := overlaps.Load(); o > 0 {
		t.Errorf("%d messages ran beside another of their key", o)
	}
	for key, got := range order {
		for i, s := range got {
			if s != i {
				t.Fatalf("key %s: message %d handled in position %d; want the order sent (%v)", key, s, i, got)
			}
		}
	}
}

// TestATopicAnotherStreamTakesIsRefusedNamingThatStream: a topic whose
// subject a stream of another name already takes (Coze Studio's for a
// topic with a ':', whose stream name keeps it; an operator's wider one)
// is refused with an error that names that stream and what to do, not
// only the server's "subjects overlap with an existing stream".
func TestATopicAnotherStreamTakesIsRefusedNamingThatStream(t *testing.T) {
	ns := startNATS(t, nil)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	for name, subject := range map[string]string{"app:events_STREAM": "app:events", "WIDE": "wide.*"} {
		if _, err := js.CreateStream(t.Context(), jetstream.StreamConfig{Name: name, Subjects: []string{subject}, Storage: jetstream.MemoryStorage}); err != nil {
			t.Fatal(err)
		}
	}
	b := newBus(t, busConfig(ns, true))
	h := eventbus.HandlerFunc(func(context.Context, *eventbus.Message) error { return nil })
	for topic, stream := range map[string]string{"app:events": "app:events_STREAM", "wide.x": "WIDE"} {
		t.Run("topic "+topic, func(t *testing.T) {
			_, perr := b.NewProducer("", topic, "", 0)
			for what, err := range map[string]error{"RegisterConsumer": b.RegisterConsumer("", topic, "g", h), "NewProducer": perr} {
				if err == nil {
					t.Fatalf("%s succeeded", what)
				}
				for _, w := range []string{"stream " + stream + " already takes", "nats stream edit " + stream, eventbus.StreamName(topic)} {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("%s: %v; want it to say %q", what, err, w)
					}
				}
			}
		})
	}
}
