package eventbus_test

import (
	"fmt"
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
