package eventbus_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/loomrt/loom/eventbus"
	"github.com/loomrt/loom/internal/testutil"
)

// deadLetter waits for the first dead letter of topic and returns it.
func deadLetter(t *testing.T, url, topic string) *jetstream.RawStreamMsg {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := ctxFor(t, 15*time.Second)
	var dl *jetstream.RawStreamMsg
	testutil.Eventually(t, 10*time.Second, "a dead letter of "+topic, func() bool {
		s, err := js.Stream(ctx, eventbus.DeadLetterStream(topic))
		if err != nil {
			return false
		}
		dl, err = s.GetMsg(ctx, 1)
		return err == nil
	})
	return dl
}

// TestAHandlerThatAlwaysPanicsIsDeadLetteredAfterMaxDeliver: a panic is a
// failure like an error: retried up to max_deliver attempts, then
// dead-lettered with reason failed and the panic's value as its error.
func TestAHandlerThatAlwaysPanicsIsDeadLetteredAfterMaxDeliver(t *testing.T) {
	modes(t, func(t *testing.T, js bool) {
		ns := startNATS(t, nil)
		b := newBus(t, busConfig(ns, js))
		var tries atomic.Int64
		err := b.RegisterConsumer("", "panics.always", "g", eventbus.HandlerFunc(func(context.Context, *eventbus.Message) error {
			tries.Add(1)
			panic("index out of range")
		}), eventbus.WithMaxDeliver(3))
		if err != nil {
			t.Fatal(err)
		}
		p := producer(t, b, "panics.always")
		if err := p.Send(ctxFor(t, 5*time.Second), []byte("bad")); err != nil {
			t.Fatal(err)
		}
		dl := deadLetter(t, ns.ClientURL(), "panics.always")
		if n := tries.Load(); n != 3 {
			t.Errorf("the handler ran %d times, want 3 (WithMaxDeliver(3))", n)
		}
		if string(dl.Data) != "bad" || dl.Header.Get("Loom-Dlq-Reason") != "failed" ||
			dl.Header.Get("Loom-Dlq-Error") != "handler panicked: index out of range" || dl.Header.Get("Loom-Dlq-Deliveries") != "3" {
			t.Errorf("dead letter %q with headers %v", dl.Data, dl.Header)
		}
	})
}

// TestAHandlerPastHandlerTimeoutHasItsContextEndedAndIsRetried: a
// handler's context has handler_timeout as its deadline, on JetStream as
// on Core NATS: it ends then with DeadlineExceeded (not Canceled, which
// is shutdown), and ctx.Deadline says when, for the calls the handler
// makes. A handler that returns then has failed that attempt, and the
// message is tried again.
func TestAHandlerPastHandlerTimeoutHasItsContextEndedAndIsRetried(t *testing.T) {
	modes(t, func(t *testing.T, js bool) {
		ns := startNATS(t, nil)
		cfg := busConfig(ns, js)
		cfg.Queue.HandlerTimeout = 300 * time.Millisecond
		b := newBus(t, cfg)
		type attempt struct {
			deliveries int
			took       time.Duration
			err        error
		}
		attempts := make(chan attempt, 10)
		err := b.RegisterConsumer("", "slow.jobs", "g", eventbus.HandlerFunc(func(ctx context.Context, m *eventbus.Message) error {
			if m.Deliveries > 1 {
				attempts <- attempt{deliveries: m.Deliveries}
				return nil
			}
			start := time.Now()
			if _, ok := ctx.Deadline(); !ok {
				t.Error("the handler's context has no deadline")
			}
			<-ctx.Done()
			attempts <- attempt{deliveries: m.Deliveries, took: time.Since(start), err: ctx.Err()}
			return ctx.Err()
		}))
		if err != nil {
			t.Fatal(err)
		}
		p := producer(t, b, "slow.jobs")
		if err := p.Send(ctxFor(t, 5*time.Second), []byte("x")); err != nil {
			t.Fatal(err)
		}
		for i := range 2 {
			select {
			case a := <-attempts:
				if i == 0 && (!errors.Is(a.err, context.DeadlineExceeded) || a.took < 250*time.Millisecond || a.took > 5*time.Second) {
					t.Errorf("first attempt: context ended with %v after %s; want DeadlineExceeded after about 300ms", a.err, a.took)
				}
				if a.deliveries != i+1 {
					t.Errorf("attempt %d has Deliveries %d", i+1, a.deliveries)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("attempt %d never came", i+1)
			}
		}
	})
}

// TestAJetStreamHandlerLongerThanAckWaitIsNotRedelivered: within
// handler_timeout, a handler may run past ack_wait: progress reports keep
// the server from delivering its message to another member meanwhile.
func TestAJetStreamHandlerLongerThanAckWaitIsNotRedelivered(t *testing.T) {
	ns := startNATS(t, nil)
	cfg := busConfig(ns, true)
	cfg.Queue.AckWait = 500 * time.Millisecond
	cfg.Queue.HandlerTimeout = time.Minute
	b := newBus(t, cfg)
	var runs atomic.Int64
	done := make(chan struct{})
	err := b.RegisterConsumer("", "long.jobs", "g", eventbus.HandlerFunc(func(ctx context.Context, m *eventbus.Message) error {
		if runs.Add(1) > 1 {
			return nil
		}
		select { // the work: three ack waits
		case <-time.After(1500 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
		close(done)
		return nil
	}), eventbus.WithConcurrency(4))
	if err != nil {
		t.Fatal(err)
	}
	p := producer(t, b, "long.jobs")
	if err := p.Send(ctxFor(t, 5*time.Second), []byte("x")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the long handler never finished")
	}
	if n := runs.Load(); n != 1 {
		t.Fatalf("the message was handled %d times while its handler ran past ack_wait, want once", n)
	}
}

// TestTwoProcessesInOneGroupHandleEachMessageOnce: two buses (two
// connections, as two processes have) registering one group share its
// messages: each is handled once, by one of them.
func TestTwoProcessesInOneGroupHandleEachMessageOnce(t *testing.T) {
	modes(t, func(t *testing.T, js bool) {
		ns := startNATS(t, nil)
		b1, b2 := newBus(t, busConfig(ns, js)), newBus(t, busConfig(ns, js))
		c1, c2 := newCollector(), newCollector()
		if err := b1.RegisterConsumer("", "shared.topic", "workers", c1); err != nil {
			t.Fatal(err)
		}
		if err := b2.RegisterConsumer("", "shared.topic", "workers", c2); err != nil {
			t.Fatal(err)
		}
		if !js {
			// A queue subscription reaches the server asynchronously;
			// messages sent before the second one is there all go to the
			// first member.
			testutil.Eventually(t, 5*time.Second, "both members subscribed", func() bool {
				return ns.Server().GlobalAccount().Interest("shared.topic") == 2
			})
		}
		p, err := b1.NewProducer("", "shared.topic", "", 0)
		if err != nil {
			t.Fatal(err)
		}
		const n = 300
		ctx := ctxFor(t, 20*time.Second)
		batch := numbered(n)
		if err := p.BatchSend(ctx, batch); err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, 10*time.Second, "every message handled", func() bool { return c1.n.Load()+c2.n.Load() >= n })
		// Any duplicate would come within ack_wait; on shutdown, both
		// members settle what they hold.
		for _, b := range []*eventbus.Bus{b1, b2} {
			if err := b.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
		}
		c1.mu.Lock()
		c2.mu.Lock()
		defer c1.mu.Unlock()
		defer c2.mu.Unlock()
		for i := range n {
			body := fmt.Sprintf("m-%d", i)
			if got := c1.bodies[body] + c2.bodies[body]; got != 1 {
				t.Errorf("%s handled %d times, want once", body, got)
			}
		}
		if c1.n.Load() == 0 || c2.n.Load() == 0 {
			t.Errorf("the members handled %d and %d; want both some", c1.n.Load(), c2.n.Load())
		}
	})
}

// TestShutdownPastItsDeadlineLosesNoJetStreamMessage: Shutdown whose
// context ends while a handler runs and more messages wait in the
// consumer's prefetch hands every one of them back at once: a new member
// of the group gets them all well before ack_wait.
func TestShutdownPastItsDeadlineLosesNoJetStreamMessage(t *testing.T) {
	for _, orderly := range []bool{false, true} {
		name := "a group"
		if orderly {
			name = "an orderly group, its key's worker busy"
		}
		t.Run(name, func(t *testing.T) {
			ns := startNATS(t, nil)
			cfg := busConfig(ns, true)
			cfg.Queue.AckWait = 30 * time.Second // what a lost message would wait
			b, err := eventbus.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			started := make(chan struct{}, 10)
			opts := []eventbus.ConsumerOpt{eventbus.WithConcurrency(1)}
			var send []eventbus.SendOpt
			if orderly {
				opts = []eventbus.ConsumerOpt{eventbus.WithConcurrency(2), eventbus.WithOrderly()}
				send = []eventbus.SendOpt{eventbus.WithShardingKey("space-1")}
			}
			err = b.RegisterConsumer("", "held.topic", "g", eventbus.HandlerFunc(func(ctx context.Context, m *eventbus.Message) error {
				started <- struct{}{}
				<-ctx.Done()
				return ctx.Err()
			}), opts...)
			if err != nil {
				t.Fatal(err)
			}
			p := producer(t, b, "held.topic")
			const n = 5
			batch := numbered(n)
			if err := p.BatchSend(ctxFor(t, 5*time.Second), batch, send...); err != nil {
				t.Fatal(err)
			}
			<-started
			sctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			if err := b.Shutdown(sctx); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Shutdown: %v; want the context's DeadlineExceeded", err)
			}
			b2 := newBus(t, cfg)
			c := newCollector()
			if err := b2.RegisterConsumer("", "held.topic", "g", c); err != nil {
				t.Fatal(err)
			}
			testutil.Eventually(t, 10*time.Second, "all messages handed back to the group", func() bool { return c.n.Load() == n })
		})
	}
}

// TestCoreShutdownHandlesTheMessagesQueuedInTheSubscription: on Core
// NATS, Shutdown drains: messages received and waiting for a free worker
// are still handled before it returns.
func TestCoreShutdownHandlesTheMessagesQueuedInTheSubscription(t *testing.T) {
	ns := startNATS(t, nil)
	b, err := eventbus.New(busConfig(ns, false))
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	started := make(chan struct{}, 10)
	var mu sync.Mutex
	var handled []string
	err = b.RegisterConsumer("", "queued.topic", "g", eventbus.HandlerFunc(func(ctx context.Context, m *eventbus.Message) error {
		started <- struct{}{}
		<-release
		mu.Lock()
		handled = append(handled, string(m.Body))
		mu.Unlock()
		return nil
	}), eventbus.WithConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	p := producer(t, b, "queued.topic")
	const n = 5
	batch := numbered(n)
	// The producer shares the consumer's connection: the server has the
	// subscription before the messages.
	if err := p.BatchSend(ctxFor(t, 5*time.Second), batch); err != nil {
		t.Fatal(err)
	}
	<-started // the others wait in the subscription
	shut := make(chan error, 1)
	go func() { shut <- b.Shutdown(ctxFor(t, 20*time.Second)) }()
	// The drain has begun once the subscription is gone from the server.
	testutil.Eventually(t, 5*time.Second, "the subscription drained", func() bool {
		return ns.Server().GlobalAccount().Interest("queued.topic") == 0
	})
	close(release)
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(handled) != n {
		t.Fatalf("Shutdown returned having handled %v; want all %d received", handled, n)
	}
}

// TestOrderlyRetryHoldsItsKeyOnCoreNATS: on Core NATS an orderly group
// retries a failed message in the worker of its key, so the key's later
// messages wait for it and its order holds across the retry. (On
// JetStream the retry is a nak with backoff: the key's later messages are
// handled meanwhile; docs/queues.md says so.)
func TestOrderlyRetryHoldsItsKeyOnCoreNATS(t *testing.T) {
	ns := startNATS(t, nil)
	b := newBus(t, busConfig(ns, false))
	var mu sync.Mutex
	var order []string
	failed := false
	err := b.RegisterConsumer("", "ordered.retry", "g", eventbus.HandlerFunc(func(ctx context.Context, m *eventbus.Message) error {
		mu.Lock()
		defer mu.Unlock()
		if string(m.Body) == "0" && !failed {
			failed = true
			return errors.New("not yet")
		}
		order = append(order, string(m.Body))
		return nil
	}), eventbus.WithOrderly(), eventbus.WithConcurrency(4))
	if err != nil {
		t.Fatal(err)
	}
	p := producer(t, b, "ordered.retry")
	var bodies [][]byte
	for i := range 5 {
		bodies = append(bodies, fmt.Appendf(nil, "%d", i))
	}
	if err := p.BatchSend(ctxFor(t, 5*time.Second), bodies, eventbus.WithShardingKey("space-1")); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "every message handled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(order) == 5
	})
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(order) != "[0 1 2 3 4]" || !failed {
		t.Fatalf("handled %v (first attempt failed: %v); want [0 1 2 3 4], the first retried before the rest", order, failed)
	}
}
