package loom_test

import (
	"context"
	"errors"
	"iter"
	"net"
	"slices"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/discovery"
)

// metricValue is the sum over a family's series in rt's registry, of
// those with each label given as a name and value pair: a counter's or a
// gauge's value, a histogram's count of observations.
func metricValue(t testing.TB, rt *loom.Runtime, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := rt.Metrics().Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				if !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool {
					return l.GetName() == labels[i] && l.GetValue() == labels[i+1]
				}) {
					continue series
				}
			}
			switch {
			case m.Counter != nil:
				sum += m.GetCounter().GetValue()
			case m.Gauge != nil:
				sum += m.GetGauge().GetValue()
			case m.Histogram != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return sum
}

// TestEachRequestMetricMovesWithItsOutcome: the request metrics the README
// and docs/observability.md name (requests by endpoint and outcome, in
// flight, duration and time to first response, items and bytes, client
// calls by outcome and retries) each move, with its documented labels,
// for the requests that should move it, on every plane.
func TestEachRequestMetricMovesWithItsOutcome(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		refuse := func(next loom.Engine[any, any]) loom.Engine[any, any] {
			return loom.EngineFunc[any, any](func(ctx context.Context, req any) iter.Seq2[any, error] {
				if req.(string) == "refuse" {
					return loom.Fail[any](loom.Refuse("unauthenticated", "no token"))
				}
				return next.Generate(ctx, req)
			})
		}
		srv := c.runtime(loom.WithServerInterceptors(refuse))
		hanging := make(chan struct{}, 1)
		serve(t, srv, "m/svc/gen", func(ctx context.Context, s string) iter.Seq2[string, error] {
			return func(yield func(string, error) bool) {
				switch s {
				case "ok":
					if yield("a", nil) {
						yield("b", nil)
					}
				case "error":
					yield("", errors.New("handler failed"))
				case "panic":
					panic("handler exploded")
				case "hang":
					hanging <- struct{}{}
					<-ctx.Done()
				}
			}
		})
		caller := c.runtime()
		cl := client[string, string](t, caller, "m/svc/gen")
		for _, req := range []string{"ok", "error", "panic", "refuse"} {
			got, err := collect(cl.Generate(context.Background(), req))
			if (err == nil) != (req == "ok") || (req == "ok" && len(got) != 2) {
				t.Fatalf("call %q: %v, %v", req, got, err)
			}
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { _, err := collect(cl.Generate(ctx, "hang")); done <- err }()
		within(t, 10*time.Second, hanging, "the hanging request to reach its handler")
		ep := []string{"namespace", "m", "component", "svc", "endpoint", "gen"}
		with := func(kv ...string) []string { return append(slices.Clone(ep), kv...) }
		if n := metricValue(t, srv, "loom_requests_in_flight", ep...); n != 1 {
			t.Errorf("loom_requests_in_flight = %v while one request hangs, want 1", n)
		}
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("the cancelled call ended with %v", err)
		}
		waitFor(t, 10*time.Second, "the server to count the cancelled request", func() bool {
			return metricValue(t, srv, "loom_requests_total", with("code", "cancelled")...) == 1
		})
		for _, m := range []struct {
			rt   *loom.Runtime
			name string
			kv   []string
			want float64
		}{
			{srv, "loom_requests_total", with("code", "ok"), 1},
			{srv, "loom_requests_total", with("code", "error"), 1},
			{srv, "loom_requests_total", with("code", "panic"), 1},
			{srv, "loom_requests_total", with("code", "refused"), 1},
			{srv, "loom_requests_in_flight", ep, 0},
			{srv, "loom_request_duration_seconds", ep, 5},
			{srv, "loom_request_first_response_seconds", ep, 1},
			{srv, "loom_response_items_total", ep, 2},
			{caller, "loom_client_requests_total", with("code", "ok"), 1},
			{caller, "loom_client_requests_total", with("code", "error"), 3},
			{caller, "loom_client_requests_total", with("code", "cancelled"), 1},
			{caller, "loom_client_requests_total", with("code", "no_instances"), 0},
			{caller, "loom_client_retries_total", ep, 0},
		} {
			if got := metricValue(t, m.rt, m.name, m.kv...); got != m.want {
				t.Errorf("%s%v = %v, want %v", m.name, m.kv, got, m.want)
			}
		}
		in, out := metricValue(t, srv, "loom_request_bytes_total", with("direction", "in")...), metricValue(t, srv, "loom_request_bytes_total", with("direction", "out")...)
		if network := !c.cfg.Client.LocalFastPath; network != (in > 0 && out > 0) || !network && in+out != 0 {
			t.Errorf("loom_request_bytes_total in %v, out %v; want both above 0 over the network, 0 on the local fast path", in, out)
		}
		nobody := client[string, string](t, caller, "m/none/gen", loom.WithWaitTimeout(10*time.Millisecond))
		if _, err := collect(nobody.Generate(context.Background(), "ok")); !errors.Is(err, loom.ErrNoInstances) {
			t.Fatalf("a call to an endpoint nobody serves: %v", err)
		}
		if n := metricValue(t, caller, "loom_client_requests_total", "namespace", "m", "component", "none", "endpoint", "gen", "code", "no_instances"); n != 1 {
			t.Errorf("loom_client_requests_total{code=no_instances} = %v, want 1", n)
		}
	})
}

// TestAPeerOverTheConnectionLimitIsCounted: a connection accepted beyond
// request_plane.max_conns is closed at once and counted in
// loom_request_plane_limit_hits_total{limit="max_conns"}, as
// docs/protocol.md says.
func TestAPeerOverTheConnectionLimitIsCounted(t *testing.T) {
	c := newClusterOn(t, "tcp")
	c.cfg.RequestPlane.MaxConns = 1
	srv := c.runtime()
	serve(t, srv, "m/limit/gen", echoID(srv))
	list, err := c.store.Connect().List(context.Background(), discovery.Query{Namespace: "m"})
	if err != nil || len(list) != 1 {
		t.Fatalf("discovery holds %v (%v)", list, err)
	}
	first, err := net.Dial("tcp", list[0].Address)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	waitFor(t, 10*time.Second, "the second connection to be closed and counted", func() bool {
		second, err := net.Dial("tcp", list[0].Address)
		if err == nil {
			second.Close()
		}
		return metricValue(t, srv, "loom_request_plane_limit_hits_total", "limit", "max_conns") >= 1
	})
}
