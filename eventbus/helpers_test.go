package eventbus_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/goleak"

	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/eventbus"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/metrics"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func startNATS(t testing.TB, configure func(*server.Options)) *embedded.NATS {
	t.Helper()
	ns := testutil.StartNATS(t, embedded.NATSOptions{JetStream: true, Configure: configure})
	return ns
}

// busConfig is a bus on ns with short timings.
func busConfig(ns *embedded.NATS, jetStream bool) eventbus.Config {
	c := config.Default()
	c.NATS.URL = ns.ClientURL()
	c.NATS.ReconnectWait = 50 * time.Millisecond
	q := c.Queue
	q.Storage = "memory"
	q.EventBusJetStream = jetStream
	q.AckWait = 2 * time.Second
	q.BackoffInitial = 20 * time.Millisecond
	q.BackoffMax = 200 * time.Millisecond
	return eventbus.Config{NATS: c.NATS, Queue: q, Logger: quiet, Metrics: metrics.New()}
}

func newBus(t testing.TB, cfg eventbus.Config) *eventbus.Bus {
	t.Helper()
	b, err := eventbus.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := b.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return b
}

func ctxFor(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// modes runs a test on Core NATS and on JetStream.
func modes(t *testing.T, f func(t *testing.T, jetStream bool)) {
	for _, js := range []bool{false, true} {
		name := "on Core NATS"
		if js {
			name = "on JetStream"
		}
		t.Run(name, func(t *testing.T) { f(t, js) })
	}
}

// producer returns a producer of b to topic, with no options.
func producer(t testing.TB, b *eventbus.Bus, topic string) eventbus.Producer {
	t.Helper()
	p, err := b.NewProducer("", topic, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// numbered returns n message bodies, "m-0" to "m-<n-1>".
func numbered(n int) [][]byte {
	batch := make([][]byte, 0, n)
	for i := range n {
		batch = append(batch, fmt.Appendf(nil, "m-%d", i))
	}
	return batch
}
