package eventbus_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/eventbus"
	"github.com/loomrt/loom/internal/testutil"
)

// TestConsumersCarryOnAcrossAServerRestart: the NATS server stops and
// starts again on the same port (and, for JetStream, the same store); the
// bus's producer and consumers reconnect and carry on, and a JetStream
// group started after the restart gets what was stored before it.
func TestConsumersCarryOnAcrossAServerRestart(t *testing.T) {
	modes(t, func(t *testing.T, js bool) {
		port := testutil.FreePort(t)
		dir := t.TempDir()
		opts := embedded.NATSOptions{Port: port, JetStream: true, StoreDir: dir}
		ns, err := embedded.StartNATS(opts)
		if err != nil {
			t.Fatal(err)
		}
		cfg := busConfig(ns, js)
		cfg.Queue.Storage = "file"
		b, err := eventbus.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := b.Shutdown(ctxFor(t, 10*time.Second)); err != nil {
				t.Errorf("Shutdown: %v", err)
			}
		}()
		ctx := ctxFor(t, 30*time.Second)
		var mu sync.Mutex
		seen := map[string]int{}
		record := eventbus.HandlerFunc(func(ctx context.Context, msg *eventbus.Message) error {
			mu.Lock()
			seen[string(msg.Body)]++
			mu.Unlock()
			return nil
		})
		has := func(body string) func() bool {
			return func() bool {
				mu.Lock()
				defer mu.Unlock()
				return seen[body] > 0
			}
		}
		if err := b.RegisterConsumer("", "restart.topic", "g", record); err != nil {
			t.Fatal(err)
		}
		p, err := b.NewProducer("", "restart.topic", "", -1)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Send(ctx, []byte("before")); err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, 10*time.Second, "the message sent before the restart", has("before"))
		ns.Shutdown()
		ns2, err := embedded.StartNATS(opts)
		if err != nil {
			t.Fatal(err)
		}
		defer ns2.Shutdown() // after the bus's Shutdown, a cleanup
		// Send until one arrives: on Core NATS a message sent before the
		// subscription is back is lost to the group.
		sent := 0
		testutil.Eventually(t, 20*time.Second, "a message sent after the restart reached the group", func() bool {
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			if err := p.Send(sctx, fmt.Appendf(nil, "after-%d", sent)); err == nil {
				sent++
			}
			for i := range sent {
				if has(fmt.Sprintf("after-%d", i))() {
					return true
				}
			}
			return false
		})
		if js {
			// A group that starts after the restart gets what was stored
			// before it.
			late := newCollector()
			if err := b.RegisterConsumer("", "restart.topic", "late", late); err != nil {
				t.Fatal(err)
			}
			testutil.Eventually(t, 10*time.Second, "the late group got the message stored before the restart", func() bool {
				late.mu.Lock()
				defer late.mu.Unlock()
				return late.bodies["before"] == 1
			})
		}
	})
}

// TestShutdownWithTheServerDownReturnsAtOnce: with the server gone there
// is nothing more to drain from it; a consumer's Shutdown does not wait
// out nats.go's ten-second flush (past a runtime's shutdown wait, which
// would cancel running handlers) for an answer that cannot come: neither
// a Core NATS subscription's drain nor a JetStream consumer's hand-back
// of its prefetch.
func TestShutdownWithTheServerDownReturnsAtOnce(t *testing.T) {
	modes(t, func(t *testing.T, js bool) {
		ns := startNATS(t, nil)
		b, err := eventbus.New(busConfig(ns, js))
		if err != nil {
			t.Fatal(err)
		}
		c := newCollector()
		if err := b.RegisterConsumer("", "down.topic", "g", c); err != nil {
			t.Fatal(err)
		}
		p, err := b.NewProducer("", "down.topic", "", 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Send(ctxFor(t, 5*time.Second), []byte("1")); err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, 5*time.Second, "the message handled", func() bool { return c.n.Load() == 1 })
		ns.Shutdown()
		start := time.Now()
		if err := b.Shutdown(ctxFor(t, 5*time.Second)); err != nil {
			t.Fatalf("Shutdown with the server down: %v after %s", err, time.Since(start).Round(time.Millisecond))
		}
	})
}

// TestJetStreamTopicCarriesOnAfterTheServerLostItsStream: the topic's
// stream is gone (an operator deleted it; a server with memory storage
// restarted): the producer's sends make it again and are stored, instead
// of failing until the process restarts, and a group's consumer deleted
// with the stream is made again.
func TestJetStreamTopicCarriesOnAfterTheServerLostItsStream(t *testing.T) {
	t.Run("deleted by an operator", func(t *testing.T) {
		ns := startNATS(t, nil)
		b := newBus(t, busConfig(ns, true))
		ctx := ctxFor(t, 30*time.Second)
		c, p := lostTopicGroup(ctx, t, b)
		nc, err := nats.Connect(ns.ClientURL())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		js, _ := jetstream.New(nc)
		if err := js.DeleteStream(ctx, eventbus.StreamName("lost.topic")); err != nil {
			t.Fatal(err)
		}
		// The group's consumer, deleted with it, is made again, and the
		// stream with it, before any send.
		testutil.Eventually(t, 10*time.Second, "the group's consumer made again", func() bool {
			_, err := js.Consumer(ctx, eventbus.StreamName("lost.topic"), "g")
			return err == nil
		})
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := p.Send(sctx, []byte("after")); err != nil {
			t.Fatalf("Send after the stream was deleted: %v", err)
		}
		testutil.Eventually(t, 15*time.Second, "the group handled the message sent after the delete", func() bool {
			c.mu.Lock()
			defer c.mu.Unlock()
			return c.bodies["after"] == 1
		})
	})
	t.Run("lost in a restart", func(t *testing.T) {
		port := testutil.FreePort(t)
		opts := embedded.NATSOptions{Port: port, JetStream: true}
		ns, err := embedded.StartNATS(opts)
		if err != nil {
			t.Fatal(err)
		}
		b, err := eventbus.New(busConfig(ns, true)) // memory storage
		if err != nil {
			t.Fatal(err)
		}
		ctx := ctxFor(t, 30*time.Second)
		c, p := lostTopicGroup(ctx, t, b)
		ns.Shutdown()
		ns2, err := embedded.StartNATS(opts)
		if err != nil {
			t.Fatal(err)
		}
		defer ns2.Shutdown()
		defer func() {
			if err := b.Shutdown(ctxFor(t, 10*time.Second)); err != nil {
				t.Errorf("Shutdown: %v", err)
			}
		}()
		// Sent until one is stored: a send made before the bus's
		// connection noticed the restart is lost with the old connection.
		// Each try sends a body of its own.
		var stored string
		testutil.EventuallyNoError(t, 20*time.Second, "a send after the server lost the stream stored", func() error {
			sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			body := fmt.Sprintf("after-%d", time.Now().UnixNano())
			err := p.Send(sctx, []byte(body))
			if err == nil {
				stored = body
			}
			return err
		})
		// The group's pulls get no answer from the new server, which has
		// no such consumer: it asks, and makes it again.
		testutil.Eventually(t, 20*time.Second, "the group got the message stored after the restart", func() bool {
			c.mu.Lock()
			defer c.mu.Unlock()
			return c.bodies[stored] == 1
		})
	})
}

// lostTopicGroup registers group g of lost.topic on b and sends it a
// first message, handled before it returns.
func lostTopicGroup(ctx context.Context, t *testing.T, b *eventbus.Bus) (*collector, eventbus.Producer) {
	t.Helper()
	c := newCollector()
	if err := b.RegisterConsumer("", "lost.topic", "g", c); err != nil {
		t.Fatal(err)
	}
	p, err := b.NewProducer("", "lost.topic", "", -1)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Send(ctx, []byte("before")); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the first message handled", func() bool { return c.n.Load() == 1 })
	return c, p
}

// TestCoreDeadLettersGoOnAfterTheDeadLetterStreamIsDeleted: a Core NATS
// group's dead-letter stream, deleted while the bus runs, is made again
// by the next dead letter instead of that letter being lost.
func TestCoreDeadLettersGoOnAfterTheDeadLetterStreamIsDeleted(t *testing.T) {
	ns := startNATS(t, nil)
	b := newBus(t, busConfig(ns, false))
	ctx := ctxFor(t, 20*time.Second)
	err := b.RegisterConsumer("", "mail.bounce", "mailer", eventbus.HandlerFunc(func(context.Context, *eventbus.Message) error {
		return errors.New("smtp refused")
	}), eventbus.WithMaxDeliver(1))
	if err != nil {
		t.Fatal(err)
	}
	p, err := b.NewProducer("", "mail.bounce", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	dlq := eventbus.DeadLetterStream("mail.bounce")
	lettered := func(body string) func() bool {
		return func() bool {
			s, err := js.Stream(ctx, dlq)
			if err != nil {
				return false
			}
			m, err := s.GetLastMsgForSubject(ctx, "loom.dlq.events.mail_bounce.mailer")
			return err == nil && string(m.Data) == body
		}
	}
	if err := p.Send(ctx, []byte("first")); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the first dead letter", lettered("first"))
	if err := js.DeleteStream(ctx, dlq); err != nil {
		t.Fatal(err)
	}
	if err := p.Send(ctx, []byte("second")); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the second dead letter, after the stream was deleted", lettered("second"))
}
