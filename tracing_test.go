package loom_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/internal/testutil"
)

// TestATwoHopCallIsOneTraceWithEachSpanUnderItsCaller: a client calls
// server A, whose handler calls server B. The four spans (client->A, A,
// A's client->B, B) form one trace, each the child of the one before, on
// every plane; the handlers' log lines carry trace_id, span_id and
// request_id.
func TestATwoHopCallIsOneTraceWithEachSpanUnderItsCaller(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		rec := tracetest.NewSpanRecorder()
		tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
		defer tp.Shutdown(context.Background())
		logs := &testutil.SyncBuffer{}
		logger := slog.New(loom.LogHandler(slog.NewJSONHandler(logs, nil)))

		b := c.runtime(loom.WithTracerProvider(tp))
		serve(t, b, "hop/b/leaf", func(ctx context.Context, s string) iter.Seq2[string, error] {
			return func(yield func(string, error) bool) { yield(s+"+b", nil) }
		})
		a := c.runtime(loom.WithTracerProvider(tp), loom.WithLogger(logger))
		toB := client[string, string](t, a, "hop/b/leaf")
		serve(t, a, "hop/a/mid", func(ctx context.Context, s string) iter.Seq2[string, error] {
			return func(yield func(string, error) bool) {
				a.Logger().InfoContext(ctx, "forwarding")
				for v, err := range toB.Generate(ctx, s+"+a") {
					if !yield(v, err) {
						return
					}
				}
			}
		})
		cl := client[string, string](t, c.runtime(loom.WithTracerProvider(tp)), "hop/a/mid")
		ctx := loom.WithRequestID(context.Background(), "req-42")
		got, err := collect(cl.Generate(ctx, "x"))
		if err != nil || len(got) != 1 || got[0] != "x+a+b" {
			t.Fatalf("got %v, %v", got, err)
		}
		spans := rec.Ended()
		find := func(name string, kind trace.SpanKind) sdktrace.ReadOnlySpan {
			for _, s := range spans {
				if s.Name() == name && s.SpanKind() == kind {
					return s
				}
			}
			var names []string
			for _, s := range spans {
				names = append(names, s.Name()+"/"+s.SpanKind().String())
			}
			t.Fatalf("no %s span named %s among %v", kind, name, names)
			return nil
		}
		callA := find("hop/a/mid", trace.SpanKindClient)
		serveA := find("hop/a/mid", trace.SpanKindServer)
		callB := find("hop/b/leaf", trace.SpanKindClient)
		serveB := find("hop/b/leaf", trace.SpanKindServer)
		chain := []sdktrace.ReadOnlySpan{callA, serveA, callB, serveB}
		for i, s := range chain {
			if s.SpanContext().TraceID() != callA.SpanContext().TraceID() {
				t.Errorf("span %s/%s is in trace %s, the call in %s", s.Name(), s.SpanKind(), s.SpanContext().TraceID(), callA.SpanContext().TraceID())
			}
			if i > 0 && s.Parent().SpanID() != chain[i-1].SpanContext().SpanID() {
				t.Errorf("span %s/%s has parent %s, want %s/%s (%s)", s.Name(), s.SpanKind(), s.Parent().SpanID(), chain[i-1].Name(), chain[i-1].SpanKind(), chain[i-1].SpanContext().SpanID())
			}
		}
		if callA.Parent().IsValid() {
			t.Errorf("the first call has a parent %s", callA.Parent().SpanID())
		}
		attrs := map[string]string{}
		for _, kv := range serveA.Attributes() {
			attrs[string(kv.Key)] = kv.Value.String()
		}
		if attrs["rpc.system.name"] != "loom" || attrs["rpc.method"] != "hop/a/mid" || attrs["loom.request_id"] != "req-42" || attrs["loom.instance_id"] == "" {
			t.Errorf("server span attributes %v", attrs)
		}
		picked := false
		for _, ev := range callA.Events() {
			picked = picked || ev.Name == "loom.pick"
		}
		if !picked {
			t.Errorf("the client span has no loom.pick event: %v", callA.Events())
		}
		var line map[string]any
		for l := range strings.Lines(logs.String()) {
			if strings.Contains(l, "forwarding") {
				if err := json.Unmarshal([]byte(l), &line); err != nil {
					t.Fatal(err)
				}
			}
		}
		if line["trace_id"] != serveA.SpanContext().TraceID().String() || line["span_id"] != serveA.SpanContext().SpanID().String() || line["request_id"] != "req-42" {
			t.Errorf("the handler's log line %v lacks the trace_id, span_id of its span or the request_id", line)
		}
	})
}

// TestNoSpansWithoutAProviderOrWhenTurnedOff: the global provider is the
// default (nothing installed), so a runtime makes no spans; with
// tracing.enabled false, a given provider is not used either.
func TestNoSpansWithoutAProviderOrWhenTurnedOff(t *testing.T) {
	c := newCluster(t)
	if rt := c.runtime(); rt.Tracer() != nil {
		t.Fatal("a runtime traces with no TracerProvider installed")
	}
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer tp.Shutdown(context.Background())
	c.cfg.Tracing.Enabled = false
	rt := c.runtime(loom.WithTracerProvider(tp))
	serve(t, rt, "off/a/b", func(ctx context.Context, s string) iter.Seq2[string, error] {
		return func(yield func(string, error) bool) { yield(s, nil) }
	})
	if _, err := collect(client[string, string](t, rt, "off/a/b").Generate(context.Background(), "x")); err != nil {
		t.Fatal(err)
	}
	if n := len(rec.Ended()); n != 0 || rt.Tracer() != nil {
		t.Fatalf("%d spans with tracing.enabled false", n)
	}
}

func TestTraceParentRoundTripsAndRejectsMalformedValues(t *testing.T) {
	tp := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	sc, err := loom.ParseTraceParent(tp)
	if err != nil || !sc.IsSampled() || !sc.IsRemote() {
		t.Fatalf("%v %v", sc, err)
	}
	if got := loom.TraceParent(trace.ContextWithSpanContext(context.Background(), sc)); got != tp {
		t.Fatalf("round trip %q, want %q", got, tp)
	}
	for _, bad := range []string{"", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
		"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01"} {
		if _, err := loom.ParseTraceParent(bad); err == nil {
			t.Errorf("ParseTraceParent(%q) accepted it", bad)
		}
	}
}

func FuzzParseTraceParent(f *testing.F) {
	f.Add("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	f.Add("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-x")
	f.Fuzz(func(t *testing.T, s string) {
		sc, err := loom.ParseTraceParent(s)
		if err != nil {
			return
		}
		if !sc.IsValid() {
			t.Fatalf("accepted %q as an invalid span context", s)
		}
		// Version 00 values round-trip exactly (hex case aside).
		if strings.HasPrefix(s, "00-") && loom.TraceParent(trace.ContextWithSpanContext(context.Background(), sc)) != strings.ToLower(s) && sc.TraceFlags()&^trace.FlagsSampled == 0 {
			if (s[53:55] == "00" || s[53:55] == "01") && strings.ToLower(s) == s {
				t.Fatalf("%q did not round-trip", s)
			}
		}
	})
}

// TestARetriedCallRecordsEachPickAndTheRetryOnItsSpan: the first instance
// refuses before running the handler (overloaded), the client moves to
// the second; the call's span has a pick event per attempt, a retry event
// naming the refusing instance, and the instance that answered.
func TestARetriedCallRecordsEachPickAndTheRetryOnItsSpan(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		rec := tracetest.NewSpanRecorder()
		tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
		defer tp.Shutdown(context.Background())
		overloaded := func(next loom.Engine[any, any]) loom.Engine[any, any] {
			return loom.EngineFunc[any, any](func(ctx context.Context, req any) iter.Seq2[any, error] {
				return loom.Fail[any](fmt.Errorf("%w: busy", loom.ErrOverloaded))
			})
		}
		busy := c.runtime(loom.WithTracerProvider(tp), loom.WithServerInterceptors(overloaded))
		free := c.runtime(loom.WithTracerProvider(tp))
		for _, rt := range []*loom.Runtime{busy, free} {
			serve(t, rt, "retry/a/b", echoID(rt))
		}
		busyFirst := loom.PickerFunc(func(ctx context.Context, cands []*loom.Candidate) (*loom.Candidate, error) {
			for _, cand := range cands {
				if cand.ID == busy.ID() {
					return cand, nil
				}
			}
			return cands[0], nil
		})
		cl := client[int, uint64](t, c.runtime(loom.WithTracerProvider(tp)), "retry/a/b", loom.WithPicker(busyFirst))
		waitInstances(t, cl, 2)
		got, err := collect(cl.Generate(context.Background(), 1))
		if err != nil || len(got) != 1 || got[0] != free.ID() {
			t.Fatalf("got %v, %v; want the free instance's id %x", got, err, free.ID())
		}
		var call sdktrace.ReadOnlySpan
		for _, s := range rec.Ended() {
			if s.SpanKind() == trace.SpanKindClient {
				call = s
			}
		}
		if call == nil {
			t.Fatal("no client span")
		}
		var evs []string
		for _, ev := range call.Events() {
			a := map[string]string{}
			for _, kv := range ev.Attributes {
				a[string(kv.Key)] = kv.Value.String()
			}
			evs = append(evs, ev.Name+" "+a["loom.instance_id"]+" "+a["loom.attempt"])
		}
		want := []string{
			fmt.Sprintf("loom.pick %x 1", busy.ID()),
			fmt.Sprintf("loom.retry %x ", busy.ID()),
			fmt.Sprintf("loom.pick %x 2", free.ID()),
		}
		if strings.Join(evs, "|") != strings.Join(want, "|") {
			t.Fatalf("client span events %q, want %q", evs, want)
		}
		for _, kv := range call.Attributes() {
			if kv.Key == "loom.instance_id" && kv.Value.String() != fmt.Sprintf("%x", free.ID()) {
				t.Fatalf("the call's instance is %s, want the one that answered, %x", kv.Value.String(), free.ID())
			}
		}
	})
}

// spanNamed returns the ended span of the given name and kind.
func spanNamed(t *testing.T, rec *tracetest.SpanRecorder, name string, kind trace.SpanKind) sdktrace.ReadOnlySpan {
	t.Helper()
	var names []string
	for _, s := range rec.Ended() {
		if s.Name() == name && s.SpanKind() == kind {
			return s
		}
		names = append(names, s.Name()+"/"+s.SpanKind().String())
	}
	t.Fatalf("no ended %s span named %s among %v", kind, name, names)
	return nil
}

// spanAttrs returns a span's attributes as strings by key.
func spanAttrs(s sdktrace.ReadOnlySpan) map[string]string {
	a := map[string]string{}
	for _, kv := range s.Attributes() {
		a[string(kv.Key)] = kv.Value.String()
	}
	return a
}

// TestAPanickingServerInterceptorFailsItsRequestAndBothSpans: the serving
// core recovers a panic in a server interceptor (the request fails with
// ErrHandlerPanic, counted as a panic, and the endpoint goes on serving),
// and the request's server and client spans end with the error status,
// on every plane.
func TestAPanickingServerInterceptorFailsItsRequestAndBothSpans(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		rec := tracetest.NewSpanRecorder()
		tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
		defer tp.Shutdown(context.Background())
		explode := func(next loom.Engine[any, any]) loom.Engine[any, any] {
			return loom.EngineFunc[any, any](func(ctx context.Context, req any) iter.Seq2[any, error] {
				if req.(string) == "boom" {
					panic("interceptor exploded")
				}
				return next.Generate(ctx, req)
			})
		}
		srv := c.runtime(loom.WithTracerProvider(tp), loom.WithServerInterceptors(explode))
		serve(t, srv, "ic/explode/echo", func(ctx context.Context, s string) iter.Seq2[string, error] {
			return func(yield func(string, error) bool) { yield(s, nil) }
		})
		cl := client[string, string](t, c.runtime(loom.WithTracerProvider(tp)), "ic/explode/echo")
		if _, err := collect(cl.Generate(context.Background(), "boom")); !errors.Is(err, loom.ErrHandlerPanic) {
			t.Fatalf("the call whose interceptor panicked ended with %v, want ErrHandlerPanic", err)
		}
		for _, kind := range []trace.SpanKind{trace.SpanKindServer, trace.SpanKindClient} {
			s := spanNamed(t, rec, "ic/explode/echo", kind)
			if s.Status().Code != codes.Error || spanAttrs(s)["error.type"] == "" {
				t.Errorf("the %s span of the panicked request has status %v and attributes %v; want the error status and error.type", kind, s.Status(), spanAttrs(s))
			}
		}
		if n := metricValue(t, srv, "loom_requests_total", "code", "panic"); n != 1 {
			t.Errorf("loom_requests_total{code=panic} = %v, want 1", n)
		}
		if got, err := collect(cl.Generate(context.Background(), "fine")); err != nil || len(got) != 1 {
			t.Fatalf("the endpoint after the panic: %v, %v", got, err)
		}
	})
}

// TestAPanickingClientInterceptorFailsTheCallsSpan: a client interceptor's
// panic reaches the caller (nothing on the client recovers it), and the
// call's span records it as the call's error; a panic in the caller's own
// loop body is not the call's error.
func TestAPanickingClientInterceptorFailsTheCallsSpan(t *testing.T) {
	c := newCluster(t)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer tp.Shutdown(context.Background())
	srv := c.runtime(loom.WithTracerProvider(tp))
	serve(t, srv, "ic/clientpanic/echo", func(ctx context.Context, s string) iter.Seq2[string, error] {
		return func(yield func(string, error) bool) { yield(s, nil) }
	})
	explode := func(next loom.Engine[any, any]) loom.Engine[any, any] {
		return loom.EngineFunc[any, any](func(ctx context.Context, req any) iter.Seq2[any, error] {
			if req.(string) == "boom" {
				panic("client interceptor exploded")
			}
			return next.Generate(ctx, req)
		})
	}
	cl := client[string, string](t, c.runtime(loom.WithTracerProvider(tp)), "ic/clientpanic/echo", loom.WithCallInterceptors(explode))
	panicked := func(req string, body func()) (v any) {
		defer func() { v = recover() }()
		for range cl.Generate(context.Background(), req) {
			body()
		}
		return nil
	}
	if v := panicked("boom", func() {}); v != "client interceptor exploded" {
		t.Fatalf("the caller recovered %v, want the interceptor's panic", v)
	}
	s := spanNamed(t, rec, "ic/clientpanic/echo", trace.SpanKindClient)
	if s.Status().Code != codes.Error || !strings.Contains(s.Status().Description, "client interceptor exploded") {
		t.Fatalf("the call's span has status %v, want the error status naming the panic", s.Status())
	}
	rec.Reset()
	if v := panicked("fine", func() { panic("caller's body") }); v != "caller's body" {
		t.Fatalf("the caller recovered %v, want its own panic", v)
	}
	s = spanNamed(t, rec, "ic/clientpanic/echo", trace.SpanKindClient)
	if s.Status().Code == codes.Error || spanAttrs(s)["loom.items"] != "1" {
		t.Fatalf("a call whose caller's loop body panicked has status %v and attributes %v; want no error and the item counted", s.Status(), spanAttrs(s))
	}
}

// TestAFailedCallSetsTheErrorOnBothSpans: a handler's error sets the
// error status and error.type on the server span and on the caller's,
// which both count the items sent before it, on every plane.
func TestAFailedCallSetsTheErrorOnBothSpans(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		rec := tracetest.NewSpanRecorder()
		tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
		defer tp.Shutdown(context.Background())
		srv := c.runtime(loom.WithTracerProvider(tp))
		serve(t, srv, "tr/fail/gen", func(ctx context.Context, s string) iter.Seq2[string, error] {
			return func(yield func(string, error) bool) {
				if yield("first", nil) {
					yield("", errors.New("out of tokens"))
				}
			}
		})
		cl := client[string, string](t, c.runtime(loom.WithTracerProvider(tp)), "tr/fail/gen")
		if got, err := collect(cl.Generate(context.Background(), "x")); err == nil || len(got) != 1 {
			t.Fatalf("got %v, %v; want one item, then the handler's error", got, err)
		}
		for _, kind := range []trace.SpanKind{trace.SpanKindServer, trace.SpanKindClient} {
			s := spanNamed(t, rec, "tr/fail/gen", kind)
			a := spanAttrs(s)
			if s.Status().Code != codes.Error || !strings.Contains(s.Status().Description, "out of tokens") || a["error.type"] == "" {
				t.Errorf("the %s span has status %v, error.type %q; want the error status naming the error, and its type", kind, s.Status(), a["error.type"])
			}
			if a["loom.items"] != "1" || a["loom.instance_id"] != fmt.Sprintf("%x", srv.ID()) {
				t.Errorf("the %s span has loom.items %q, loom.instance_id %q; want 1 and %x", kind, a["loom.items"], a["loom.instance_id"], srv.ID())
			}
			recorded := false
			for _, ev := range s.Events() {
				recorded = recorded || ev.Name == "exception"
			}
			if !recorded {
				t.Errorf("the %s span did not record the error as an event", kind)
			}
		}
	})
}

// TestInterceptorsRunInsideTheBuiltInTracing: the built-in tracing is
// outside the runtime's and the endpoint's interceptors on both sides (the
// documented order), so each interceptor finds its request's span in its
// context, on every plane.
func TestInterceptorsRunInsideTheBuiltInTracing(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		rec := tracetest.NewSpanRecorder()
		tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
		defer tp.Shutdown(context.Background())
		var mu sync.Mutex
		seen := map[string]trace.SpanID{}
		spy := func(name string) loom.Interceptor {
			return func(next loom.Engine[any, any]) loom.Engine[any, any] {
				return loom.EngineFunc[any, any](func(ctx context.Context, req any) iter.Seq2[any, error] {
					mu.Lock()
					seen[name] = trace.SpanContextFromContext(ctx).SpanID()
					mu.Unlock()
					return next.Generate(ctx, req)
				})
			}
		}
		srv := c.runtime(loom.WithTracerProvider(tp), loom.WithServerInterceptors(spy("server runtime's")))
		ep := endpoint(t, srv, "tr/inside/echo")
		err := loom.Serve(context.Background(), ep, loom.EngineFunc[string, string](func(ctx context.Context, s string) iter.Seq2[string, error] {
			return func(yield func(string, error) bool) { yield(s, nil) }
		}), loom.WithServeInterceptors(spy("endpoint's")))
		if err != nil {
			t.Fatal(err)
		}
		caller := c.runtime(loom.WithTracerProvider(tp), loom.WithClientInterceptors(spy("client runtime's")))
		cl := client[string, string](t, caller, "tr/inside/echo", loom.WithCallInterceptors(spy("client's")))
		if _, err := collect(cl.Generate(context.Background(), "x")); err != nil {
			t.Fatal(err)
		}
		server := spanNamed(t, rec, "tr/inside/echo", trace.SpanKindServer).SpanContext().SpanID()
		call := spanNamed(t, rec, "tr/inside/echo", trace.SpanKindClient).SpanContext().SpanID()
		mu.Lock()
		defer mu.Unlock()
		for name, want := range map[string]trace.SpanID{"server runtime's": server, "endpoint's": server, "client runtime's": call, "client's": call} {
			if seen[name] != want {
				t.Errorf("the %s interceptor ran under span %s, want its request's %s", name, seen[name], want)
			}
		}
	})
}
