package loom_test

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/discovery"
)

func TestTheContextTree(t *testing.T) {
	// blocking serves an endpoint whose handler reports its context and
	// waits for it to end.
	blocking := func(t *testing.T, rt *loom.Runtime, path string) (*loom.Endpoint, chan context.Context) {
		ctxs := make(chan context.Context, 1)
		ep := serve(t, rt, path, func(ctx context.Context, _ int) iter.Seq2[int, error] {
			return func(yield func(int, error) bool) {
				ctxs <- ctx
				<-ctx.Done()
			}
		})
		return ep, ctxs
	}
	t.Run("cancelling a component cancels its endpoints and their requests", func(t *testing.T) {
		rt := newCluster(t).runtime()
		ep, ctxs := blocking(t, rt, "tree/comp/a")
		other := serve(t, rt, "tree/other/b", echoID(rt))
		go func() { _, _ = collect(client[int, int](t, rt, "tree/comp/a").Generate(context.Background(), 0)) }()
		reqCtx := <-ctxs
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		defer cancel()
		_ = ep.Component().Shutdown(ctx)
		within(t, 5*time.Second, reqCtx.Done(), "the request context ending")
		within(t, 5*time.Second, ep.Context().Done(), "the endpoint context ending")
		if rt.Context().Err() != nil || other.Context().Err() != nil {
			t.Fatal("cancelling a component cancelled its runtime or a sibling component")
		}
	})
	t.Run("cancelling a request never cancels its endpoint", func(t *testing.T) {
		rt := newCluster(t).runtime()
		ep, ctxs := blocking(t, rt, "tree/req/a")
		ctx, cancel := context.WithCancel(context.Background())
		go func() { _, _ = collect(client[int, int](t, rt, "tree/req/a").Generate(ctx, 0)) }()
		reqCtx := <-ctxs
		cancel()
		within(t, 5*time.Second, reqCtx.Done(), "the request context ending")
		if ep.Context().Err() != nil || ep.Component().Context().Err() != nil || rt.Context().Err() != nil {
			t.Fatal("cancelling a request cancelled a parent")
		}
	})
	t.Run("shutting the runtime down cancels everything below it", func(t *testing.T) {
		rt := newCluster(t).runtime()
		ep, ctxs := blocking(t, rt, "tree/rt/a")
		go func() { _, _ = collect(client[int, int](t, rt, "tree/rt/a").Generate(context.Background(), 0)) }()
		reqCtx := <-ctxs
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		defer cancel()
		err := rt.Shutdown(ctx)
		if err == nil || !strings.Contains(err.Error(), "1 requests still running") {
			t.Errorf("Shutdown = %v, want it to report the cancelled request", err)
		}
		for name, c := range map[string]context.Context{"request": reqCtx, "endpoint": ep.Context(), "component": ep.Component().Context(), "runtime": rt.Context()} {
			within(t, 5*time.Second, c.Done(), "the "+name+" context ending")
		}
	})
}

func TestAnEndpointDrainsOnShutdown(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		caller := c.runtime()
		slowRT, otherRT := c.runtime(), c.runtime()
		inHandler, finish := make(chan struct{}), make(chan struct{})
		slow := serve(t, slowRT, "drain/svc/gen", func(ctx context.Context, wait bool) iter.Seq2[uint64, error] {
			return func(yield func(uint64, error) bool) {
				if wait {
					close(inHandler)
					<-finish
				}
				yield(slowRT.ID(), nil)
			}
		})
		serve(t, otherRT, "drain/svc/gen", echoIDBool(otherRT))
		cl := client[bool, uint64](t, caller, "drain/svc/gen")
		waitInstances(t, cl, 2)

		var inflight []uint64
		var inflightErr error
		var wg sync.WaitGroup
		wg.Go(func() { inflight, inflightErr = collect(cl.Direct(slowRT.ID()).Generate(context.Background(), true)) })
		<-inHandler

		shutdownDone := make(chan error, 1)
		go func() { shutdownDone <- slow.Shutdown(context.Background()) }()

		// The instance leaves discovery at once; new calls go to the other.
		deadline := time.Now().Add(2 * time.Second)
		for len(cl.Instances()) != 1 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if n := len(cl.Instances()); n != 1 {
			t.Fatalf("client sees %d instances after shutdown began, want 1", n)
		}
		for range 10 {
			got, err := collect(cl.Generate(context.Background(), false))
			if err != nil || got[0] != otherRT.ID() {
				t.Fatalf("a new call during the drain got %v, %v; want the other instance", got, err)
			}
		}
		select {
		case err := <-shutdownDone:
			t.Fatalf("Shutdown returned (%v) with a request in flight", err)
		default:
		}
		close(finish)
		wg.Wait()
		if inflightErr != nil || len(inflight) != 1 || inflight[0] != slowRT.ID() {
			t.Fatalf("the in-flight request got %v, %v; want it to finish", inflight, inflightErr)
		}
		if err := <-shutdownDone; err != nil {
			t.Fatalf("Shutdown = %v after a clean drain", err)
		}
		list, err := c.store.Connect().List(context.Background(), discovery.Query{Namespace: "drain"})
		if err != nil || len(list) != 1 || list[0].ID != otherRT.ID() {
			t.Fatalf("discovery holds %v (%v), want only the other instance", list, err)
		}
	})
}

// laggingDiscovery holds each Unregister until released, as a remote
// store's watchers lag behind a shutdown.
type laggingDiscovery struct {
	discovery.Discovery
	release chan struct{}
	called  chan struct{} // if set, gets a value when Unregister is called
}

func (d laggingDiscovery) Unregister(ctx context.Context, inst discovery.Instance) error {
	if d.called != nil {
		select {
		case d.called <- struct{}{}:
		default:
		}
	}
	<-d.release
	return d.Discovery.Unregister(ctx, inst)
}

func TestADrainingInstanceIsRetriedElsewhere(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		caller := c.runtime()
		lag := laggingDiscovery{Discovery: c.store.Connect(), release: make(chan struct{})}
		defer lag.Close()
		a, b := c.runtime(loom.WithDiscovery(lag)), c.runtime()
		epA := serve(t, a, "retry/svc/id", echoID(a))
		serve(t, b, "retry/svc/id", echoID(b))
		preferA := loom.PickerFunc(func(_ context.Context, cs []*loom.Candidate) (*loom.Candidate, error) {
			for _, cand := range cs {
				if cand.ID == a.ID() {
					return cand, nil
				}
			}
			return cs[0], nil
		})
		cl := client[int, uint64](t, caller, "retry/svc/id", loom.WithPicker(preferA))
		noRetry := client[int, uint64](t, caller, "retry/svc/id", loom.WithoutRetry(), loom.WithPicker(preferA))
		waitInstances(t, cl, 2)
		waitInstances(t, noRetry, 2)

		shutdown := make(chan error, 1)
		go func() { shutdown <- epA.Shutdown(context.Background()) }()
		// a refuses while its record is still in discovery.
		deadline := time.Now().Add(2 * time.Second)
		for {
			_, err := collect(noRetry.Generate(context.Background(), 1))
			if errors.Is(err, loom.ErrDraining) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("without retry: %v, want ErrDraining once a is draining", err)
			}
			time.Sleep(time.Millisecond)
		}
		if len(cl.Instances()) != 2 {
			t.Fatal("the test needs the client to still see the draining instance")
		}
		got, err := collect(cl.Generate(context.Background(), 1))
		if err != nil || got[0] != b.ID() {
			t.Fatalf("got %v, %v; want the call retried on the other instance", got, err)
		}
		close(lag.release)
		if err := <-shutdown; err != nil {
			t.Fatal(err)
		}
	})
}

// In a rolling restart a caller may hear that the old instance is
// draining before it hears of the new one, as when its discovery watch
// lags after an outage. The call waits for the new one, as a call with no
// instance at all does, instead of failing.
func TestACallEveryInstanceRefusedWaitsForANewOne(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		caller := c.runtime()
		lag := laggingDiscovery{Discovery: c.store.Connect(), release: make(chan struct{})}
		defer lag.Close()
		old := c.runtime(loom.WithDiscovery(lag))
		ep := serve(t, old, "restart/svc/id", echoID(old))
		patient := client[int, uint64](t, caller, "restart/svc/id", loom.WithWaitTimeout(time.Hour))
		now := client[int, uint64](t, caller, "restart/svc/id", loom.WithWaitTimeout(0))
		waitInstances(t, patient, 1)
		waitInstances(t, now, 1)

		shutdown := make(chan error, 1)
		go func() { shutdown <- ep.Shutdown(context.Background()) }()
		// old refuses while its record is still in discovery; a client
		// that does not wait says so at once.
		var err error
		waitFor(t, 20*time.Second, "the old instance to refuse as draining", func() bool {
			_, err = collect(now.Generate(context.Background(), 1))
			return errors.Is(err, loom.ErrDraining)
		})
		if strings.Contains(err.Error(), "appeared") {
			t.Errorf("without a wait: %v", err)
		}
		res := callRefusedOnce(t, caller, patient)
		if n := len(patient.Instances()); n != 1 {
			t.Fatalf("the client sees %d instances; the test needs it to see the draining one alone", n)
		}
		fresh := c.runtime()
		serve(t, fresh, "restart/svc/id", echoID(fresh))
		if r := <-res; r.err != nil || len(r.got) != 1 || r.got[0] != fresh.ID() {
			t.Fatalf("got %v, %v; want the call served by the new instance %x", r.got, r.err, fresh.ID())
		}
		close(lag.release)
		if err := <-shutdown; err != nil {
			t.Fatal(err)
		}
	})
}

// Overloaded is backpressure: a call every instance refused as overloaded
// fails at once, however long the client would wait for an instance.
func TestACallEveryInstanceRefusedAsOverloadedFailsAtOnce(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		for range 2 {
			serve(t, c.runtime(), "busy/svc/id", func(ctx context.Context, _ int) iter.Seq2[uint64, error] {
				return loom.Fail[uint64](fmt.Errorf("%w: busy", loom.ErrOverloaded))
			})
		}
		caller := c.runtime()
		cl := client[int, uint64](t, caller, "busy/svc/id", loom.WithWaitTimeout(time.Hour))
		waitInstances(t, cl, 2)
		// Were it to wait, the caller's deadline would end it, and say so.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := collect(cl.Generate(ctx, 1))
		if !errors.Is(err, loom.ErrOverloaded) || strings.Contains(err.Error(), "appeared") {
			t.Fatalf("err = %v, want ErrOverloaded at once", err)
		}
		if n := metricValue(t, caller, "loom_client_retries_total"); n != 2 {
			t.Errorf("loom_client_retries_total = %v, want 2: each instance tried once", n)
		}
	})
}

func echoIDBool(rt *loom.Runtime) func(ctx context.Context, _ bool) iter.Seq2[uint64, error] {
	return func(ctx context.Context, _ bool) iter.Seq2[uint64, error] {
		return func(yield func(uint64, error) bool) { yield(rt.ID(), nil) }
	}
}

func TestBackgroundTaskPanicsAreCountedNotFatal(t *testing.T) {
	rt := newCluster(t).runtime()
	done, release := make(chan struct{}), make(chan struct{})
	if err := rt.Go("flaky-watch", func(ctx context.Context) error {
		defer close(done)
		select {
		case <-release:
		case <-ctx.Done():
			return ctx.Err()
		}
		panic("nil map")
	}); err != nil {
		t.Fatal(err)
	}
	// The task's series is there, at 0, before its first panic, so that
	// increase() sees that panic.
	if err := testutil.GatherAndCompare(rt.Metrics().Registry(), strings.NewReader(`
# HELP loom_background_task_panics_total Panics recovered in background tasks, by task.
# TYPE loom_background_task_panics_total counter
loom_background_task_panics_total{task="flaky-watch"} 0
`), "loom_background_task_panics_total"); err != nil {
		t.Fatal(err)
	}
	close(release)
	<-done
	waitFor(t, 2*time.Second, "loom_background_task_panics_total to count the panic", func() bool {
		return metricValue(t, rt, "loom_background_task_panics_total") == 1
	})
}

func TestAfterShutdownCallsFailClearly(t *testing.T) {
	rt := newCluster(t).runtime()
	if err := rt.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	ep, err := rt.Endpoint("after/shut/down")
	if err == nil {
		err = loom.Serve(context.Background(), ep, loom.EngineFunc[int, uint64](echoID(rt)))
	}
	if !errors.Is(err, loom.ErrClosed) {
		t.Fatalf("serving after shutdown: %v, want ErrClosed", err)
	}
}

func TestAComponentShutdownDuringTheRuntimesDrainWaitsForItsRequests(t *testing.T) {
	c := newCluster(t)
	rt := c.runtime()
	inHandler, finish := make(chan struct{}), make(chan struct{})
	ep := serve(t, rt, "both/svc/gen", func(ctx context.Context, _ int) iter.Seq2[int, error] {
		return func(yield func(int, error) bool) {
			close(inHandler)
			select {
			case <-finish:
				yield(1, nil)
			case <-ctx.Done():
			}
		}
	})
	cl := client[int, int](t, c.runtime(), "both/svc/gen")
	waitInstances(t, cl, 1)
	var got []int
	var err error
	var wg sync.WaitGroup
	wg.Go(func() { got, err = collect(cl.Generate(context.Background(), 0)) })
	<-inHandler
	// The runtime drains (as loom.Run does on SIGTERM), and the program
	// shuts its component down meanwhile, with time to spare.
	rtDone := make(chan error, 1)
	go func() { rtDone <- rt.Shutdown(context.Background()) }()
	deadline := time.Now().Add(2 * time.Second)
	for len(cl.Instances()) != 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	compDone := make(chan error, 1)
	go func() { compDone <- ep.Component().Shutdown(context.Background()) }()
	select {
	case e := <-compDone:
		t.Fatalf("the component's Shutdown returned (%v) with a request in flight", e)
	case <-time.After(50 * time.Millisecond):
	}
	close(finish)
	wg.Wait()
	if err != nil || len(got) != 1 {
		t.Fatalf("the in-flight request got %v, %v; want it to finish", got, err)
	}
	if e := <-compDone; e != nil {
		t.Fatalf("component Shutdown = %v after a clean drain", e)
	}
	if e := <-rtDone; e != nil {
		t.Fatalf("runtime Shutdown = %v after a clean drain", e)
	}
}

// unregisterBarrier holds each Unregister until n are under way at once,
// or until the call's context ends.
type unregisterBarrier struct {
	discovery.Discovery
	n       int32
	waiting atomic.Int32
	all     chan struct{}
}

func (d *unregisterBarrier) Unregister(ctx context.Context, inst discovery.Instance) error {
	if d.waiting.Add(1) == d.n {
		close(d.all)
	}
	select {
	case <-d.all:
		return d.Discovery.Unregister(ctx, inst)
	case <-ctx.Done():
		return fmt.Errorf("%d of %d unregisters under way at once: %w", d.waiting.Load(), d.n, ctx.Err())
	}
}

// A runtime shutting down unregisters its endpoints all at once, so that a
// discovery server that does not answer costs the shutdown one timeout,
// not one per endpoint.
func TestShutdownUnregistersEveryEndpointAtOnce(t *testing.T) {
	c := newClusterOn(t, "tcp")
	d := &unregisterBarrier{Discovery: c.store.Connect(), n: 3, all: make(chan struct{})}
	defer d.Close()
	rt := c.runtime(loom.WithDiscovery(d))
	for _, path := range []string{"unreg/svc/a", "unreg/svc/b", "unreg/svc/c"} {
		serve(t, rt, path, echoID(rt))
	}
	if err := rt.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}
