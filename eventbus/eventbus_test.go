package eventbus_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/loomrt/loom/eventbus"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/objectstore"
)

// collector records the bodies a group handled.
type collector struct {
	mu     sync.Mutex
	bodies map[string]int
	n      atomic.Int64
}

func newCollector() *collector { return &collector{bodies: map[string]int{}} }

func (c *collector) HandleMessage(ctx context.Context, msg *eventbus.Message) error {
	c.mu.Lock()
	c.bodies[string(msg.Body)]++
	c.mu.Unlock()
	c.n.Add(1)
	return nil
}

func TestGroupsShareMessagesAndEveryGroupGetsAll(t *testing.T) {
	modes(t, func(t *testing.T, js bool) {
		ns := startNATS(t, nil)
		b := newBus(t, busConfig(ns, js))
		ctx := ctxFor(t, 20*time.Second)
		a1, a2, other := newCollector(), newCollector(), newCollector()
		for _, r := range []struct {
			group string
			c     *collector
		}{{"indexer", a1}, {"indexer", a2}, {"auditor", other}} {
			if err := b.RegisterConsumer("", "coze.app.created", r.group, r.c); err != nil {
				t.Fatal(err)
			}
		}
		p, err := b.NewProducer("", "coze.app.created", "producers", 3)
		if err != nil {
			t.Fatal(err)
		}
		const n = 200
		for i := range n / 2 {
			if err := p.Send(ctx, fmt.Appendf(nil, "app-%d", i)); err != nil {
				t.Fatal(err)
			}
		}
		var batch [][]byte
		for i := n / 2; i < n; i++ {
			batch = append(batch, fmt.Appendf(nil, "app-%d", i))
		}
		if err := p.BatchSend(ctx, batch); err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, 10*time.Second, "both groups got every message", func() bool {
			return a1.n.Load()+a2.n.Load() == n && other.n.Load() == n
		})
		if a1.n.Load() == 0 || a2.n.Load() == 0 {
			t.Errorf("the group's members handled %d and %d; want both some", a1.n.Load(), a2.n.Load())
		}
		for i := range n {
			body := fmt.Sprintf("app-%d", i)
			if got := a1.bodies[body] + a2.bodies[body]; got != 1 {
				t.Errorf("%s handled %d times in group indexer, want 1", body, got)
			}
		}
	})
}

func TestJetStreamGroupReceivesWhatWasSentBeforeItRan(t *testing.T) {
	ns := startNATS(t, nil)
	b := newBus(t, busConfig(ns, true))
	ctx := ctxFor(t, 10*time.Second)
	p, err := b.NewProducer("", "coze.workflow.done", "", 3)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.BatchSend(ctx, [][]byte{[]byte("a"), []byte("b")}); err != nil {
		t.Fatal(err)
	}
	c := newCollector()
	if err := b.RegisterConsumer("", "coze.workflow.done", "late", c); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "the late group got both messages", func() bool { return c.n.Load() == 2 })
}

// TestShardingKeyNeverDropsDistinctMessages: Coze Studio's EventBus used
// the sharding key as the message id ("key-index"), so a second batch with
// the same key was dropped by the server's duplicate window. Here every
// message arrives, and WithOrderly keeps each key's order.
func TestShardingKeyNeverDropsDistinctMessages(t *testing.T) {
	ns := startNATS(t, nil)
	b := newBus(t, busConfig(ns, true))
	ctx := ctxFor(t, 20*time.Second)
	var mu sync.Mutex
	order := map[string][]int{}
	var n atomic.Int64
	err := b.RegisterConsumer("", "orders", "billing", eventbus.HandlerFunc(func(ctx context.Context, msg *eventbus.Message) error {
		var seq int
		fmt.Sscanf(string(msg.Body), "%d", &seq)
		mu.Lock()
		order[msg.ShardingKey] = append(order[msg.ShardingKey], seq)
		mu.Unlock()
		time.Sleep(time.Millisecond)
		n.Add(1)
		return nil
	}), eventbus.WithOrderly(), eventbus.WithConcurrency(8))
	if err != nil {
		t.Fatal(err)
	}
	p, err := b.NewProducer("", "orders", "", 3)
	if err != nil {
		t.Fatal(err)
	}
	seq := map[string]int{}
	for batch := range 4 {
		for _, key := range []string{"user-1", "user-2"} {
			var bodies [][]byte
			for range 25 {
				bodies = append(bodies, fmt.Appendf(nil, "%d", seq[key]))
				seq[key]++
			}
			if err := p.BatchSend(ctx, bodies, eventbus.WithShardingKey(key)); err != nil {
				t.Fatalf("batch %d: %v", batch, err)
			}
		}
	}
	testutil.Eventually(t, 10*time.Second, "all 200 messages handled", func() bool { return n.Load() == 200 })
	mu.Lock()
	defer mu.Unlock()
	for key, got := range order {
		for i, s := range got {
			if s != i {
				t.Fatalf("key %s: message %d handled in position %d; want the order sent", key, s, i)
			}
		}
	}
}

func TestFailingMessageBacksOffThenIsDeadLettered(t *testing.T) {
	modes(t, func(t *testing.T, js bool) {
		ns := startNATS(t, nil)
		cfg := busConfig(ns, js)
		cfg.Queue.BackoffInitial = 50 * time.Millisecond
		cfg.Queue.BackoffMax = time.Second
		b := newBus(t, cfg)
		ctx := ctxFor(t, 20*time.Second)
		var mu sync.Mutex
		var at []time.Time
		err := b.RegisterConsumer("", "mail.send", "mailer", eventbus.HandlerFunc(func(ctx context.Context, msg *eventbus.Message) error {
			mu.Lock()
			at = append(at, time.Now())
			mu.Unlock()
			return fmt.Errorf("smtp refused attempt %d", msg.Deliveries)
		}), eventbus.WithMaxDeliver(4))
		if err != nil {
			t.Fatal(err)
		}
		p, _ := b.NewProducer("", "mail.send", "", 3)
		if err := p.Send(ctx, []byte("hello")); err != nil {
			t.Fatal(err)
		}
		nc, _ := nats.Connect(ns.ClientURL())
		defer nc.Close()
		jsc, _ := jetstream.New(nc)
		var dl *jetstream.RawStreamMsg
		testutil.Eventually(t, 10*time.Second, "a dead letter", func() bool {
			s, err := jsc.Stream(ctx, eventbus.DeadLetterStream("mail.send"))
			if err != nil {
				return false
			}
			dl, err = s.GetMsg(ctx, 1)
			return err == nil
		})
		mu.Lock()
		defer mu.Unlock()
		if len(at) != 4 {
			t.Fatalf("%d attempts, want 4", len(at))
		}
		var gaps []string
		for i := 1; i < len(at); i++ {
			gap := at[i].Sub(at[i-1])
			want := 50 * time.Millisecond << (i - 1)
			gaps = append(gaps, gap.Round(time.Millisecond).String())
			if gap < want*9/10 {
				t.Errorf("gap %d is %s, want at least about %s", i, gap, want)
			}
		}
		t.Logf("gaps: %s", strings.Join(gaps, ", "))
		if string(dl.Data) != "hello" || dl.Header.Get("Loom-Dlq-Deliveries") != "4" ||
			dl.Header.Get("Loom-Dlq-Error") != "smtp refused attempt 4" || dl.Header.Get("Loom-Dlq-Group") == "" {
			t.Errorf("dead letter %q with headers %v", dl.Data, dl.Header)
		}
	})
}

func TestShutdownDrainsRunningHandlers(t *testing.T) {
	modes(t, func(t *testing.T, js bool) {
		ns := startNATS(t, nil)
		b, err := eventbus.New(busConfig(ns, js))
		if err != nil {
			t.Fatal(err)
		}
		ctx := ctxFor(t, 20*time.Second)
		started := make(chan struct{}, 10)
		var finished atomic.Int64
		err = b.RegisterConsumer("", "reports", "renderer", eventbus.HandlerFunc(func(ctx context.Context, msg *eventbus.Message) error {
			started <- struct{}{}
			time.Sleep(300 * time.Millisecond)
			finished.Add(1)
			return nil
		}), eventbus.WithConcurrency(2))
		if err != nil {
			t.Fatal(err)
		}
		p, _ := b.NewProducer("", "reports", "", 3)
		if err := p.BatchSend(ctx, [][]byte{[]byte("1"), []byte("2")}); err != nil {
			t.Fatal(err)
		}
		<-started
		<-started
		if err := b.Shutdown(ctx); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		if n := finished.Load(); n != 2 {
			t.Errorf("Shutdown returned with %d of 2 running handlers finished", n)
		}
		if js {
			// Both were acked: nothing left for the group. An ack is a
			// publish on the bus's connection and this query travels on
			// another, so the server may answer it before it has applied
			// the acks: wait for them.
			nc, _ := nats.Connect(ns.ClientURL())
			defer nc.Close()
			jsc, _ := jetstream.New(nc)
			c, err := jsc.Consumer(ctx, eventbus.StreamName("reports"), "renderer")
			if err != nil {
				t.Fatal(err)
			}
			var info *jetstream.ConsumerInfo
			testutil.Eventually(t, 5*time.Second, "the server to apply both acks", func() bool {
				info, err = c.Info(ctx)
				return err == nil && info.NumAckPending == 0 && info.NumPending == 0
			})
		}
		if err := b.RegisterConsumer("", "reports", "late", newCollector()); err == nil {
			t.Error("RegisterConsumer after Shutdown succeeded")
		}
	})
}

func TestCloseCancelsRunningHandlersAtOnce(t *testing.T) {
	modes(t, func(t *testing.T, js bool) {
		ns := startNATS(t, nil)
		cfg := busConfig(ns, js)
		cfg.Queue.AckWait = 30 * time.Second // a message not handed back would wait this long
		b, err := eventbus.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx := ctxFor(t, 20*time.Second)
		started := make(chan struct{}, 1)
		cancelled := make(chan error, 1)
		err = b.RegisterConsumer("", "reports", "renderer", eventbus.HandlerFunc(func(ctx context.Context, msg *eventbus.Message) error {
			started <- struct{}{}
			<-ctx.Done()
			cancelled <- ctx.Err()
			return ctx.Err()
		}))
		if err != nil {
			t.Fatal(err)
		}
		p, _ := b.NewProducer("", "reports", "", 3)
		if err := p.Send(ctx, []byte("1")); err != nil {
			t.Fatal(err)
		}
		<-started
		if err := b.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if err := <-cancelled; !errors.Is(err, context.Canceled) {
			t.Fatalf("handler's context ended with %v, want Canceled", err)
		}
		if err := b.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		if err := b.Shutdown(ctx); err != nil {
			t.Fatalf("Shutdown after Close: %v", err)
		}
		if err := b.RegisterConsumer("", "reports", "late", newCollector()); err == nil {
			t.Error("RegisterConsumer after Close succeeded")
		}
		if js {
			// The message was handed back: a new member of the group gets
			// it before AckWait.
			b2 := newBus(t, cfg)
			got := make(chan string, 1)
			err := b2.RegisterConsumer("", "reports", "renderer", eventbus.HandlerFunc(func(ctx context.Context, msg *eventbus.Message) error {
				got <- string(msg.Body)
				return nil
			}))
			if err != nil {
				t.Fatal(err)
			}
			select {
			case body := <-got:
				if body != "1" {
					t.Fatalf("got %q, want 1", body)
				}
			case <-time.After(15 * time.Second):
				t.Fatal("the message of the closed bus was not handed back before AckWait")
			}
		}
	})
}

func TestLargeEventsTravelByReferenceOrAreRefused(t *testing.T) {
	modes(t, func(t *testing.T, js bool) {
		ns := startNATS(t, func(o *server.Options) { o.MaxPayload = 64 << 10 })
		b := newBus(t, busConfig(ns, js))
		ctx := ctxFor(t, 20*time.Second)
		got := make(chan []byte, 1)
		if err := b.RegisterConsumer("", "docs.parsed", "indexer", eventbus.HandlerFunc(func(ctx context.Context, msg *eventbus.Message) error {
			got <- msg.Body
			return nil
		})); err != nil {
			t.Fatal(err)
		}
		p, _ := b.NewProducer("", "docs.parsed", "", 3)
		big := bytes.Repeat([]byte("x"), 300_000)
		if err := p.Send(ctx, big); err != nil {
			t.Fatal(err)
		}
		select {
		case body := <-got:
			if !bytes.Equal(body, big) {
				t.Fatalf("got %d bytes back, want the %d sent", len(body), len(big))
			}
		case <-ctx.Done():
			t.Fatal("large event not delivered")
		}

		cfg := busConfig(ns, js)
		cfg.Queue.LargePayloads = "reject"
		strict := newBus(t, cfg)
		sp, _ := strict.NewProducer("", "docs.parsed", "", 3)
		err := sp.Send(ctx, big)
		var tooLarge *objectstore.TooLargeError
		if !errors.As(err, &tooLarge) || !strings.Contains(err.Error(), "300000") || !strings.Contains(err.Error(), "65536") {
			t.Errorf("Send of 300000 bytes with reject: %v; want a TooLargeError naming size and limit", err)
		}
	})
}

func TestNameServerPicksTheServers(t *testing.T) {
	home := startNATS(t, nil)
	other := startNATS(t, nil)
	b := newBus(t, busConfig(home, false))
	ctx := ctxFor(t, 10*time.Second)
	nc, err := nats.Connect(other.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	sub, err := nc.SubscribeSync("audit.log")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil { // the server has the interest
		t.Fatal(err)
	}
	p, err := b.NewProducer(other.ClientURL(), "audit.log", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Send(ctx, []byte("to the other servers")); err != nil {
		t.Fatal(err)
	}
	m, err := sub.NextMsg(5 * time.Second)
	if err != nil || string(m.Data) != "to the other servers" {
		t.Fatalf("the other server got %v, %v", m, err)
	}
}
