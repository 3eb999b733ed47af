package mocker_test

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/llm"
	"github.com/loomrt/loom/llm/mocker"
	"github.com/loomrt/loom/loomtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// system is an embedded NATS server with JetStream, a private discovery
// store, a cluster of mock workers and a caller's runtime, standing in
// for several processes.
type system struct {
	*loomtest.System
	t       *testing.T
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
	// Calls travel over TCP, as between processes.
	s := &system{System: loomtest.New(t, loomtest.Options{JetStream: true, Plane: "tcp"}), t: t}
	if cc.Runtime.Queue.AckWait > 0 {
		s.Config.Queue.AckWait = cc.Runtime.Queue.AckWait
	}
	cc.Runtime, cc.NATS, cc.Store, cc.Logger = s.Config, s.NATS, s.Store, loomtest.Quiet
	var err error
	s.cluster, err = mocker.StartCluster(testutil.Timeout(t, 10*time.Second), cc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.cluster.Shutdown(ctx)
	})
	s.caller = s.Runtime()
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
	if err := s.client.WaitForInstances(testutil.Timeout(t, 5*time.Second), cc.Workers); err != nil {
		t.Fatal(err)
	}
	return s
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
