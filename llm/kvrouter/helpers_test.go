package kvrouter

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/discovery/memory"
	"github.com/loomrt/loom/events"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/llm"
	"github.com/loomrt/loom/llm/mocker"
	"github.com/loomrt/loom/loomtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// system is an embedded NATS server, a private discovery store, mock
// workers and a frontend runtime whose client routes with a router.
type system struct {
	*loomtest.System
	t       tb
	cluster *mocker.Cluster
	fe      *loom.Runtime
}

// tb is a test or a benchmark.
type tb = testing.TB

func newSystem(t tb, workers int, wc mocker.Config) *system {
	t.Helper()
	s := &system{System: loomtest.New(t, loomtest.Options{JetStream: true, Plane: "tcp"}), t: t}
	var err error
	s.cluster, err = mocker.StartCluster(testutil.Timeout(t, 10*time.Second), mocker.ClusterConfig{Workers: workers, Worker: wc, Runtime: s.Config, NATS: s.NATS, Store: s.Store, Logger: loomtest.Quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.cluster.Shutdown(ctx)
	})
	s.fe = s.Runtime()
	return s
}

// kvPublisher returns a kv_events publisher speaking as the worker with
// instance id, from a runtime of its own on the system's NATS.
func (s *system) kvPublisher(ctx context.Context, id uint64) *events.Publisher[llm.KvEvent] {
	s.t.Helper()
	return publishAs[llm.KvEvent](ctx, s, id, llm.TopicKvEvents)
}

// publishAs returns a publisher on the workers' topic speaking as the
// worker with instance id, from a runtime of its own on the system's
// NATS.
func publishAs[T any](ctx context.Context, s *system, id uint64, topic string) *events.Publisher[T] {
	s.t.Helper()
	d := memory.New()
	s.t.Cleanup(func() { d.Close() })
	rt, err := loom.NewRuntime(ctx, loom.WithConfig(s.Config), loom.WithDiscovery(d), loom.WithInstanceID(id), loom.WithLogger(loomtest.Quiet))
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { rt.Shutdown(context.Background()) })
	pub, err := events.NewPublisher[T](ctx, rt, events.Scope{Namespace: llm.DefaultNamespace, Component: llm.WorkerComponent}, topic)
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { pub.Shutdown(context.Background()) })
	return pub
}

// client returns a client of the workers' generate endpoint routing with
// r, once it knows n workers.
func (s *system) client(r llm.Router, n int) *loom.Client[llm.Request, llm.Response] {
	s.t.Helper()
	ep, err := s.fe.Endpoint(llm.DefaultNamespace + "/backend/generate")
	if err != nil {
		s.t.Fatal(err)
	}
	c, err := loom.NewClient[llm.Request, llm.Response](s.t.Context(), ep, loom.WithPicker(r))
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.WaitForInstances(ctx, n); err != nil {
		s.t.Fatal(err)
	}
	return c
}

func (s *system) router(name string, cfg Config) Router {
	s.t.Helper()
	r, err := New(s.t.Context(), s.fe, name, cfg)
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { _ = r.Close() })
	return r
}

// result is what one routed request saw.
type result struct {
	worker  uint64
	cached  int
	tokens  int
	ttft    time.Duration
	overlap int
	err     error
}

// send routes one request as a frontend does: the RouteInfo in the
// context, Done when the stream ends.
func send(ctx context.Context, c *loom.Client[llm.Request, llm.Response], r llm.Router, id string, toks []uint32, maxTokens int) result {
	ri := &llm.RouteInfo{RequestID: id, Model: mocker.DefaultModel, TokenIDs: toks}
	ctx = llm.WithRoute(ctx, ri)
	defer r.Done(id)
	var res result
	start := time.Now()
	for resp, err := range c.Generate(ctx, llm.Request{ID: id, Model: mocker.DefaultModel, TokenIDs: toks, MaxTokens: maxTokens}) {
		if err != nil {
			res.err = err
			break
		}
		if res.tokens == 0 && res.ttft == 0 {
			res.ttft = time.Since(start)
			res.worker, res.cached = resp.Worker, resp.CachedTokens
		}
		res.tokens += len(resp.TokenIDs)
	}
	res.overlap = ri.OverlapBlocks
	if res.err == nil && ri.Worker != res.worker {
		res.err = errorf("router recorded worker %x, the stream came from %x", ri.Worker, res.worker)
	}
	return res
}

func prompt(seed uint32, n int) []uint32 {
	p := make([]uint32, n)
	for i := range p {
		p[i] = seed*100000 + uint32(i)
	}
	return p
}

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }

// account returns worker id's account, making the worker's state.
func (r *KVRouter) account(id uint64) *account { return &r.worker(id).acct }
