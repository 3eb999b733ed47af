package mocker_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/discovery/memory"
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/llm"
	"github.com/loomrt/loom/llm/mocker"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// system is an embedded NATS server with JetStream, a private discovery
// store, a cluster of mock workers and a caller's runtime, standing in
// for several processes.
type system struct {
	t       *testing.T
	nats    *embedded.NATS
	store   *memory.Store
	cfg     config.Config
	cluster *mocker.Cluster
	caller  *loom.Runtime
	client  *loom.Client[llm.Request, llm.Response]
}

// fast is a worker configuration for tests: quick steps, small cache.
func fast() mocker.Config {
	return mocker.Config{DecodeStep: time.Millisecond, PrefillPerToken: time.Microsecond, BlockSize: 4, KvBlocks: 256, MetricsMinInterval: 5 * time.Millisecond}
}

func newSystem(t *testing.T, cc mocker.ClusterConfig) *system {
	t.Helper()
	ns, err := embedded.StartNATS(embedded.NATSOptions{JetStream: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	cfg := config.Default()
	cfg.NATS.URL = ns.ClientURL()
	cfg.Queue.Storage = "memory"
	cfg.Client.LocalFastPath = false // calls travel over TCP, as between processes
	if cc.Runtime.Queue.AckWait > 0 {
		cfg.Queue.AckWait = cc.Runtime.Queue.AckWait
	}
	s := &system{t: t, nats: ns, store: memory.NewStore(), cfg: cfg}
	cc.Runtime, cc.NATS, cc.Store, cc.Logger = cfg, ns, s.store, quiet
	s.cluster, err = mocker.StartCluster(timeout(t, 10*time.Second), cc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.cluster.Shutdown(ctx)
	})
	s.caller = s.runtime()
	ep, err := s.caller.Endpoint(cc.Worker.Namespace + "/backend/generate")
	if cc.Worker.Namespace == "" {
		ep, err = s.caller.Endpoint(llm.DefaultNamespace + "/backend/generate")
	}
	if err != nil {
		t.Fatal(err)
	}
	s.client, err = loom.NewClient[llm.Request, llm.Response](t.Context(), ep)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.client.WaitForInstances(timeout(t, 5*time.Second), cc.Workers); err != nil {
		t.Fatal(err)
	}
	return s
}

// runtime starts a runtime in the system, shut down when the test ends.
func (s *system) runtime() *loom.Runtime {
	s.t.Helper()
	d := s.store.Connect()
	rt, err := loom.NewRuntime(context.Background(), loom.WithConfig(s.cfg), loom.WithDiscovery(d), loom.WithLogger(quiet))
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = rt.Shutdown(ctx)
		_ = d.Close()
	})
	return rt
}

func timeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// result is what one request's stream said.
type result struct {
	tokens       []uint32
	finish       string
	worker       uint64
	cachedTokens int
	items        int
	err          error
}

func collect(ctx context.Context, eng loom.Engine[llm.Request, llm.Response], req llm.Request) result {
	var r result
	for resp, err := range eng.Generate(ctx, req) {
		if err != nil {
			r.err = err
			break
		}
		if r.items == 0 {
			r.worker, r.cachedTokens = resp.Worker, resp.CachedTokens
		}
		r.items++
		r.tokens = append(r.tokens, resp.TokenIDs...)
		if resp.FinishReason != "" {
			r.finish = resp.FinishReason
		}
	}
	return r
}

func prompt(seed uint32, n int) []uint32 {
	p := make([]uint32, n)
	for i := range p {
		p[i] = seed*100000 + uint32(i)
	}
	return p
}

// waitFor polls cond until it holds or fails the test after d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
