package loom_test

import (
	"context"
	"io"
	"iter"
	"log/slog"
	"testing"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/discovery/memory"
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/internal/testutil"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// cluster is a set of runtimes in one process sharing a private discovery
// store, standing in for several processes.
type cluster struct {
	t     testing.TB
	store *memory.Store
	cfg   config.Config
}

func newCluster(t testing.TB) *cluster { return newClusterOn(t, "local") }

// planes are the ways a call can travel; semantic tests run on each.
var planes = []string{"local", "tcp", "nats"}

// newClusterOn makes a cluster whose calls travel on plane: the local
// fast path, or the network even between runtimes in this process.
func newClusterOn(t testing.TB, plane string) *cluster {
	cfg := config.Default()
	cfg.Client.WaitTimeout = 2 * time.Second
	cfg.Client.LocalFastPath = plane == "local"
	if plane != "local" {
		cfg.RequestPlane.Transport = plane
	}
	if plane == "nats" {
		ns := testutil.StartNATS(t, embedded.NATSOptions{})
		cfg.NATS.URL = ns.ClientURL()
	}
	return &cluster{t: t, store: memory.NewStore(), cfg: cfg}
}

// eachPlane runs f once per plane, each with a fresh cluster.
func eachPlane(t *testing.T, f func(t *testing.T, c *cluster)) {
	for _, p := range planes {
		t.Run("over "+p, func(t *testing.T) { f(t, newClusterOn(t, p)) })
	}
}

// runtime starts a runtime in the cluster; it is shut down when the test ends.
func (c *cluster) runtime(opts ...loom.Option) *loom.Runtime {
	c.t.Helper()
	d := c.store.Connect()
	opts = append([]loom.Option{loom.WithConfig(c.cfg), loom.WithDiscovery(d), loom.WithLogger(quiet)}, opts...)
	rt, err := loom.NewRuntime(context.Background(), opts...)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = rt.Shutdown(ctx)
		_ = d.Close()
	})
	return rt
}

func endpoint(t testing.TB, rt *loom.Runtime, path string) *loom.Endpoint {
	t.Helper()
	ep, err := rt.Endpoint(path)
	if err != nil {
		t.Fatal(err)
	}
	return ep
}

// serve serves path on rt with fn.
func serve[Req, Resp any](t testing.TB, rt *loom.Runtime, path string, fn func(ctx context.Context, req Req) iter.Seq2[Resp, error]) *loom.Endpoint {
	t.Helper()
	ep := endpoint(t, rt, path)
	if err := loom.Serve(context.Background(), ep, loom.EngineFunc[Req, Resp](fn)); err != nil {
		t.Fatal(err)
	}
	return ep
}

func client[Req, Resp any](t testing.TB, rt *loom.Runtime, path string, opts ...loom.ClientOption) *loom.Client[Req, Resp] {
	t.Helper()
	c, err := loom.NewClient[Req, Resp](context.Background(), endpoint(t, rt, path), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func waitInstances[Req, Resp any](t testing.TB, c *loom.Client[Req, Resp], n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.WaitForInstances(ctx, n); err != nil {
		t.Fatal(err)
	}
}

// collect drains a stream into a slice and its final error.
func collect[T any](seq iter.Seq2[T, error]) ([]T, error) {
	var out []T
	for v, err := range seq {
		if err != nil {
			return out, err
		}
		out = append(out, v)
	}
	return out, nil
}

// echoID streams the serving runtime's id n times.
func echoID(rt *loom.Runtime) func(ctx context.Context, n int) iter.Seq2[uint64, error] {
	return func(ctx context.Context, n int) iter.Seq2[uint64, error] {
		return func(yield func(uint64, error) bool) {
			for range n {
				if !yield(rt.ID(), nil) {
					return
				}
			}
		}
	}
}

func within(t *testing.T, d time.Duration, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(d):
		t.Fatalf("%s did not happen within %s", what, d)
	}
}

// waitFor polls cond until it holds, failing the test after limit.
func waitFor(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(time.Millisecond)
	}
}

// callRefusedOnce starts a call of cl, made from caller, and returns once
// an instance has refused it (caller's retry count moved); the call's
// items and error arrive on the channel.
func callRefusedOnce(t testing.TB, caller *loom.Runtime, cl *loom.Client[int, uint64]) <-chan called {
	t.Helper()
	retries := metricValue(t, caller, "loom_client_retries_total")
	res := make(chan called, 1)
	go func() {
		got, err := collect(cl.Generate(context.Background(), 1))
		res <- called{got, err}
	}()
	waitFor(t, 30*time.Second, "the call to be refused by an instance", func() bool {
		return metricValue(t, caller, "loom_client_retries_total") > retries
	})
	return res
}

type called struct {
	got []uint64
	err error
}
