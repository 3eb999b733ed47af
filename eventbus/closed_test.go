package eventbus_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/loomrt/loom/eventbus"
	"github.com/loomrt/loom/internal/testutil"
)

// TestASendAfterShutdownIsRefused: the bus stops its producers too. A send
// after Shutdown fails with ErrClosed, on a connection the bus opened as
// on one it shares (a bus from Open, on the runtime's); it once went out
// on a shared connection, the bus shut down or not, and on JetStream left
// a reply subscription on it.
func TestASendAfterShutdownIsRefused(t *testing.T) {
	modes(t, func(t *testing.T, js bool) {
		ns := startNATS(t, nil)
		nc, err := nats.Connect(ns.ClientURL())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		// A request makes the connection's one reply subscription, which
		// every request on it shares, the bus's JetStream calls too.
		if _, err := jetstream.New(nc); err != nil {
			t.Fatal(err)
		}
		if _, err := nc.Request("nobody.there", nil, time.Second); !errors.Is(err, nats.ErrNoResponders) {
			t.Fatal(err)
		}
		base := nc.NumSubscriptions()
		for _, shared := range []bool{false, true} {
			name := "on its own connection"
			if shared {
				name = "on a shared connection"
			}
			t.Run(name, func(t *testing.T) {
				var b *eventbus.Bus
				var err error
				if shared {
					b, err = eventbus.NewWithConn(nc, busConfig(ns, js))
				} else {
					b, err = eventbus.New(busConfig(ns, js))
				}
				if err != nil {
					t.Fatal(err)
				}
				p := producer(t, b, "after.shutdown")
				if err := p.Send(ctxFor(t, 5*time.Second), []byte("before")); err != nil {
					t.Fatal(err)
				}
				if err := b.Shutdown(ctxFor(t, 5*time.Second)); err != nil {
					t.Fatal(err)
				}
				for _, send := range []func() error{
					func() error { return p.Send(ctxFor(t, 5*time.Second), []byte("after")) },
					func() error { return p.BatchSend(ctxFor(t, 5*time.Second), [][]byte{[]byte("a"), []byte("b")}) },
				} {
					if err := send(); !errors.Is(err, eventbus.ErrClosed) {
						t.Errorf("a send after Shutdown: %v; want ErrClosed", err)
					}
				}
				if n := nc.NumSubscriptions(); n != base {
					t.Errorf("the shared connection has %d subscriptions after the bus shut down, %d before it started", n, base)
				}
			})
		}
	})
}

// TestShutdownWaitsForTheSendsUnderWay: a send under way when Shutdown
// begins completes before Shutdown returns, instead of being cut off by
// the publisher's cleanup (JetStream) or outliving the bus (a shared
// connection).
func TestShutdownWaitsForTheSendsUnderWay(t *testing.T) {
	modes(t, func(t *testing.T, js bool) {
		ns := startNATS(t, nil)
		f := testutil.NewFreezer(t, ns.Server().Addr().String())
		nc, err := nats.Connect("nats://" + f.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		b, err := eventbus.NewWithConn(nc, busConfig(ns, js))
		if err != nil {
			t.Fatal(err)
		}
		p := producer(t, b, "under.way")
		out := nc.Stats().OutMsgs
		f.Freeze()
		sent := make(chan error, 1)
		go func() { sent <- p.Send(ctxFor(t, 20*time.Second), []byte("x")) }()
		testutil.Eventually(t, 5*time.Second, "the send written to the connection", func() bool { return nc.Stats().OutMsgs > out })
		shut := make(chan error, 1)
		go func() { shut <- b.Shutdown(ctxFor(t, 20*time.Second)) }()
		testutil.Eventually(t, 5*time.Second, "Shutdown begun", func() bool {
			_, err := b.NewProducer("", "under.way", "", 0)
			return errors.Is(err, eventbus.ErrClosed)
		})
		select {
		case err := <-shut:
			t.Fatalf("Shutdown returned (%v) with a send under way", err)
		default:
		}
		f.Thaw()
		if err := <-sent; err != nil {
			t.Fatalf("the send under way at Shutdown: %v", err)
		}
		if err := <-shut; err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	})
}

// TestAHandlerSendsWhileShutdownDrainsIt: Shutdown lets running handlers
// finish, and a handler that finishes by sending (an event that follows
// from the one it handled) may: producers stop only once the handlers
// are done. Else its message would fail and be retried elsewhere, its
// work done twice.
func TestAHandlerSendsWhileShutdownDrainsIt(t *testing.T) {
	modes(t, func(t *testing.T, js bool) {
		ns := startNATS(t, nil)
		b, err := eventbus.New(busConfig(ns, js))
		if err != nil {
			t.Fatal(err)
		}
		nc, err := nats.Connect(ns.ClientURL())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		followUps, err := nc.SubscribeSync("orders.shipped")
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		next, err := b.NewProducer("", "orders.shipped", "", 0)
		if err != nil {
			t.Fatal(err)
		}
		started, release := make(chan struct{}), make(chan struct{})
		sent := make(chan error, 1)
		err = b.RegisterConsumer("", "orders.paid", "shipper", eventbus.HandlerFunc(func(ctx context.Context, m *eventbus.Message) error {
			close(started)
			<-release
			err := next.Send(ctx, m.Body)
			sent <- err
			return err
		}))
		if err != nil {
			t.Fatal(err)
		}
		p := producer(t, b, "orders.paid")
		if err := p.Send(ctxFor(t, 5*time.Second), []byte("order-1")); err != nil {
			t.Fatal(err)
		}
		<-started
		shut := make(chan error, 1)
		go func() { shut <- b.Shutdown(ctxFor(t, 20*time.Second)) }()
		testutil.Eventually(t, 5*time.Second, "Shutdown begun", func() bool {
			_, err := b.NewProducer("", "orders.paid", "", 0)
			return errors.Is(err, eventbus.ErrClosed)
		})
		close(release)
		if err := <-sent; err != nil {
			t.Fatalf("a handler's send while Shutdown drains it: %v", err)
		}
		if err := <-shut; err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		if m, err := followUps.NextMsg(5 * time.Second); err != nil || string(m.Data) != "order-1" {
			t.Fatalf("the follow-up event: %v, %v", m, err)
		}
	})
}
