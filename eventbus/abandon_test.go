package eventbus_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/loomrt/loom/eventbus"
	"github.com/loomrt/loom/workqueue"
)

// TestCloseAbandonsAHandlerThatIgnoresItsContext: a handler that never
// returns does not hold Close (or a runtime's shutdown) forever, on Core
// NATS as on JetStream; Close reports it.
func TestCloseAbandonsAHandlerThatIgnoresItsContext(t *testing.T) {
	modes(t, func(t *testing.T, js bool) {
		ns := startNATS(t, nil)
		b, err := eventbus.New(busConfig(ns, js))
		if err != nil {
			t.Fatal(err)
		}
		ctx := ctxFor(t, 20*time.Second)
		started := make(chan struct{}, 1)
		release := make(chan struct{})
		returned := make(chan struct{})
		err = b.RegisterConsumer("", "reports.stuck", "renderer", eventbus.HandlerFunc(func(ctx context.Context, msg *eventbus.Message) error {
			defer close(returned)
			started <- struct{}{}
			<-release // ignores ctx
			return nil
		}))
		if err != nil {
			t.Fatal(err)
		}
		p, err := b.NewProducer("", "reports.stuck", "", 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Send(ctx, []byte("1")); err != nil {
			t.Fatal(err)
		}
		<-started
		closed := make(chan error, 1)
		go func() { closed <- b.Close() }()
		select {
		case err = <-closed:
		case <-time.After(workqueue.ShutdownGrace + 5*time.Second):
			close(release)
			<-closed
			t.Fatalf("Close has waited %s for a handler that ignores its context", workqueue.ShutdownGrace+5*time.Second)
		}
		close(release)
		<-returned
		if err == nil || !strings.Contains(err.Error(), "abandoned") || !errors.Is(err, context.Canceled) {
			t.Fatalf("Close: %v; want an error saying a handler was abandoned, wrapping context.Canceled", err)
		}
	})
}

// TestCloseWaitsForADeadLetterWithoutCallingItAbandoned: a Core NATS
// worker storing a dead letter past the grace (the server is gone) runs
// no handler; Close waits for it, bounded by the dead letter's own
// timeout, and reports nothing abandoned.
func TestCloseWaitsForADeadLetterWithoutCallingItAbandoned(t *testing.T) {
	ns := startNATS(t, nil)
	b, err := eventbus.New(busConfig(ns, false))
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxFor(t, 20*time.Second)
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	err = b.RegisterConsumer("", "reports.failing", "renderer", eventbus.HandlerFunc(func(ctx context.Context, msg *eventbus.Message) error {
		started <- struct{}{}
		<-release
		return errors.New("render failed")
	}), eventbus.WithMaxDeliver(1))
	if err != nil {
		t.Fatal(err)
	}
	p, err := b.NewProducer("", "reports.failing", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Send(ctx, []byte("1")); err != nil {
		t.Fatal(err)
	}
	<-started
	ns.Shutdown() // the dead letter cannot be stored: it waits out its timeout
	close(release)
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v; want nil: no handler was running", err)
	}
}
