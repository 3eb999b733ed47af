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

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/loomrt/loom"
)

// trail records what interceptors saw, per side.
type trail struct {
	mu     sync.Mutex
	server []string
	client []string
}

func (tr *trail) add(side loom.Side, s string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if side == loom.ServerSide {
		tr.server = append(tr.server, s)
	} else {
		tr.client = append(tr.client, s)
	}
}

// marker is an interceptor that records its entry, the items it saw and
// its exit, and adds its name to the "trail" header on the client side.
func (tr *trail) marker(name string) loom.Interceptor {
	return func(next loom.Engine[any, any]) loom.Engine[any, any] {
		return loom.EngineFunc[any, any](func(ctx context.Context, req any) iter.Seq2[any, error] {
			return func(yield func(any, error) bool) {
				call := loom.CallFromContext(ctx)
				if call.Side == loom.ClientSide {
					call.Header["trail"] = strings.TrimPrefix(call.Header["trail"]+","+name, ",")
				} else if name == "C" {
					tr.add(call.Side, "header="+call.Header["trail"])
				}
				tr.add(call.Side, name+">")
				items := 0
				for item, err := range next.Generate(ctx, req) {
					if err == nil {
						items++
					}
					if !yield(item, err) {
						break
					}
				}
				tr.add(call.Side, fmt.Sprintf("<%s(%d)", name, items))
			}
		})
	}
}

func TestInterceptorsRunInTheDocumentedOrderAndCarryHeaders(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		tr := &trail{}
		srv := c.runtime(loom.WithServerInterceptors(tr.marker("A"), tr.marker("B")))
		ep := endpoint(t, srv, "ic/order/echo")
		err := loom.Serve(context.Background(), ep, loom.EngineFunc[int, int](func(ctx context.Context, n int) iter.Seq2[int, error] {
			return func(yield func(int, error) bool) {
				tr.add(loom.ServerSide, "handler")
				for i := range n {
					if !yield(i, nil) {
						return
					}
				}
			}
		}), loom.WithServeInterceptors(tr.marker("C")))
		if err != nil {
			t.Fatal(err)
		}
		cl := client[int, int](t, c.runtime(loom.WithClientInterceptors(tr.marker("X"))), "ic/order/echo",
			loom.WithCallInterceptors(tr.marker("Y")))
		got, err := collect(cl.Generate(context.Background(), 2))
		if err != nil || len(got) != 2 {
			t.Fatalf("got %v, %v", got, err)
		}
		tr.mu.Lock()
		defer tr.mu.Unlock()
		if want := "A>,B>,header=X,Y,C>,handler,<C(2),<B(2),<A(2)"; strings.Join(tr.server, ",") != want {
			t.Errorf("server side ran %q, want %q", strings.Join(tr.server, ","), want)
		}
		if want := "X>,Y>,<Y(2),<X(2)"; strings.Join(tr.client, ",") != want {
			t.Errorf("client side ran %q, want %q", strings.Join(tr.client, ","), want)
		}
	})
}

// authInterceptor refuses requests without the right bearer token.
func authInterceptor(token string) loom.Interceptor {
	return func(next loom.Engine[any, any]) loom.Engine[any, any] {
		return loom.EngineFunc[any, any](func(ctx context.Context, req any) iter.Seq2[any, error] {
			if got := loom.CallFromContext(ctx).Header["authorization"]; got != "Bearer "+token {
				return loom.Fail[any](loom.Refuse("unauthenticated", "missing or wrong bearer token in the authorization header"))
			}
			return next.Generate(ctx, req)
		})
	}
}

func TestARefusalReachesTheRemoteCallerAsATypedError(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		srv := c.runtime()
		ran := 0
		ep := endpoint(t, srv, "ic/auth/secret")
		err := loom.Serve(context.Background(), ep, loom.EngineFunc[string, string](func(ctx context.Context, s string) iter.Seq2[string, error] {
			ran++
			return func(yield func(string, error) bool) { yield("secret for "+s, nil) }
		}), loom.WithServeInterceptors(authInterceptor("s3cret")))
		if err != nil {
			t.Fatal(err)
		}
		cl := client[string, string](t, c.runtime(), "ic/auth/secret")
		_, err = collect(cl.Generate(context.Background(), "eve"))
		var re *loom.RefusedError
		if !errors.As(err, &re) || !errors.Is(err, loom.ErrRefused) {
			t.Fatalf("call without a token ended with %v (%T), want a *loom.RefusedError", err, err)
		}
		if re.Reason != "unauthenticated" || re.Path != "ic/auth/secret" || re.InstanceID != srv.ID() || !strings.Contains(re.Message, "bearer token") {
			t.Fatalf("refusal %+v", re)
		}
		if ran != 0 {
			t.Fatal("the handler ran for a refused request")
		}
		ctx := loom.WithHeader(context.Background(), "authorization", "Bearer s3cret")
		got, err := collect(cl.Generate(ctx, "bob"))
		if err != nil || len(got) != 1 || got[0] != "secret for bob" {
			t.Fatalf("call with the token: %v, %v", got, err)
		}
	})
}

func TestAHandlerPanicIsAnErrorTheInterceptorsSee(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		var seen error
		var mu sync.Mutex
		watch := func(next loom.Engine[any, any]) loom.Engine[any, any] {
			return loom.EngineFunc[any, any](func(ctx context.Context, req any) iter.Seq2[any, error] {
				return func(yield func(any, error) bool) {
					for item, err := range next.Generate(ctx, req) {
						if err != nil {
							mu.Lock()
							seen = err
							mu.Unlock()
						}
						if !yield(item, err) {
							return
						}
					}
				}
			})
		}
		srv := c.runtime(loom.WithServerInterceptors(watch))
		serve(t, srv, "ic/panic/boom", func(ctx context.Context, n int) iter.Seq2[int, error] {
			panic("boom")
		})
		cl := client[int, int](t, c.runtime(), "ic/panic/boom")
		_, err := collect(cl.Generate(context.Background(), 1))
		if !errors.Is(err, loom.ErrHandlerPanic) {
			t.Fatalf("caller got %v, want ErrHandlerPanic", err)
		}
		mu.Lock()
		defer mu.Unlock()
		if !errors.Is(seen, loom.ErrHandlerPanic) {
			t.Fatalf("the interceptor saw %v, want ErrHandlerPanic", seen)
		}
	})
}

// TestARefusalIsNotRetriedOnAnotherInstance: every instance refuses, but
// the caller hears the first refusal: a refusal is an answer, not a
// failure of the instance.
func TestARefusalIsNotRetriedOnAnotherInstance(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		var refusals atomic.Int64
		refuse := func(next loom.Engine[any, any]) loom.Engine[any, any] {
			return loom.EngineFunc[any, any](func(ctx context.Context, req any) iter.Seq2[any, error] {
				refusals.Add(1)
				return loom.Fail[any](loom.Refuse("quota", "over quota"))
			})
		}
		for range 2 {
			rt := c.runtime(loom.WithServerInterceptors(refuse))
			serve(t, rt, "ic/quota/gen", echoID(rt))
		}
		caller := c.runtime()
		cl := client[int, uint64](t, caller, "ic/quota/gen")
		waitInstances(t, cl, 2)
		if _, err := collect(cl.Generate(context.Background(), 1)); !errors.Is(err, loom.ErrRefused) {
			t.Fatalf("the call ended with %v, want the refusal", err)
		}
		if n, r := refusals.Load(), metricValue(t, caller, "loom_client_retries_total"); n != 1 || r != 0 {
			t.Fatalf("%d instances refused the call and the client retried it %v times; want 1 and 0", n, r)
		}
	})
}

// TestMetadataThePlanesCannotCarryFailsTheCallAtOnceNamingIt: a request
// id, header key or value outside the request planes' limits is the
// caller's mistake: the call fails at once with an error naming it, on
// every plane and the local fast path alike, without being retried on
// another instance or waiting for one.
func TestMetadataThePlanesCannotCarryFailsTheCallAtOnceNamingIt(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		c.cfg.Client.WaitTimeout = 10 * time.Second
		srv := c.runtime()
		serve(t, srv, "ic/meta/gen", echoID(srv))
		caller := c.runtime()
		cl := client[int, uint64](t, caller, "ic/meta/gen")
		waitInstances(t, cl, 1)
		many := context.Background()
		for i := range 65 {
			many = loom.WithHeader(many, fmt.Sprintf("k%d", i), "v")
		}
		for _, tc := range []struct {
			name, want string
			ctx        context.Context
		}{
			{"a request id of 256 bytes", "request id is 256 bytes", loom.WithRequestID(context.Background(), strings.Repeat("r", 256))},
			{"an empty header key", `header key "" is 0 bytes`, loom.WithHeader(context.Background(), "", "v")},
			{"a header key of 256 bytes", "is 256 bytes", loom.WithHeader(context.Background(), strings.Repeat("k", 256), "v")},
			{"a header value of 65536 bytes", "value of 65536 bytes", loom.WithHeader(context.Background(), "k", strings.Repeat("v", 65536))},
			{"65 headers", "65 headers", many},
		} {
			t.Run(tc.name+" fails the call", func(t *testing.T) {
				start := time.Now()
				_, err := collect(cl.Generate(tc.ctx, 1))
				if err == nil || !strings.Contains(err.Error(), tc.want) || errors.Is(err, loom.ErrUnreachable) {
					t.Fatalf("the call ended with %v; want an error saying %q, not that the instance is unreachable", err, tc.want)
				}
				if took := time.Since(start); took > 5*time.Second {
					t.Fatalf("the call failed after %s: it waited for another instance", took)
				}
				if n := metricValue(t, caller, "loom_client_retries_total"); n != 0 {
					t.Fatalf("the client retried %v times", n)
				}
			})
		}
		ctx := loom.WithHeader(loom.WithRequestID(context.Background(), strings.Repeat("r", 255)), strings.Repeat("k", 255), strings.Repeat("v", 65535))
		if got, err := collect(cl.Generate(ctx, 1)); err != nil || len(got) != 1 {
			t.Fatalf("a call with metadata at the limits: %v, %v", got, err)
		}
	})
}

// TestANilInterceptorIsAClearError: a nil interceptor is refused where it
// is given, naming the option, instead of failing every request with a
// nil dereference; one that returns a nil Engine fails the request with
// an error saying so (on the client too, where nothing would recover the
// panic).
func TestANilInterceptorIsAClearError(t *testing.T) {
	c := newCluster(t)
	for _, opt := range []struct {
		name string
		o    loom.Option
	}{{"WithServerInterceptors", loom.WithServerInterceptors(nil)}, {"WithClientInterceptors", loom.WithClientInterceptors(nil)}} {
		_, err := loom.NewRuntime(context.Background(), loom.WithConfig(c.cfg), loom.WithDiscovery(c.store.Connect()), loom.WithLogger(quiet), opt.o)
		if err == nil || !strings.Contains(err.Error(), opt.name+": interceptor 1 of 1 is nil") {
			t.Errorf("NewRuntime with %s(nil): %v", opt.name, err)
		}
	}
	rt := c.runtime()
	err := loom.Serve(context.Background(), endpoint(t, rt, "ic/nil/serve"), loom.EngineFunc[int, uint64](echoID(rt)), loom.WithServeInterceptors(nil))
	if err == nil || !strings.Contains(err.Error(), "WithServeInterceptors: interceptor 1 of 1 is nil") {
		t.Errorf("Serve with WithServeInterceptors(nil): %v", err)
	}
	if _, err := loom.NewClient[int, uint64](context.Background(), endpoint(t, rt, "ic/nil/call"), loom.WithCallInterceptors(nil)); err == nil ||
		!strings.Contains(err.Error(), "WithCallInterceptors: interceptor 1 of 1 is nil") {
		t.Errorf("NewClient with WithCallInterceptors(nil): %v", err)
	}
	nothing := func(loom.Engine[any, any]) loom.Engine[any, any] { return nil }
	pass := func(next loom.Engine[any, any]) loom.Engine[any, any] { return next }
	srv := c.runtime(loom.WithServerInterceptors(pass, nothing))
	serve(t, srv, "ic/nil/engine", echoID(srv))
	cl := client[int, uint64](t, c.runtime(), "ic/nil/engine")
	if _, err := collect(cl.Generate(context.Background(), 1)); err == nil || !strings.Contains(err.Error(), "interceptor 2 of 2 returned a nil Engine") {
		t.Errorf("a call through a server interceptor returning nil: %v", err)
	}
	cl = client[int, uint64](t, c.runtime(), "ic/nil/engine", loom.WithCallInterceptors(nothing))
	if _, err := collect(cl.Generate(context.Background(), 1)); err == nil || !strings.Contains(err.Error(), "ic/nil/engine: interceptor 1 of 1 returned a nil Engine") {
		t.Errorf("a call through a client interceptor returning nil: %v", err)
	}
}

// TestAUnaryCallTakesTheInterceptorsAndTheTracing: Client.Call is the same
// call as Generate for interceptors and tracing: client and server
// interceptors run, headers travel, a refusal reaches the caller typed,
// and both spans are made, on every plane.
func TestAUnaryCallTakesTheInterceptorsAndTheTracing(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		rec := tracetest.NewSpanRecorder()
		tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
		defer tp.Shutdown(context.Background())
		tr := &trail{}
		srv := c.runtime(loom.WithTracerProvider(tp), loom.WithServerInterceptors(tr.marker("A"), authInterceptor("s3cret")))
		ep := endpoint(t, srv, "ic/unary/echo")
		err := loom.Serve(context.Background(), ep, loom.EngineFunc[int, int](func(ctx context.Context, n int) iter.Seq2[int, error] {
			return func(yield func(int, error) bool) { yield(n+1, nil) }
		}), loom.WithServeInterceptors(tr.marker("C")))
		if err != nil {
			t.Fatal(err)
		}
		cl := client[int, int](t, c.runtime(loom.WithTracerProvider(tp)), "ic/unary/echo", loom.WithCallInterceptors(tr.marker("Y")))
		var re *loom.RefusedError
		if _, err := cl.Call(context.Background(), 1); !errors.As(err, &re) || re.Reason != "unauthenticated" {
			t.Fatalf("a unary call without the token: %v", err)
		}
		got, err := cl.Call(loom.WithHeader(context.Background(), "authorization", "Bearer s3cret"), 1)
		if err != nil || got != 2 {
			t.Fatalf("a unary call with the token: %v, %v", got, err)
		}
		tr.mu.Lock()
		server, client := strings.Join(tr.server, ","), strings.Join(tr.client, ",")
		tr.mu.Unlock()
		if want := "A>,<A(0),A>,header=Y,C>,<C(1),<A(1)"; server != want {
			t.Errorf("server side ran %q, want %q", server, want)
		}
		if want := "Y>,<Y(0),Y>,<Y(1)"; client != want {
			t.Errorf("client side ran %q, want %q", client, want)
		}
		var kinds []string
		for _, s := range rec.Ended() {
			kinds = append(kinds, s.SpanKind().String())
		}
		slices.Sort(kinds)
		if want := []string{"client", "client", "server", "server"}; !slices.Equal(kinds, want) {
			t.Errorf("spans of kinds %v, want %v", kinds, want)
		}
	})
}
