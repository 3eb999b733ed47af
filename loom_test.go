package loom_test

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/discovery"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if runChild() {
		return
	}
	goleak.VerifyTestMain(m)
}

func TestInvalidNamesAreErrorsThatNameTheRule(t *testing.T) {
	rt := newCluster(t).runtime()
	ns, err := rt.Namespace("good.nested-ns_1")
	if err != nil {
		t.Fatal(err)
	}
	comp, err := ns.Component("backend")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		call func() error
		want []string
	}{
		{"an upper-case namespace", func() error { _, err := rt.Namespace("Dynamo"); return err }, []string{`namespace name "Dynamo"`, "^[a-z0-9_-]+"}},
		{"an empty namespace", func() error { _, err := rt.Namespace(""); return err }, []string{"namespace name: empty"}},
		{"a namespace with an empty part", func() error { _, err := rt.Namespace("a..b"); return err }, []string{`"a..b"`}},
		{"a component with a dot", func() error { _, err := ns.Component("a.b"); return err }, []string{`component name "a.b"`, "^[a-z0-9_-]+$"}},
		{"a component with a slash", func() error { _, err := ns.Component("a/b"); return err }, []string{`component name "a/b"`}},
		{"an empty endpoint", func() error { _, err := comp.Endpoint(""); return err }, []string{"endpoint name: empty"}},
		{"an endpoint with a space", func() error { _, err := comp.Endpoint("gen erate"); return err }, []string{`endpoint name "gen erate"`}},
		{"a path with two parts", func() error { _, err := rt.Endpoint("a/b"); return err }, []string{"namespace/component/endpoint"}},
	}
	for _, tt := range tests {
		t.Run("rejects "+tt.name, func(t *testing.T) {
			err := tt.call()
			if err == nil {
				t.Fatal("no error")
			}
			var ne *discovery.NameError
			if !errors.As(err, &ne) && !strings.Contains(err.Error(), "namespace/component/endpoint") {
				t.Errorf("error %v is not a *discovery.NameError", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestAStreamFlowsFromHandlerToCaller(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		server, caller := c.runtime(), c.runtime()
		serve(t, server, "test/words/split", func(ctx context.Context, s string) iter.Seq2[string, error] {
			return func(yield func(string, error) bool) {
				for _, w := range strings.Fields(s) {
					if !yield(w, nil) {
						return
					}
				}
			}
		})
		cl := client[string, string](t, caller, "test/words/split")
		got, err := collect(cl.Generate(context.Background(), "the quick brown fox"))
		if err != nil {
			t.Fatal(err)
		}
		if want := []string{"the", "quick", "brown", "fox"}; !slices.Equal(got, want) {
			t.Fatalf("got %q, want %q", got, want)
		}
	})
}

func TestAHandlerErrorEndsTheStreamWithIt(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		rt := c.runtime()
		boom := errors.New("model not loaded")
		serve(t, rt, "test/err/gen", func(ctx context.Context, _ int) iter.Seq2[int, error] {
			return func(yield func(int, error) bool) {
				if yield(1, nil) {
					yield(0, boom)
				}
			}
		})
		got, err := collect(client[int, int](t, rt, "test/err/gen").Generate(context.Background(), 0))
		var he *loom.HandlerError
		sameErr := errors.Is(err, boom) || (errors.As(err, &he) && he.Message == boom.Error() && he.Path == "test/err/gen")
		if !sameErr || len(got) != 1 {
			t.Fatalf("got %v, %v; want [1] and the handler's error", got, err)
		}
	})
}

func TestRouting(t *testing.T) {
	tests := []struct {
		name   string
		picker loom.Picker
		check  func(t *testing.T, counts map[uint64]int, n int)
	}{
		{"round robin spreads requests evenly", loom.RoundRobin(), func(t *testing.T, counts map[uint64]int, n int) {
			for id, got := range counts {
				if got != n/3 {
					t.Errorf("instance %x got %d of %d requests, want %d", id, got, n, n/3)
				}
			}
		}},
		{"random reaches every instance", loom.Random(), reachesAll},
		{"power of two reaches every instance", loom.PowerOfTwo(), reachesAll},
		{"least loaded reaches every instance when idle", loom.LeastLoaded(), reachesAll},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			eachPlane(t, func(t *testing.T, c *cluster) {
				caller := c.runtime()
				for range 3 {
					rt := c.runtime()
					serve(t, rt, "test/route/id", echoID(rt))
				}
				cl := client[int, uint64](t, caller, "test/route/id", loom.WithPicker(tt.picker))
				waitInstances(t, cl, 3)
				counts := map[uint64]int{}
				const n = 300
				for range n {
					got, err := collect(cl.Generate(context.Background(), 1))
					if err != nil {
						t.Fatal(err)
					}
					counts[got[0]]++
				}
				if len(counts) != 3 {
					t.Fatalf("requests reached %d instances, want 3: %v", len(counts), counts)
				}
				tt.check(t, counts, n)
			})
		})
	}
}

func reachesAll(t *testing.T, counts map[uint64]int, n int) {
	for id, got := range counts {
		if got == 0 {
			t.Errorf("instance %x got no requests", id)
		}
	}
}

func TestLoadAwarePickersAvoidABusyInstance(t *testing.T) {
	for _, p := range []struct {
		name   string
		picker loom.Picker
	}{{"least loaded", loom.LeastLoaded()}, {"power of two", loom.PowerOfTwo()}} {
		t.Run(p.name+" avoids the instance with requests in flight", func(t *testing.T) {
			eachPlane(t, func(t *testing.T, c *cluster) {
				caller := c.runtime()
				release := make(chan struct{})
				var started sync.WaitGroup
				var busyID atomic.Uint64
				// Two instances: one blocks every request until released.
				busy := c.runtime()
				serve(t, busy, "test/load/gen", func(ctx context.Context, block bool) iter.Seq2[uint64, error] {
					return func(yield func(uint64, error) bool) {
						if block {
							started.Done()
							<-release
						}
						yield(busy.ID(), nil)
					}
				})
				busyID.Store(busy.ID())
				idle := c.runtime()
				serve(t, idle, "test/load/gen", func(ctx context.Context, block bool) iter.Seq2[uint64, error] {
					return func(yield func(uint64, error) bool) { yield(idle.ID(), nil) }
				})
				cl := client[bool, uint64](t, caller, "test/load/gen", loom.WithPicker(p.picker))
				waitInstances(t, cl, 2)
				// Load the busy instance directly with 5 blocked requests.
				var wg sync.WaitGroup
				started.Add(5)
				for range 5 {
					wg.Go(func() { _, _ = collect(cl.Direct(busy.ID()).Generate(context.Background(), true)) })
				}
				started.Wait()
				for range 20 {
					got, err := collect(cl.Generate(context.Background(), false))
					if err != nil {
						t.Fatal(err)
					}
					if got[0] == busyID.Load() {
						t.Fatalf("a request went to the instance with 5 in flight")
					}
				}
				close(release)
				wg.Wait()
			})
		})
	}
}

func TestDirectAndCustomPickers(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		caller := c.runtime()
		var ids []uint64
		for range 3 {
			rt := c.runtime()
			serve(t, rt, "test/direct/id", echoID(rt))
			ids = append(ids, rt.ID())
		}
		t.Run("direct reaches only the named instance", func(t *testing.T) {
			cl := client[int, uint64](t, caller, "test/direct/id")
			for _, id := range ids {
				for range 5 {
					got, err := collect(cl.Direct(id).Generate(context.Background(), 1))
					if err != nil || got[0] != id {
						t.Fatalf("direct to %x answered %v, %v", id, got, err)
					}
				}
			}
		})
		t.Run("direct to an unknown instance fails with ErrNoInstances", func(t *testing.T) {
			cl := client[int, uint64](t, caller, "test/direct/id", loom.WithWaitTimeout(50*time.Millisecond))
			_, err := collect(cl.Direct(12345).Generate(context.Background(), 1))
			if !errors.Is(err, loom.ErrNoInstances) || !strings.Contains(err.Error(), "instance 3039") {
				t.Fatalf("err = %v, want ErrNoInstances naming instance 3039", err)
			}
		})
		t.Run("a caller-supplied picker decides", func(t *testing.T) {
			last := loom.PickerFunc(func(_ context.Context, c []*loom.Candidate) (*loom.Candidate, error) {
				return c[len(c)-1], nil
			})
			cl := client[int, uint64](t, caller, "test/direct/id", loom.WithPicker(last))
			waitInstances(t, cl, 3)
			got, err := collect(cl.Generate(context.Background(), 1))
			if err != nil || got[0] != slices.Max(ids) {
				t.Fatalf("got %v, %v; want the instance with the highest id %x", got, err, slices.Max(ids))
			}
		})
		t.Run("a picker's error reaches the caller", func(t *testing.T) {
			refuse := loom.PickerFunc(func(context.Context, []*loom.Candidate) (*loom.Candidate, error) {
				return nil, errors.New("no instance has the adapter loaded")
			})
			cl := client[int, uint64](t, caller, "test/direct/id", loom.WithPicker(refuse))
			_, err := collect(cl.Generate(context.Background(), 1))
			if err == nil || !strings.Contains(err.Error(), "adapter") {
				t.Fatalf("err = %v", err)
			}
		})
	})
}

func TestCallingAnEndpointWithNoInstancesFailsAfterTheWait(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		rt := c.runtime()
		cl := client[int, int](t, rt, "test/nobody/home", loom.WithWaitTimeout(100*time.Millisecond))
		start := time.Now()
		_, err := collect(cl.Generate(context.Background(), 1))
		if !errors.Is(err, loom.ErrNoInstances) {
			t.Fatalf("err = %v, want ErrNoInstances", err)
		}
		if !strings.Contains(err.Error(), "test/nobody/home") || !strings.Contains(err.Error(), "loom ls") {
			t.Errorf("error %q should name the endpoint and say how to look", err)
		}
		if waited := time.Since(start); waited < 100*time.Millisecond {
			t.Errorf("failed after %s, before the wait timeout", waited)
		}
	})
}

func TestACallWaitsForAnInstanceThatAppears(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		caller := c.runtime()
		cl := client[int, uint64](t, caller, "test/late/id")
		server := c.runtime()
		// The server starts once the call waits, not before: a call that
		// found an instance at once would not test the wait.
		ctx := &waitWatch{Context: context.Background(), waiting: make(chan struct{})}
		ep := endpoint(t, server, "test/late/id")
		callDone, served := make(chan struct{}), make(chan error, 1)
		go func() {
			select {
			case <-ctx.waiting:
			case <-callDone:
				served <- errors.New("the call ended without waiting for an instance")
				return
			}
			served <- loom.Serve(context.Background(), ep, loom.EngineFunc[int, uint64](echoID(server)))
		}()
		got, err := collect(cl.Generate(ctx, 1))
		close(callDone)
		if e := <-served; e != nil {
			t.Fatal(e)
		}
		if err != nil || got[0] != server.ID() {
			t.Fatalf("got %v, %v", got, err)
		}
	})
}

// waitWatch is a context that closes waiting when first asked for Done. A
// call with no instance to pick asks for it as it starts to wait for one;
// a call that picks one at once does not until after it has picked.
type waitWatch struct {
	context.Context
	once    sync.Once
	waiting chan struct{}
}

func (w *waitWatch) Done() <-chan struct{} {
	w.once.Do(func() { close(w.waiting) })
	return w.Context.Done()
}

func TestAHandlerPanicFailsOnlyThatRequest(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		rt := c.runtime()
		serve(t, rt, "test/panic/gen", func(ctx context.Context, boom bool) iter.Seq2[string, error] {
			return func(yield func(string, error) bool) {
				if boom {
					panic("index out of range in the model")
				}
				yield("fine", nil)
			}
		})
		cl := client[bool, string](t, rt, "test/panic/gen")
		_, err := collect(cl.Generate(context.Background(), true))
		if !errors.Is(err, loom.ErrHandlerPanic) || !strings.Contains(err.Error(), "index out of range") {
			t.Fatalf("err = %v, want ErrHandlerPanic with the panic value", err)
		}
		got, err := collect(cl.Generate(context.Background(), false))
		if err != nil || got[0] != "fine" {
			t.Fatalf("the endpoint did not keep serving: %v, %v", got, err)
		}
	})
}

// A handler that goes on yielding after yield returned false breaks the
// iterator contract: the request fails as if the handler had panicked,
// as a range loop over its stream would make it.
func TestAHandlerYieldingAfterFalseFailsAsAPanic(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		rt := c.runtime()
		serve(t, rt, "test/panic/yield", func(ctx context.Context, n int) iter.Seq2[string, error] {
			return func(yield func(string, error) bool) {
				yield("", errors.New("refused by the model"))
				yield("after the end", nil)
			}
		})
		cl := client[int, string](t, rt, "test/panic/yield")
		_, err := collect(cl.Generate(context.Background(), 1))
		if !errors.Is(err, loom.ErrHandlerPanic) || !strings.Contains(err.Error(), "continued iteration") {
			t.Fatalf("err = %v, want ErrHandlerPanic saying the stream continued iteration", err)
		}
	})
}

// A request's state serves the endpoint's next request once it is over
// (over the network it is reused): what a handler keeps past its request
// must not reach the next one. A kept yield panics as any late yield
// does, and a kept context reports that its request ended.
func TestWhatAHandlerKeepsPastItsRequestDoesNotReachTheNext(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		rt := c.runtime()
		type kept struct {
			ctx   context.Context
			yield func(string, error) bool
		}
		keep := make(chan kept, 1)
		entered, release := make(chan struct{}), make(chan struct{})
		serve(t, rt, "test/keep/gen", func(ctx context.Context, n int) iter.Seq2[string, error] {
			return func(yield func(string, error) bool) {
				if n == 1 {
					keep <- kept{ctx, yield}
					yield("first", nil)
					return
				}
				close(entered)
				<-release
				yield("second", nil)
			}
		})
		cl := client[int, string](t, rt, "test/keep/gen")
		if got, err := collect(cl.Generate(context.Background(), 1)); err != nil || len(got) != 1 || got[0] != "first" {
			t.Fatalf("first request: %v, %v", got, err)
		}
		k := <-keep
		type result struct {
			got []string
			err error
		}
		second := make(chan result, 1)
		go func() {
			got, err := collect(cl.Generate(context.Background(), 2))
			second <- result{got, err}
		}()
		<-entered
		select {
		case <-k.ctx.Done():
		default:
			t.Error("the first request's context is not done while the second is served")
		}
		func() {
			defer func() {
				v := recover()
				err, _ := v.(error)
				if err == nil || !strings.Contains(err.Error(), "continued iteration") {
					t.Errorf("a kept yield called after its request recovered %v, want a panic saying the stream continued iteration", v)
				}
			}()
			k.yield("injected", nil)
		}()
		close(release)
		if r := <-second; r.err != nil || len(r.got) != 1 || r.got[0] != "second" {
			t.Fatalf("second request: %v, %v; want only its own item", r.got, r.err)
		}
	})
}

func TestAPanicInTheCallersLoopIsNotTheHandlers(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		rt := c.runtime()
		serve(t, rt, "test/panic/loop", echoID(rt))
		cl := client[int, uint64](t, rt, "test/panic/loop")
		defer func() {
			if v := recover(); v != "caller bug" {
				t.Fatalf("recovered %v, want the caller's own panic", v)
			}
		}()
		for range cl.Generate(context.Background(), 3) {
			panic("caller bug")
		}
	})
}

func TestACallerThatCancelsKillsTheHandlerAtOnce(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		rt := c.runtime()
		sawCancel := make(chan struct{})
		serve(t, rt, "test/kill/gen", func(ctx context.Context, _ int) iter.Seq2[int, error] {
			return func(yield func(int, error) bool) {
				for i := 0; ; i++ {
					select {
					case <-ctx.Done():
						close(sawCancel)
						yield(0, ctx.Err())
						return
					case <-time.After(time.Millisecond):
					}
					if !yield(i, nil) {
						// The kill reached the yield first (it was
						// under way between two waits): the context
						// says so too.
						<-ctx.Done()
						close(sawCancel)
						return
					}
				}
			}
		})
		cl := client[int, int](t, rt, "test/kill/gen")
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var items int
		var err error
		for _, e := range cl.Generate(ctx, 0) {
			if e != nil {
				err = e
				break
			}
			if items++; items == 3 {
				cancel()
			}
		}
		within(t, 5*time.Second, sawCancel, "the handler seeing the cancellation")
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("stream ended with %v, want context.Canceled", err)
		}
	})
}

func TestTheCallersDeadlineTravelsToTheHandler(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		rt := c.runtime()
		serve(t, rt, "test/deadline/gen", func(ctx context.Context, _ int) iter.Seq2[time.Time, error] {
			return func(yield func(time.Time, error) bool) {
				d, _ := ctx.Deadline()
				yield(d, nil)
			}
		})
		deadline := time.Now().Add(time.Hour).Truncate(time.Second)
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		defer cancel()
		got, err := collect(client[int, time.Time](t, rt, "test/deadline/gen").Generate(ctx, 0))
		// Over the network the deadline travels as time remaining, so it
		// arrives within the transit time rather than bit-exact.
		if err != nil || len(got) != 1 || got[0].Sub(deadline).Abs() > 100*time.Millisecond {
			t.Fatalf("handler saw deadline %v (%v), want %v", got, err, deadline)
		}
	})
}

func TestStopAsksTheHandlerToFinishGracefully(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		rt := c.runtime()
		serve(t, rt, "test/stop/gen", func(ctx context.Context, _ int) iter.Seq2[string, error] {
			return func(yield func(string, error) bool) {
				for {
					select {
					case <-loom.Stopped(ctx):
						yield("goodbye", nil) // a last item, then a clean end
						return
					case <-ctx.Done():
						return
					default:
					}
					if !yield("token", nil) {
						return
					}
				}
			}
		})
		cl := client[int, string](t, rt, "test/stop/gen")
		ctx, stop := loom.WithStop(context.Background())
		defer stop()
		var got []string
		for s, err := range cl.Generate(ctx, 0) {
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, s)
			if len(got) == 5 {
				stop()
			}
		}
		// Items already on their way when stop was asked still arrive;
		// then the handler's last item ends the stream cleanly.
		if len(got) < 6 || got[len(got)-1] != "goodbye" || slices.Contains(got[:len(got)-1], "goodbye") {
			t.Fatalf("got %d items ending %q, want at least 5 tokens then goodbye", len(got), got[max(0, len(got)-2):])
		}
	})
}

func TestStopAndKillReachTheRequestsAHandlerMakes(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		rt := c.runtime()
		childStopped, childKilled := make(chan struct{}), make(chan struct{})
		// The child endpoint reports what it saw.
		serve(t, rt, "test/chain/child", func(ctx context.Context, _ int) iter.Seq2[int, error] {
			return func(yield func(int, error) bool) {
				for {
					select {
					case <-loom.Stopped(ctx):
						close(childStopped)
						return
					case <-ctx.Done():
						close(childKilled)
						return
					default:
					}
					if !yield(1, nil) {
						// Dropped: on the local path the caller's loop may end
						// before the cancellation reaches this context; both
						// mean stop now, and neither is a graceful stop.
						if !loom.IsStopped(ctx) {
							close(childKilled)
						}
						return
					}
					time.Sleep(time.Millisecond)
				}
			}
		})
		child := client[int, int](t, rt, "test/chain/child")
		// The parent forwards its child's stream: a pipeline of two links.
		serve(t, rt, "test/chain/parent", func(ctx context.Context, n int) iter.Seq2[int, error] {
			return child.Generate(ctx, n)
		})
		parent := client[int, int](t, rt, "test/chain/parent")

		t.Run("stop", func(t *testing.T) {
			ctx, stop := loom.WithStop(context.Background())
			defer stop()
			for _, err := range parent.Generate(ctx, 0) {
				if err != nil {
					t.Fatal(err)
				}
				stop()
			}
			within(t, 5*time.Second, childStopped, "the child request seeing stop")
		})
		t.Run("kill", func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			// Killed once an item has come through both links: the child
			// request is running, not yet to be made.
			for range parent.Generate(ctx, 0) {
				cancel()
			}
			within(t, 5*time.Second, childKilled, "the child request seeing kill")
		})
	})
}

func TestBreakingOutOfTheLoopEndsTheHandler(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		rt := c.runtime()
		ended := make(chan struct{})
		serve(t, rt, "test/break/gen", func(ctx context.Context, _ int) iter.Seq2[int, error] {
			return func(yield func(int, error) bool) {
				defer close(ended)
				for i := 0; yield(i, nil); i++ {
				}
			}
		})
		for i := range client[int, int](t, rt, "test/break/gen").Generate(context.Background(), 0) {
			if i == 10 {
				break
			}
		}
		within(t, 5*time.Second, ended, "the handler returning")
	})
}

func TestACallerWithOtherTypesGoesThroughTheCodec(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		type req struct {
			Prompt string `json:"prompt"`
			Max    int    `json:"max"`
		}
		type tok struct {
			Text string `json:"text"`
		}
		rt := c.runtime()
		serve(t, rt, "test/codec/gen", func(ctx context.Context, r req) iter.Seq2[tok, error] {
			return func(yield func(tok, error) bool) {
				for i := range r.Max {
					if !yield(tok{Text: r.Prompt + strings.Repeat("!", i)}, nil) {
						return
					}
				}
			}
		})
		// The caller uses plain maps, as a tool that does not share the types would.
		cl := client[map[string]any, map[string]any](t, rt, "test/codec/gen")
		got, err := collect(cl.Generate(context.Background(), map[string]any{"prompt": "hi", "max": 2}))
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || got[1]["text"] != "hi!" {
			t.Fatalf("got %v", got)
		}
		t.Run("a request that does not decode is a BadRequestError", func(t *testing.T) {
			bad := client[string, tok](t, rt, "test/codec/gen")
			_, err := collect(bad.Generate(context.Background(), "not a struct"))
			var bre *loom.BadRequestError
			if !errors.As(err, &bre) || bre.Path != "test/codec/gen" {
				t.Fatalf("err = %v, want *BadRequestError for test/codec/gen", err)
			}
		})
	})
}

func TestServingTwiceInOneRuntimeIsAnError(t *testing.T) {
	rt := newCluster(t).runtime()
	ep := serve(t, rt, "test/twice/id", echoID(rt))
	err := loom.Serve(context.Background(), ep, loom.EngineFunc[int, uint64](echoID(rt)))
	if err == nil || !strings.Contains(err.Error(), "already served") {
		t.Fatalf("err = %v", err)
	}
}

// Overlapping calls, some cancelled as they go, each get their own answer
// and nothing else: over the network the client's streams and the
// server's request states serve one call after another, and a cancelled
// call's leftovers must not reach the next.
func TestOverlappingCallsWithCancellationsGetOnlyTheirOwnAnswers(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		srv, cli := c.runtime(), c.runtime()
		serve(t, srv, "test/reuse/echo", func(ctx context.Context, n int) iter.Seq2[int, error] {
			return func(yield func(int, error) bool) {
				if n%7 == 0 {
					<-ctx.Done() // answers only if cancelled: its caller gives up
					return
				}
				yield(n, nil)
			}
		})
		cl := client[int, int](t, cli, "test/reuse/echo")
		waitInstances(t, cl, 1)
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for g := range 8 {
			wg.Go(func() {
				for i := range 200 {
					n := g*1000 + i
					ctx, cancel := context.WithCancel(context.Background())
					if n%3 == 0 || n%7 == 0 {
						go cancel() // at any point of the call
					}
					got, err := cl.Call(ctx, n)
					cancel()
					switch {
					case err == nil && got != n:
						errs <- fmt.Errorf("call %d got %d", n, got)
						return
					case err != nil && !errors.Is(err, context.Canceled):
						errs <- fmt.Errorf("call %d: %w", n, err)
						return
					case err != nil && n%3 != 0 && n%7 != 0:
						errs <- fmt.Errorf("call %d, not cancelled, failed: %w", n, err)
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}

func TestWaitForInstanceWaitsForTheOneAskedFor(t *testing.T) {
	c := newCluster(t)
	echo := loom.EngineFunc[int, int](func(_ context.Context, n int) iter.Seq2[int, error] {
		return func(yield func(int, error) bool) { yield(n, nil) }
	})
	serveModel := func(model string) {
		ep := endpoint(t, c.runtime(), "wait/for/it")
		if err := loom.Serve(context.Background(), ep, echo, loom.WithMetadata(map[string]string{"model": model})); err != nil {
			t.Fatal(err)
		}
	}
	model := func(m string) func(discovery.Instance) bool {
		return func(i discovery.Instance) bool { return i.Metadata["model"] == m }
	}
	serveModel("a")
	cl := client[int, int](t, c.runtime(), "wait/for/it")
	waitInstances(t, cl, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := cl.WaitForInstance(ctx, model("a")); err != nil {
		t.Fatalf("waiting for an instance the client knows: %v", err)
	}

	// No instance serves b yet: the wait ends with its context, saying
	// how many instances it saw.
	short, cancelShort := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancelShort()
	err := cl.WaitForInstance(short, model("b"))
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "none of 1 instances") || !strings.Contains(err.Error(), "wait/for/it") {
		t.Fatalf("waiting for an instance nobody serves: %v; want the deadline, the endpoint and the count", err)
	}

	done := make(chan error, 1)
	go func() { done <- cl.WaitForInstance(ctx, model("b")) }()
	serveModel("b")
	if err := <-done; err != nil {
		t.Fatalf("waiting for an instance that registers: %v", err)
	}
	found := false
	for _, i := range cl.Instances() {
		found = found || model("b")(i)
	}
	if !found {
		t.Fatalf("WaitForInstance returned, but the client does not list model b: %v", cl.Instances())
	}

	_ = cl.Close()
	if err := cl.WaitForInstance(ctx, model("c")); !errors.Is(err, loom.ErrClosed) {
		t.Fatalf("waiting on a closed client: %v, want ErrClosed", err)
	}
}
