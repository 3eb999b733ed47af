package eventbus_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/loomrt/loom/eventbus"
	"github.com/loomrt/loom/internal/testutil"
)

// TestZeroConsumerOptionsTakeTheBusConfiguration: ConsumerOption's zero
// values take the queue.* keys, so WithMaxDeliver(0) keeps the bus's
// attempts instead of dead-lettering at the first failure.
func TestZeroConsumerOptionsTakeTheBusConfiguration(t *testing.T) {
	modes(t, func(t *testing.T, js bool) {
		ns := startNATS(t, nil)
		cfg := busConfig(ns, js)
		cfg.Queue.MaxDeliver = 3
		b := newBus(t, cfg)
		ctx := ctxFor(t, 20*time.Second)
		var attempts, done atomic.Int64
		err := b.RegisterConsumer("", "jobs.zero", "worker", eventbus.HandlerFunc(func(ctx context.Context, msg *eventbus.Message) error {
			if attempts.Add(1) < 3 {
				return errors.New("not yet")
			}
			done.Add(1)
			return nil
		}), eventbus.WithMaxDeliver(0), eventbus.WithConcurrency(0))
		if err != nil {
			t.Fatal(err)
		}
		p, err := b.NewProducer("", "jobs.zero", "", 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Send(ctx, []byte("x")); err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, 10*time.Second, "the third attempt succeeded", func() bool { return done.Load() == 1 })
		if n := attempts.Load(); n != 3 {
			t.Fatalf("%d attempts, want 3", n)
		}
	})
}

func TestNegativeConsumerOptionsAreRefused(t *testing.T) {
	ns := startNATS(t, nil)
	b := newBus(t, busConfig(ns, false))
	h := eventbus.HandlerFunc(func(context.Context, *eventbus.Message) error { return nil })
	for _, tc := range []struct {
		opt  eventbus.ConsumerOpt
		name string
	}{
		{eventbus.WithConcurrency(-1), "WithConcurrency(-1)"},
		{eventbus.WithMaxDeliver(-2), "WithMaxDeliver(-2)"},
	} {
		t.Run(tc.name+" is an error naming it", func(t *testing.T) {
			err := b.RegisterConsumer("", "jobs.neg", "worker", h, tc.opt)
			if err == nil || !strings.Contains(err.Error(), tc.name) {
				t.Fatalf("RegisterConsumer with %s: %v; want an error naming it", tc.name, err)
			}
		})
	}
}

func TestBadTopicsAndGroupsAreRefusedWithWhatToDo(t *testing.T) {
	ns := startNATS(t, nil)
	b := newBus(t, busConfig(ns, true))
	h := eventbus.HandlerFunc(func(context.Context, *eventbus.Message) error { return nil })
	long := strings.Repeat("g", 201)
	for _, tc := range []struct {
		name, topic, group string
		want               []string // in the error
	}{
		{"an empty topic", "", "g", []string{`topic ""`, "want"}},
		{"a topic with a wildcard", "a.*", "g", []string{`topic "a.*"`, "wildcards"}},
		{"a topic with an empty token", "a..b", "g", []string{`topic "a..b"`, "dot-separated tokens"}},
		{"an empty group", "t", "", []string{`group ""`, "non-empty"}},
		{"a group with a dot", "t", "a.b", []string{`group "a.b"`, "dots"}},
		{"a group with a form feed", "t", "a\fb", []string{`group "a\fb"`, "spaces"}},
		{"a group of 201 bytes", "t", long, []string{"group", "200 bytes"}},
		// Names that are not UTF-8 text once reached the metrics' labels,
		// which panic on them, before anything refused them.
		{"a topic that is not UTF-8", "a\xffb", "g", []string{`topic "a\xffb"`, "UTF-8"}},
		{"a topic with a NUL", "a\x00b", "g", []string{`topic "a\x00b"`, "control characters"}},
		{"a group that is not UTF-8", "t", "a\xffb", []string{`group "a\xffb"`, "UTF-8"}},
	} {
		t.Run(tc.name+" is refused", func(t *testing.T) {
			var err error
			func() {
				defer func() {
					if v := recover(); v != nil {
						t.Fatalf("RegisterConsumer panicked: %v", v)
					}
				}()
				err = b.RegisterConsumer("", tc.topic, tc.group, h)
			}()
			if err == nil {
				t.Fatal("RegisterConsumer succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if tc.group != "g" {
				return
			}
			if _, err := b.NewProducer("", tc.topic, "", 0); err == nil || !strings.Contains(err.Error(), tc.want[0]) {
				t.Errorf("NewProducer: %v; want an error naming the %s", err, tc.want[0])
			}
		})
	}
}

// TestANilHandlerIsRefused: a nil handler, or a nil HandlerFunc, is an
// error naming it, not a group whose every message panics.
func TestANilHandlerIsRefused(t *testing.T) {
	ns := startNATS(t, nil)
	b := newBus(t, busConfig(ns, false))
	for name, h := range map[string]eventbus.ConsumerHandler{"nil": nil, "a nil HandlerFunc": eventbus.HandlerFunc(nil)} {
		t.Run(name+" is refused", func(t *testing.T) {
			err := b.RegisterConsumer("", "jobs.nil", "worker", h)
			if err == nil || !strings.Contains(err.Error(), "handler") {
				t.Fatalf("RegisterConsumer: %v; want an error naming the handler", err)
			}
		})
	}
}
