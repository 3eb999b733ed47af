package kvrouter

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/discovery/memory"
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/llm"
	"github.com/loomrt/loom/llm/mocker"
	"github.com/loomrt/loom/loomtest"
)

// TestKVRouterCatchesUpAfterTheEventPlaneRestarts: workers serve requests
// while the NATS server is down (the request plane is TCP, discovery is
// elsewhere), then it comes back. The kv_events published meanwhile are
// lost or late, and the workers then stay idle, so no later event shows a
// gap: the router catches up from their load reports, which name their
// last event.
func TestKVRouterCatchesUpAfterTheEventPlaneRestarts(t *testing.T) {
	port := testutil.FreePort(t) // the restarted server listens there again
	// Shut down after the runtimes have shut down.
	ns := testutil.StartNATS(t, embedded.NATSOptions{Port: port})
	cfg := config.Default()
	cfg.NATS.URL = ns.ClientURL()
	cfg.NATS.ReconnectWait = 50 * time.Millisecond
	cfg.Client.LocalFastPath = false
	cfg.RequestPlane.Transport = "tcp"
	store := memory.NewStore()
	ctx := testutil.Timeout(t, 30*time.Second)

	wc := warmCfg()
	wc.MetricsInterval = 250 * time.Millisecond
	// Not in process: the workers' connections must reach the new server.
	cluster, err := mocker.StartCluster(ctx, mocker.ClusterConfig{Workers: 4, Worker: wc, Runtime: cfg, Store: store, Logger: loomtest.Quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Shutdown(context.Background())
	d := store.Connect()
	defer d.Close()
	fe, err := loom.NewRuntime(ctx, loom.WithConfig(cfg), loom.WithDiscovery(d), loom.WithLogger(loomtest.Quiet))
	if err != nil {
		t.Fatal(err)
	}
	defer fe.Shutdown(context.Background())
	r, err := NewKV(ctx, fe, Config{LostAfter: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ep, err := fe.Endpoint(llm.DefaultNamespace + "/backend/generate")
	if err != nil {
		t.Fatal(err)
	}
	c, err := loom.NewClient[llm.Request, llm.Response](ctx, ep, loom.WithPicker(r))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.WaitForInstances(ctx, 4); err != nil {
		t.Fatal(err)
	}
	synced(t, r, cluster)

	ns.Shutdown()
	for i := range 16 {
		if res := send(ctx, c, r, "during", prompt(uint32(100+i), 64), 2); res.err != nil {
			t.Fatalf("request %d while NATS is down: %v", i, res.err)
		}
	}
	testutil.StartNATS(t, embedded.NATSOptions{Port: port})
	synced(t, r, cluster)
	for _, w := range cluster.Workers() {
		i := slices.IndexFunc(r.Stats().Workers, func(s WorkerStats) bool { return s.ID == w.ID() })
		if got, want := r.Stats().Workers[i].Blocks, w.Stats().KvBlocks; got != want {
			t.Errorf("worker %x: the router's view holds %d blocks, the worker %d", w.ID(), got, want)
		}
	}
}
