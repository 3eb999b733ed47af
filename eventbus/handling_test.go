package eventbus_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/loomrt/loom/eventbus"
)

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
		p, err := b.NewProducer("", "slow.jobs", "", 0)
		if err != nil {
			t.Fatal(err)
		}
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
