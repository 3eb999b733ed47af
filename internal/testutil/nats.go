package testutil

import (
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/embedded"
)

// RestartableNATS is a JetStream server on a fixed port and file store,
// which a test stops and starts again as a restart of the server.
type RestartableNATS struct {
	t     *testing.T
	port  int
	store string
	mu    sync.Mutex
	ns    *embedded.NATS
}

// StartRestartableNATS starts a RestartableNATS, stopped when the test
// ends.
func StartRestartableNATS(t *testing.T) *RestartableNATS {
	r := &RestartableNATS{t: t, port: FreePort(t), store: t.TempDir()}
	r.Start()
	t.Cleanup(r.Stop)
	return r
}

// Start starts the server on its port and store.
func (r *RestartableNATS) Start() {
	r.t.Helper()
	ns, err := embedded.StartNATS(embedded.NATSOptions{Port: r.port, JetStream: true, StoreDir: r.store})
	if err != nil {
		r.t.Fatalf("StartNATS on port %d: %v", r.port, err)
	}
	r.mu.Lock()
	r.ns = ns
	r.mu.Unlock()
}

// Stop stops the server, if it runs.
func (r *RestartableNATS) Stop() {
	r.mu.Lock()
	ns := r.ns
	r.ns = nil
	r.mu.Unlock()
	if ns != nil {
		ns.Shutdown()
	}
}

// Restart stops the server and starts it again, then waits until nc has
// reconnected. IsConnected alone does not say so: until nc notices the
// old connection is gone, it still reports that one.
func (r *RestartableNATS) Restart(nc *nats.Conn) {
	r.t.Helper()
	before := nc.Stats().Reconnects
	r.Stop()
	r.Start()
	Eventually(r.t, 10*time.Second, "reconnected", func() bool {
		return nc.Stats().Reconnects > before && nc.IsConnected()
	})
}

// URL is the server's client URL; the server must be running.
func (r *RestartableNATS) URL() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ns.ClientURL()
}

// StartNATS starts an embedded NATS server with o, shut down when the
// test ends.
func StartNATS(t testing.TB, o embedded.NATSOptions) *embedded.NATS {
	t.Helper()
	ns, err := embedded.StartNATS(o)
	if err != nil {
		t.Fatalf("starting NATS: %v", err)
	}
	t.Cleanup(ns.Shutdown)
	return ns
}
