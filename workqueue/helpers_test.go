package workqueue_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/metrics"
	"github.com/loomrt/loom/workqueue"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// startNATS starts a JetStream server for one test and connects to it.
func startNATS(t testing.TB, configure func(*server.Options)) (*embedded.NATS, *nats.Conn) {
	t.Helper()
	ns := testutil.StartNATS(t, embedded.NATSOptions{JetStream: true, Configure: configure})
	return ns, connect(t, ns.ClientURL())
}

func connect(t testing.TB, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	opts = append([]nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(50 * time.Millisecond)}, opts...)
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}

var queueSeq atomic.Int64

// testConfig is a queue with short timings, for tests.
func testConfig(t testing.TB) workqueue.Config {
	cfg := workqueue.DefaultConfig(fmt.Sprintf("test_%d", queueSeq.Add(1)))
	cfg.Storage = "memory"
	cfg.AckWait = 2 * time.Second
	cfg.BackoffInitial = 20 * time.Millisecond
	cfg.BackoffMax = 200 * time.Millisecond
	cfg.EnqueueTimeout = 5 * time.Second
	cfg.Logger = quiet
	cfg.Metrics = metrics.New()
	return cfg
}

func newQueue[T any](t testing.TB, nc *nats.Conn, cfg workqueue.Config) *workqueue.Queue[T] {
	t.Helper()
	q, err := workqueue.New[T](context.Background(), nc, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := q.Shutdown(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return q
}

func consume[T any](t testing.TB, q *workqueue.Queue[T], h workqueue.HandlerFunc[T], opts ...workqueue.ConsumeOption) *workqueue.Consumer {
	t.Helper()
	c, err := q.Consume(h, opts...)
	if err != nil {
		t.Fatalf("Consume: %v", err)
	}
	t.Cleanup(func() { shutdown(t, c) })
	return c
}

func shutdown(t testing.TB, c *workqueue.Consumer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

func ctxFor(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

type job struct {
	ID   int    `json:"id"`
	Text string `json:"text"`
}

// natsMsg publishes a raw message with headers.
type natsMsg struct {
	subject string
	header  map[string]string
	data    []byte
}

func (m *natsMsg) publish(nc *nats.Conn) error {
	msg := nats.NewMsg(m.subject)
	for k, v := range m.header {
		msg.Header.Set(k, v)
	}
	msg.Data = m.data
	return nc.PublishMsg(msg)
}

// jobsSeen records the jobs handlers were given, from any goroutine.
type jobsSeen struct {
	mu sync.Mutex
	n  map[int]int // by job ID: how many times
}

func (s *jobsSeen) add(id int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n == nil {
		s.n = map[int]int{}
	}
	s.n[id]++
}

// distinct returns how many jobs were seen at least once.
func (s *jobsSeen) distinct() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.n)
}
