package loom_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/internal/testutil"
)

// health returns /health's status code and body.
func health(t *testing.T, rt *loom.Runtime) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + rt.StatusAddr() + "/health")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitHealth polls /health until it answers code, and returns the body
// and how long it took.
func waitHealth(t *testing.T, rt *loom.Runtime, code int, limit time.Duration) (string, time.Duration) {
	t.Helper()
	start := time.Now()
	for {
		got, body := health(t, rt)
		if got == code {
			return body, time.Since(start)
		}
		if time.Since(start) > limit {
			t.Fatalf("/health still answers %d %q after %s, want %d", got, body, limit, code)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func healthChecks(t *testing.T, rt *loom.Runtime, result string) float64 {
	t.Helper()
	if result == "" {
		return metricValue(t, rt, "loom_health_check_total")
	}
	return metricValue(t, rt, "loom_health_check_total", "result", result)
}

// TestAWedgedHandlerTurnsHealthNotReadyAndBackAfterItRecovers: an endpoint
// with a health request whose handler stops answering makes /health say
// not ready, naming it, within the idle time plus the timeout; once the
// handler answers again, the next check makes it ready.
func TestAWedgedHandlerTurnsHealthNotReadyAndBackAfterItRecovers(t *testing.T) {
	c := canaryCluster(t, 50*time.Millisecond, 200*time.Millisecond)
	rt := c.runtime()
	var wedged atomic.Bool
	ep := endpoint(t, rt, "hc/worker/generate")
	err := loom.Serve(context.Background(), ep, loom.EngineFunc[string, string](func(ctx context.Context, s string) iter.Seq2[string, error] {
		return func(yield func(string, error) bool) {
			if wedged.Load() {
				<-ctx.Done() // stuck until the caller gives up
				return
			}
			yield("ok", nil)
		}
	}), loom.WithHealthCheck("ping"))
	if err != nil {
		t.Fatal(err)
	}
	if code, body := health(t, rt); code != http.StatusOK {
		t.Fatalf("/health %d %q before anything went wrong", code, body)
	}
	// A healthy idle endpoint is checked, and stays ready.
	for healthChecks(t, rt, "ok") == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	wedged.Store(true)
	body, took := waitHealth(t, rt, http.StatusServiceUnavailable, 10*time.Second)
	if !strings.Contains(body, "hc/worker/generate") || !strings.Contains(body, "no answer within 200ms") {
		t.Fatalf("/health says %q; want the endpoint and the timeout named", body)
	}
	t.Logf("not ready %s after the handler wedged (idle 50ms + timeout 200ms)", took)
	if healthChecks(t, rt, "timeout") == 0 {
		t.Fatal("loom_health_check_total{result=timeout} is 0")
	}
	if code, _ := httpGet(t, "http://"+rt.StatusAddr()+"/live"); code != http.StatusOK {
		t.Fatalf("/live answers %d while only readiness failed", code)
	}
	wedged.Store(false)
	_, took = waitHealth(t, rt, http.StatusOK, 10*time.Second)
	t.Logf("ready again %s after the handler recovered", took)
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestRealTrafficSuppressesCanaries: while requests keep coming more often
// than the idle time, no canary is sent. The idle time is long enough that a
// loaded machine's scheduling pauses between two requests stay below it;
// canaries sent before the first request (while the client was starting) are
// not counted.
func TestRealTrafficSuppressesCanaries(t *testing.T) {
	c := newCluster(t)
	c.cfg.Health.CanaryIdle = 1500 * time.Millisecond
	rt := c.runtime()
	ep := endpoint(t, rt, "hc/busy/generate")
	err := loom.Serve(context.Background(), ep, echoEngine, loom.WithHealthCheck("ping"))
	if err != nil {
		t.Fatal(err)
	}
	cl := client[string, string](t, rt, "hc/busy/generate")
	if _, err := collect(cl.Generate(context.Background(), "real")); err != nil {
		t.Fatal(err)
	}
	before := healthChecks(t, rt, "")
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if _, err := collect(cl.Generate(context.Background(), "real")); err != nil {
			t.Fatal(err)
		}
	}
	if n := healthChecks(t, rt, "") - before; n != 0 {
		t.Fatalf("%v canaries were sent to a busy endpoint", n)
	}
}

func TestAHealthRequestOfTheWrongTypeIsRefused(t *testing.T) {
	rt := newCluster(t).runtime()
	err := loom.Serve(context.Background(), endpoint(t, rt, "hc/bad/type"), loom.EngineFunc[string, string](func(ctx context.Context, s string) iter.Seq2[string, error] {
		return func(yield func(string, error) bool) {}
	}), loom.WithHealthCheck(42))
	if err == nil || !strings.Contains(err.Error(), "health request is a int") {
		t.Fatalf("Serve with an int health request for a string endpoint: %v", err)
	}
}

// TestRequestsThatTimeOutOnAWedgedHandlerNeitherHideNorClearItsFailure: a
// handler that stops answering while callers keep calling it with
// deadlines is what a wedged endpoint looks like in production. Requests
// killed before any answer neither postpone the canary (which would hide
// the wedge from /health for as long as traffic comes) nor make a failing
// endpoint ready again.
func TestRequestsThatTimeOutOnAWedgedHandlerNeitherHideNorClearItsFailure(t *testing.T) {
	c := canaryCluster(t, 300*time.Millisecond, 100*time.Millisecond)
	rt := c.runtime()
	var wedged atomic.Bool
	ep := endpoint(t, rt, "hc/traffic/generate")
	err := loom.Serve(context.Background(), ep, loom.EngineFunc[string, string](func(ctx context.Context, s string) iter.Seq2[string, error] {
		return func(yield func(string, error) bool) {
			if wedged.Load() {
				<-ctx.Done()
				return
			}
			yield("ok", nil)
		}
	}), loom.WithHealthCheck("ping"))
	if err != nil {
		t.Fatal(err)
	}
	cl := client[string, string](t, rt, "hc/traffic/generate")
	waitFor(t, 10*time.Second, "a canary to succeed", func() bool { return healthChecks(t, rt, "ok") > 0 })
	wedged.Store(true)
	call := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
		defer cancel()
		if _, err := collect(cl.Generate(ctx, "real")); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("a call to the wedged handler ended with %v, want context.DeadlineExceeded", err)
		}
	}
	start := time.Now()
	for {
		call()
		if code, _ := health(t, rt); code == http.StatusServiceUnavailable {
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatal("/health still ready 10s after the handler wedged, under traffic that times out")
		}
	}
	t.Logf("not ready %s after the handler wedged, under traffic", time.Since(start))
	for range 10 {
		call()
		if code, body := health(t, rt); code != http.StatusServiceUnavailable {
			t.Fatalf("/health answers %d %q after a request timed out on the wedged handler", code, body)
		}
	}
}

// TestACanaryThatTimesOutDoesNotMakeItsEndpointReadyWhenItsHandlerGivesUp:
// the canary's handler returns after the check was judged a timeout,
// before any item or after one (a stream wedged midway); that end is no
// answer, so the endpoint stays not ready until a check or request
// succeeds.
func TestACanaryThatTimesOutDoesNotMakeItsEndpointReadyWhenItsHandlerGivesUp(t *testing.T) {
	for _, partial := range []bool{false, true} {
		name := "before any item"
		if partial {
			name = "after an item"
		}
		t.Run(name, func(t *testing.T) {
			c := canaryCluster(t, 100*time.Millisecond, time.Second)
			rt := c.runtime()
			started, release := make(chan struct{}, 1), make(chan struct{})
			defer close(release)
			ep := endpoint(t, rt, "hc/late/generate")
			err := loom.Serve(context.Background(), ep, loom.EngineFunc[string, string](func(ctx context.Context, s string) iter.Seq2[string, error] {
				return func(yield func(string, error) bool) {
					started <- struct{}{}
					if partial && !yield("partial", nil) {
						return
					}
					<-ctx.Done()
					<-release
				}
			}), loom.WithHealthCheck("ping"))
			if err != nil {
				t.Fatal(err)
			}
			within(t, 10*time.Second, started, "the first canary")
			waitHealth(t, rt, http.StatusServiceUnavailable, 10*time.Second)
			// The first canary's handler gives up now. The loop sends the
			// next canary only once the first one's request has ended, so
			// when the next one starts, the end of the first was recorded;
			// the next one is not judged for another second.
			release <- struct{}{}
			within(t, 10*time.Second, started, "the second canary")
			if code, body := health(t, rt); code != http.StatusServiceUnavailable {
				t.Fatalf("/health answers %d %q once the timed-out canary's handler returned", code, body)
			}
		})
	}
}

// TestACanaryIsMarkedTracedAndMeasured: interceptors see a canary as a
// Call with Canary set, its server span carries loom.health_check, and a
// canary that fails with an error turns /health not ready naming the
// error, moves loom_health_check_total{result="error"} and sets
// loom_health_check_ready to 0, until a later one succeeds.
func TestACanaryIsMarkedTracedAndMeasured(t *testing.T) {
	c := canaryCluster(t, 50*time.Millisecond, 5*time.Second)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer tp.Shutdown(context.Background())
	var canaries, others atomic.Int64
	watch := func(next loom.Engine[any, any]) loom.Engine[any, any] {
		return loom.EngineFunc[any, any](func(ctx context.Context, req any) iter.Seq2[any, error] {
			if call := loom.CallFromContext(ctx); call.Canary && req.(string) == "ping" {
				canaries.Add(1)
			} else {
				others.Add(1)
			}
			return next.Generate(ctx, req)
		})
	}
	rt := c.runtime(loom.WithTracerProvider(tp), loom.WithServerInterceptors(watch))
	var failing atomic.Bool
	ep := endpoint(t, rt, "hc/marked/generate")
	err := loom.Serve(context.Background(), ep, loom.EngineFunc[string, string](func(ctx context.Context, s string) iter.Seq2[string, error] {
		return func(yield func(string, error) bool) {
			if failing.Load() {
				yield("", errors.New("disk full"))
				return
			}
			yield("ok", nil)
		}
	}), loom.WithHealthCheck("ping"))
	if err != nil {
		t.Fatal(err)
	}
	labels := []string{"namespace", "hc", "component", "marked", "endpoint", "generate"}
	waitFor(t, 10*time.Second, "a canary to succeed", func() bool { return healthChecks(t, rt, "ok") > 0 })
	if canaries.Load() == 0 || others.Load() != 0 {
		t.Fatalf("the interceptor saw %d canaries and %d other requests, want canaries only", canaries.Load(), others.Load())
	}
	if n := metricValue(t, rt, "loom_health_check_duration_seconds", labels...); n == 0 {
		t.Error("loom_health_check_duration_seconds observed no check")
	}
	if n := metricValue(t, rt, "loom_health_check_ready", labels...); n != 1 {
		t.Errorf("loom_health_check_ready = %v while the checks succeed, want 1", n)
	}
	marked := false
	for _, s := range rec.Ended() {
		for _, kv := range s.Attributes() {
			marked = marked || s.SpanKind() == trace.SpanKindServer && kv.Key == loom.AttrCanary && kv.Value.AsBool()
		}
	}
	if !marked {
		t.Error("no server span with loom.health_check=true")
	}
	failing.Store(true)
	body, _ := waitHealth(t, rt, http.StatusServiceUnavailable, 10*time.Second)
	if !strings.Contains(body, "hc/marked/generate: health check failed") || !strings.Contains(body, "disk full") {
		t.Errorf("/health says %q; want the endpoint and the canary's error named", body)
	}
	if n := healthChecks(t, rt, "error"); n == 0 {
		t.Error(`loom_health_check_total{result="error"} is 0 after a canary failed`)
	}
	// The gauge is set just after /health's state changes: wait for it.
	waitFor(t, 10*time.Second, "loom_health_check_ready to be 0 while the check fails", func() bool {
		return metricValue(t, rt, "loom_health_check_ready", labels...) == 0
	})
	failing.Store(false)
	waitHealth(t, rt, http.StatusOK, 10*time.Second)
	waitFor(t, 10*time.Second, "loom_health_check_ready to be 1 once a check succeeded again", func() bool {
		return metricValue(t, rt, "loom_health_check_ready", labels...) == 1
	})
}

// TestShutdownDoesNotWaitForACanaryStuckInAWedgedHandler: a canary stuck in
// a handler that ignores its context is an in-flight request like any
// other: Shutdown cancels it after the grace period and returns, saying
// so, without waiting for the handler, and without the health check
// itself holding the runtime's stop.
func TestShutdownDoesNotWaitForACanaryStuckInAWedgedHandler(t *testing.T) {
	c := canaryCluster(t, 20*time.Millisecond, 50*time.Millisecond)
	rt, err := loom.NewRuntime(context.Background(), loom.WithConfig(c.cfg), loom.WithDiscovery(c.store.Connect()), loom.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	defer close(release)
	ep := endpoint(t, rt, "hc/stuck/generate")
	err = loom.Serve(context.Background(), ep, loom.EngineFunc[string, string](func(ctx context.Context, s string) iter.Seq2[string, error] {
		return func(yield func(string, error) bool) { <-release }
	}), loom.WithHealthCheck("ping"))
	if err != nil {
		t.Fatal(err)
	}
	waitHealth(t, rt, http.StatusServiceUnavailable, 10*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = rt.Shutdown(ctx)
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "1 requests still running") {
		t.Errorf("Shutdown = %v; want it to name the request it cancelled", err)
	}
	if strings.Contains(fmt.Sprint(err), "tasks still running") {
		t.Errorf("Shutdown = %v; the health check held the runtime's stop", err)
	}
	if took > 3*time.Second {
		t.Errorf("Shutdown took %s with a grace period of 100ms: it waited for the stuck canary", took)
	}
}

// TestAnEndpointShutDownOnItsOwnNoLongerDecidesReadiness: a process that
// stops serving a failing endpoint (Endpoint.Close), and goes on serving
// others, is ready again: the endpoint it no longer serves neither keeps
// /health at 503 for its last failed canary nor counts at all.
func TestAnEndpointShutDownOnItsOwnNoLongerDecidesReadiness(t *testing.T) {
	c := canaryCluster(t, 20*time.Millisecond, 50*time.Millisecond)
	rt := c.runtime()
	wedged := endpoint(t, rt, "hc/closed/wedged")
	err := loom.Serve(context.Background(), wedged, wedgedEngine, loom.WithHealthCheck("ping"))
	if err != nil {
		t.Fatal(err)
	}
	serve(t, rt, "hc/closed/fine", func(ctx context.Context, s string) iter.Seq2[string, error] {
		return func(yield func(string, error) bool) { yield(s, nil) }
	})
	body, _ := waitHealth(t, rt, http.StatusServiceUnavailable, 10*time.Second)
	if !strings.Contains(body, "hc/closed/wedged") {
		t.Fatalf("/health says %q; want the wedged endpoint named", body)
	}
	if err := wedged.Close(); err != nil {
		t.Fatal(err)
	}
	waitHealth(t, rt, http.StatusOK, 10*time.Second)
}

// TestAClosedEndpointLeavesNoHealthCheckReadySeries: loom_health_check_ready
// is the state of an endpoint being served; once the endpoint is closed on
// its own, or its runtime shuts down, its series is removed, so that a
// scraper sees no ready or not-ready value for an endpoint no longer
// served, while the endpoints still served keep theirs.
func TestAClosedEndpointLeavesNoHealthCheckReadySeries(t *testing.T) {
	c := canaryCluster(t, 20*time.Millisecond, 50*time.Millisecond)
	rt := c.runtime()
	ready := func(endpoint string) float64 {
		return testutil.Metric(t, rt.Metrics().Registry(), "loom_health_check_ready", "endpoint", endpoint)
	}
	wedged := endpoint(t, rt, "hc/gone/wedged")
	err := loom.Serve(context.Background(), wedged, wedgedEngine, loom.WithHealthCheck("ping"))
	if err != nil {
		t.Fatal(err)
	}
	err = loom.Serve(context.Background(), endpoint(t, rt, "hc/gone/fine"), echoEngine, loom.WithHealthCheck("ping"))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the wedged endpoint's loom_health_check_ready to be 0", func() bool { return ready("wedged") == 0 })
	if err := wedged.Close(); err != nil {
		t.Fatal(err)
	}
	if v := ready("wedged"); v != -1 {
		t.Errorf("loom_health_check_ready of the closed endpoint = %v after Close, want no series", v)
	}
	if v := ready("fine"); v != 1 {
		t.Errorf("loom_health_check_ready of the endpoint still served = %v, want 1", v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := rt.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if v := ready("fine"); v != -1 {
		t.Errorf("loom_health_check_ready = %v after the runtime shut down, want no series", v)
	}
}

// TestARefusedServeLeavesTheHealthCheckReadySeriesAlone: a Serve that is
// refused neither shows readiness for an endpoint it did not serve nor
// changes that of the endpoint served already: a second Serve of a failing
// endpoint leaves its loom_health_check_ready at 0, and a Serve refused by
// a runtime shut down leaves no series.
func TestARefusedServeLeavesTheHealthCheckReadySeriesAlone(t *testing.T) {
	c := canaryCluster(t, 20*time.Millisecond, 50*time.Millisecond)
	rt := c.runtime()
	ready := func(endpoint string) float64 {
		return testutil.Metric(t, rt.Metrics().Registry(), "loom_health_check_ready", "endpoint", endpoint)
	}
	wedged := endpoint(t, rt, "hc/refused/wedged")
	if err := loom.Serve(context.Background(), wedged, wedgedEngine, loom.WithHealthCheck("ping")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the wedged endpoint's loom_health_check_ready to be 0", func() bool { return ready("wedged") == 0 })
	if err := loom.Serve(context.Background(), wedged, wedgedEngine, loom.WithHealthCheck("ping")); err == nil {
		t.Fatal("serving an endpoint twice succeeded")
	}
	if v := ready("wedged"); v != 0 {
		t.Errorf("loom_health_check_ready of the failing endpoint = %v after a refused second Serve, want 0", v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := rt.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	late, err := rt.Endpoint("hc/refused/late")
	if err != nil {
		t.Fatal(err)
	}
	if err := loom.Serve(context.Background(), late, wedgedEngine, loom.WithHealthCheck("ping")); !errors.Is(err, loom.ErrClosed) {
		t.Fatalf("Serve after Shutdown = %v, want ErrClosed", err)
	}
	if v := ready("late"); v != -1 {
		t.Errorf("loom_health_check_ready of an endpoint never served = %v, want no series", v)
	}
}

// canaryCluster is a cluster whose runtimes send a canary to an endpoint
// idle for idle, and give it timeout to answer; no status server listens.
func canaryCluster(t *testing.T, idle, timeout time.Duration) *cluster {
	c := newCluster(t)
	c.cfg.Status.Port = -1
	c.cfg.Health.CanaryIdle = idle
	c.cfg.Health.CanaryTimeout = timeout
	return c
}

// wedgedEngine answers nothing until its request ends.
var wedgedEngine = loom.EngineFunc[string, string](func(ctx context.Context, s string) iter.Seq2[string, error] {
	return func(yield func(string, error) bool) { <-ctx.Done() }
})

// echoEngine answers each request with the request.
var echoEngine = loom.EngineFunc[string, string](func(ctx context.Context, s string) iter.Seq2[string, error] {
	return func(yield func(string, error) bool) { yield(s, nil) }
})
