package eventbus_test

import (
	"context"
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

// testutil.LeakOptions says which library goroutines are ignored and why.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testutil.LeakOptions()...)
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func startNATS(t testing.TB, configure func(*server.Options)) *embedded.NATS {
	t.Helper()
	ns, err := embedded.StartNATS(embedded.NATSOptions{JetStream: true, Configure: configure})
	if err != nil {
		t.Fatalf("StartNATS: %v", err)
	}
	t.Cleanup(ns.Shutdown)
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
