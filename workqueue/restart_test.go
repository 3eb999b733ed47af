package workqueue_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/workqueue"
)

// restartableNATS is a JetStream server on a fixed port and file store,
// which a test stops and starts again as a restart of the server.
type restartableNATS struct {
	t     *testing.T
	port  int
	store string
	mu    sync.Mutex
	ns    *embedded.NATS
}

func startRestartableNATS(t *testing.T) *restartableNATS {
	r := &restartableNATS{t: t, port: testutil.FreePort(t), store: t.TempDir()}
	r.start()
	t.Cleanup(r.stop)
	return r
}

func (r *restartableNATS) start() {
	r.t.Helper()
	ns, err := embedded.StartNATS(embedded.NATSOptions{Port: r.port, JetStream: true, StoreDir: r.store})
	if err != nil {
		r.t.Fatalf("StartNATS on port %d: %v", r.port, err)
	}
	r.mu.Lock()
	r.ns = ns
	r.mu.Unlock()
}

func (r *restartableNATS) stop() {
	r.mu.Lock()
	ns := r.ns
	r.ns = nil
	r.mu.Unlock()
	if ns != nil {
		ns.Shutdown()
	}
}

func (r *restartableNATS) url() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ns.ClientURL()
}

func TestQueueCarriesOnThroughAServerRestart(t *testing.T) {
	srv := startRestartableNATS(t)
	// No reconnect buffer: a publish while the server is down fails at
	// once, and only the queue's retries carry it through.
	nc := connect(t, srv.url(), nats.ReconnectBufSize(-1))
	cfg := testConfig(t)
	cfg.Storage = "file"
	cfg.AutoID = true
	q := newQueue[job](t, nc, cfg)
	ctx := ctxFor(t, 60*time.Second)

	var mu sync.Mutex
	seen := map[int]int{}
	handled := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(seen)
	}
	consume(t, q, func(ctx context.Context, j *workqueue.Job[job]) error {
		mu.Lock()
		seen[j.Value.ID]++
		mu.Unlock()
		return nil
	}, workqueue.WithConcurrency(4), workqueue.WithPullExpiry(time.Second))

	const n = 50
	for i := range n {
		if err := q.Enqueue(ctx, job{ID: i}); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, 20*time.Second, "jobs before the restart handled", func() bool { return handled() == n })

	srv.stop()
	// An enqueue while the server is down waits for it, within its deadline.
	during := make(chan error, 1)
	go func() { during <- q.Enqueue(ctx, job{ID: n}) }()
	testutil.Eventually(t, 10*time.Second, "the client notices the server is gone", func() bool { return !nc.IsConnected() })
	srv.start()
	if err := <-during; err != nil {
		t.Fatalf("Enqueue through the restart: %v", err)
	}
	for i := n + 1; i < 2*n; i++ {
		if err := q.Enqueue(ctx, job{ID: i}); err != nil {
			t.Fatalf("Enqueue after the restart: %v", err)
		}
	}
	testutil.Eventually(t, 30*time.Second, "jobs after the restart handled", func() bool { return handled() == 2*n })
	testutil.Eventually(t, 10*time.Second, "queue empty", func() bool {
		info, err := q.Info(ctx)
		return err == nil && info.Jobs == 0
	})
}
