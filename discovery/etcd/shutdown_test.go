package etcd

import (
	"context"
	"iter"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/discovery"
)

// runtimeOn starts a Runtime whose discovery is etcd at endpoint, opened
// by the runtime, serving the endpoints at paths.
func runtimeOn(t *testing.T, endpoint, dial string, paths ...string) *loom.Runtime {
	t.Helper()
	rt, err := loom.NewRuntime(t.Context(), loom.WithLogger(quiet), loom.WithLoadOptions(
		config.WithEnv(func(string) (string, bool) { return "", false }),
		config.WithValue("discovery.backend", "etcd"),
		config.WithValue("discovery.etcd_endpoints", endpoint),
		config.WithValue("discovery.dial_timeout", dial),
	))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	echo := loom.EngineFunc[string, string](func(ctx context.Context, s string) iter.Seq2[string, error] {
		return func(yield func(string, error) bool) { yield(s, nil) }
	})
	for _, path := range paths {
		ep, err := rt.Endpoint(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := loom.Serve(t.Context(), ep, echo); err != nil {
			t.Fatal(err)
		}
	}
	return rt
}

// A Runtime shutting down with etcd gone does not wait for etcd, neither
// to unregister its endpoints (each Unregister was given 5s) nor to
// revoke its lease (given the dial timeout): its records expire with the
// lease, and Shutdown says so.
func TestRuntimeShutdownWithEtcdGoneDoesNotWaitForIt(t *testing.T) {
	srv := startEtcd(t, fast)
	rt := runtimeOn(t, srv.ClientURL(), "20s", "ns/c/a", "ns/c/b")
	srv.Close()
	start := time.Now()
	err := rt.Shutdown(context.Background())
	took := time.Since(start)
	t.Logf("Shutdown: %v after %v", err, took.Round(time.Millisecond))
	if took > 4*time.Second {
		t.Fatalf("Shutdown with etcd gone took %v; want it not to wait for etcd (5s per Unregister, 20s for the revoke)", took)
	}
	if err == nil || !strings.Contains(err.Error(), "etcd unreachable") || !strings.Contains(err.Error(), "expire within 10s") {
		t.Fatalf("Shutdown with etcd gone = %v; want an error saying etcd is unreachable and the records expire within the TTL", err)
	}
}

// A Runtime shutting down with etcd up takes its records out of etcd at
// once and revokes its lease, without an error.
func TestRuntimeShutdownWithEtcdUpRevokesAtOnce(t *testing.T) {
	srv := startEtcd(t, fast)
	rt := runtimeOn(t, srv.ClientURL(), "20s", "ns/c/a", "ns/c/b")
	cli := raw(t, srv.ClientURL())
	if resp, err := cli.Get(t.Context(), discovery.KeyPrefix, clientv3.WithPrefix()); err != nil || len(resp.Kvs) != 2 {
		t.Fatalf("records before Shutdown: %v, %v; want 2", resp, err)
	}
	id := rt.Discovery().(*Discovery).ID()
	if err := rt.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown with etcd up: %v", err)
	}
	if resp, err := cli.Get(t.Context(), discovery.KeyPrefix, clientv3.WithPrefix()); err != nil || len(resp.Kvs) != 0 {
		t.Fatalf("records after Shutdown: %v, %v; want none", resp, err)
	}
	if ttl, err := cli.TimeToLive(t.Context(), clientv3.LeaseID(id)); err != nil || ttl.TTL != -1 {
		t.Fatalf("lease after Shutdown: %+v, %v; want revoked (TTL -1)", ttl, err)
	}
}
