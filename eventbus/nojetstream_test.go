package eventbus_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/eventbus"
	"github.com/loomrt/loom/internal/testutil"
)

// startPlainNATS starts a nats-server without JetStream, as Coze Studio's
// Core NATS mode may run against.
func startPlainNATS(t *testing.T) *embedded.NATS {
	t.Helper()
	ns := testutil.StartNATS(t, embedded.NATSOptions{})
	return ns
}

// TestJetStreamBusOnAServerWithoutJetStreamSaysWhatToDo: a bus set to
// JetStream (NATS_USE_JETSTREAM=true) against a server that has none is
// refused with an error saying so and what to do, not with nats.go's bare
// "no responders available for request".
func TestJetStreamBusOnAServerWithoutJetStreamSaysWhatToDo(t *testing.T) {
	ns := startPlainNATS(t)
	b := newBus(t, busConfig(ns, true))
	h := eventbus.HandlerFunc(func(context.Context, *eventbus.Message) error { return nil })
	check := func(what string, err error) {
		t.Helper()
		if err == nil {
			t.Fatalf("%s succeeded on a server without JetStream", what)
		}
		for _, w := range []string{"JetStream", "-js", "NATS_USE_JETSTREAM=false"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %v; want an error that says %q", what, err, w)
			}
		}
	}
	check("RegisterConsumer", b.RegisterConsumer("", "plain.topic", "g", h))
	_, err := b.NewProducer("", "plain.topic", "", 0)
	check("NewProducer", err)
}

// TestCoreBusOnAServerWithoutJetStream: on Core NATS the bus needs no
// JetStream, as Coze Studio's Core NATS mode needs none; a message that
// fails every attempt cannot be dead-lettered there and is logged as
// lost, naming the topic and group.
func TestCoreBusOnAServerWithoutJetStream(t *testing.T) {
	ns := startPlainNATS(t)
	var logs testutil.SyncBuffer
	cfg := busConfig(ns, false)
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	b := newBus(t, cfg)
	ctx := ctxFor(t, 20*time.Second)
	ok, failing := newCollector(), make(chan int, 10)
	if err := b.RegisterConsumer("", "plain.ok", "g", ok); err != nil {
		t.Fatal(err)
	}
	err := b.RegisterConsumer("", "plain.failing", "mailer", eventbus.HandlerFunc(func(_ context.Context, m *eventbus.Message) error {
		failing <- m.Deliveries
		return errors.New("smtp refused")
	}), eventbus.WithMaxDeliver(2))
	if err != nil {
		t.Fatal(err)
	}
	for topic, body := range map[string]string{"plain.ok": "hello", "plain.failing": "mail"} {
		p, err := b.NewProducer("", topic, "", 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Send(ctx, []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, 10*time.Second, "the message handled", func() bool { return ok.n.Load() == 1 })
	testutil.Eventually(t, 10*time.Second, "the failed message logged as lost", func() bool {
		return strings.Contains(logs.String(), "could not be dead-lettered and is lost")
	})
	if n := len(failing); n != 2 {
		t.Errorf("the failing message was tried %d times, want 2 (WithMaxDeliver(2))", n)
	}
	if l := logs.String(); !strings.Contains(l, "topic=plain.failing") || !strings.Contains(l, "group=mailer") || !strings.Contains(l, "smtp refused") {
		t.Errorf("the log of the lost message does not name its topic, group and error:\n%s", l)
	}
}
