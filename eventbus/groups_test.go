package eventbus_test

import (
	"context"
	"fmt"
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
