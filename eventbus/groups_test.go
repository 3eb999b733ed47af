package eventbus_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/loomrt/loom/eventbus"
	"github.com/loomrt/loom/internal/testutil"
)

// TestGroupsWhoseNamesDifferOnlyInPunctuationEachGetEveryMessage: distinct
// groups are distinct JetStream consumers, even where their names differ
// only in characters other than letters, digits, '-' and '_'; and a
// group's consumer is named as the group, as Coze Studio's consumer names
// its durable, so a Loom and a Coze member of one group share it.
func TestGroupsWhoseNamesDifferOnlyInPunctuationEachGetEveryMessage(t *testing.T) {
	ns := startNATS(t, nil)
	b := newBus(t, busConfig(ns, true))
	ctx := ctxFor(t, 20*time.Second)
	const topic = "orders.created"
	groups := []string{"billing:eu", "billing_eu", "索引", "日志", "a/b", "a_b"}
	got := make([]*collector, len(groups))
	for i, g := range groups {
		got[i] = newCollector()
		if err := b.RegisterConsumer("", topic, g, got[i]); err != nil {
			t.Fatalf("group %q: %v", g, err)
		}
	}
	p, err := b.NewProducer("", topic, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	for i := range n {
		if err := p.Send(ctx, fmt.Appendf(nil, "order-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, 10*time.Second, "every group handled every message", func() bool {
		for _, c := range got {
			if c.n.Load() < n {
				return false
			}
		}
		return true
	})
	for i, c := range got {
		if c.n.Load() != n {
			t.Errorf("group %q handled %d messages, want %d", groups[i], c.n.Load(), n)
		}
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	for _, g := range []string{"billing:eu", "索引"} {
		if _, err := js.Consumer(ctx, eventbus.StreamName(topic), g); err != nil {
			t.Errorf("consumer %q of stream %s: %v; want it named as the group", g, eventbus.StreamName(topic), err)
		}
	}
}

// TestAPanickingHandlerIsRetriedAndTheGroupGoesOn: a panic is an error:
// the message is tried again, and the group keeps handling the others.
func TestAPanickingHandlerIsRetriedAndTheGroupGoesOn(t *testing.T) {
	modes(t, func(t *testing.T, js bool) {
		ns := startNATS(t, nil)
		b := newBus(t, busConfig(ns, js))
		ctx := ctxFor(t, 20*time.Second)
		var mu sync.Mutex
		tries := map[string]int{}
		done := map[string]bool{}
		err := b.RegisterConsumer("", "panics", "g", eventbus.HandlerFunc(func(ctx context.Context, msg *eventbus.Message) error {
			mu.Lock()
			tries[string(msg.Body)]++
			first := tries[string(msg.Body)] == 1
			mu.Unlock()
			if first && string(msg.Body) == "bad" {
				panic("boom")
			}
			mu.Lock()
			done[string(msg.Body)] = true
			mu.Unlock()
			return nil
		}))
		if err != nil {
			t.Fatal(err)
		}
		p, err := b.NewProducer("", "panics", "", 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.BatchSend(ctx, [][]byte{[]byte("bad"), []byte("good")}); err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, 10*time.Second, "both messages handled", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return done["bad"] && done["good"]
		})
		mu.Lock()
		defer mu.Unlock()
		if tries["bad"] != 2 {
			t.Errorf("the message whose handler panicked was tried %d times, want 2", tries["bad"])
		}
	})
}

// TestATopicWhoseStreamNameIsTakenIsRefused: topics that differ only in
// characters a stream name replaces by '_' ("a.b", "a_b", "a:b") name
// one stream, which takes the first one's subject only. The second was
// once taken anyway: its group's consumer, of the same name on that
// stream, was rewritten to filter the second topic, so the first topic's
// group silently stopped getting its messages, and every send to the
// second failed with "no response from stream". It is now refused,
// naming the stream, its subjects and what to do; the first topic's group
// goes on.
func TestATopicWhoseStreamNameIsTakenIsRefused(t *testing.T) {
	ns := startNATS(t, nil)
	b := newBus(t, busConfig(ns, true))
	first := newCollector()
	if err := b.RegisterConsumer("", "app.events", "g", first); err != nil {
		t.Fatal(err)
	}
	for _, topic := range []string{"app_events", "app:events"} {
		_, perr := b.NewProducer("", topic, "", 0)
		for what, err := range map[string]error{"RegisterConsumer": b.RegisterConsumer("", topic, "g", newCollector()), "NewProducer": perr} {
			if err == nil {
				t.Fatalf("%s of topic %s succeeded", what, topic)
			}
			for _, w := range []string{"stream app_events_STREAM", "[app.events]", "topic " + topic, "another topic"} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%s of topic %s: %v; want it to say %q", what, topic, err, w)
				}
			}
		}
	}
	p, err := b.NewProducer("", "app.events", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Send(ctxFor(t, 5*time.Second), []byte("still mine")); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "the first topic's group got its message", func() bool { return first.n.Load() == 1 })
}

// TestACoreGroupIsSubscribedWhenRegisterConsumerReturns: RegisterConsumer
// returns once the server has the group's subscription, so a message sent
// after it returns, from any connection, reaches the group. It once
// returned with the subscription still on its way to the server: a
// message sent at once from another process was lost to the group.
func TestACoreGroupIsSubscribedWhenRegisterConsumerReturns(t *testing.T) {
	ns := startNATS(t, nil)
	b := newBus(t, busConfig(ns, false))
	for i := range 5 {
		topic := fmt.Sprintf("subscribed.%d", i)
		if err := b.RegisterConsumer("", topic, "g", newCollector()); err != nil {
			t.Fatal(err)
		}
		if n := ns.Server().GlobalAccount().Interest(topic); n != 1 {
			t.Fatalf("RegisterConsumer of %s returned with %d subscriptions at the server, want 1", topic, n)
		}
	}
}
