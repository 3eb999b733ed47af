package metrics_test

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/loomrt/loom/metrics"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestEndpointMetricsAreBoundOnceAndLabelled(t *testing.T) {
	m := metrics.New()
	a := m.Endpoint("dynamo", "backend", "generate")
	if b := m.Endpoint("dynamo", "backend", "generate"); a != b {
		t.Fatal("the same endpoint got two sets of metrics")
	}
	a.OK.Inc()
	a.OK.Inc()
	a.Panic.Inc()
	a.Items.Add(5)
	m.Endpoint("dynamo", "frontend", "generate").Error.Inc()
	m.TaskPanicked("watch")

	const want = `
# HELP loom_requests_total Requests served, by endpoint and outcome code.
# TYPE loom_requests_total counter
loom_requests_total{code="cancelled",component="backend",endpoint="generate",namespace="dynamo"} 0
loom_requests_total{code="cancelled",component="frontend",endpoint="generate",namespace="dynamo"} 0
loom_requests_total{code="error",component="backend",endpoint="generate",namespace="dynamo"} 0
loom_requests_total{code="error",component="frontend",endpoint="generate",namespace="dynamo"} 1
loom_requests_total{code="ok",component="backend",endpoint="generate",namespace="dynamo"} 2
loom_requests_total{code="ok",component="frontend",endpoint="generate",namespace="dynamo"} 0
loom_requests_total{code="panic",component="backend",endpoint="generate",namespace="dynamo"} 1
loom_requests_total{code="panic",component="frontend",endpoint="generate",namespace="dynamo"} 0
loom_requests_total{code="refused",component="backend",endpoint="generate",namespace="dynamo"} 0
loom_requests_total{code="refused",component="frontend",endpoint="generate",namespace="dynamo"} 0
# HELP loom_background_task_panics_total Panics recovered in background tasks, by task.
# TYPE loom_background_task_panics_total counter
loom_background_task_panics_total{task="watch"} 1
`
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), "loom_requests_total", "loom_background_task_panics_total"); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(a.Items); got != 5 {
		t.Fatalf("items = %v, want 5", got)
	}
}

func TestTwoSetsDoNotShareARegistry(t *testing.T) {
	a, b := metrics.New(), metrics.New()
	a.Endpoint("n", "c", "e").OK.Inc()
	if got := testutil.ToFloat64(b.Endpoint("n", "c", "e").OK); got != 0 {
		t.Fatalf("a second set saw %v requests of the first", got)
	}
}

func TestInFlightIsReportedPerEndpoint(t *testing.T) {
	m := metrics.New()
	a := m.Endpoint("dynamo", "backend", "generate")
	m.Endpoint("dynamo", "frontend", "generate")
	a.InFlight.Add(3)
	a.InFlight.Add(-1)
	const want = `
# HELP loom_requests_in_flight Requests being served now.
# TYPE loom_requests_in_flight gauge
loom_requests_in_flight{component="backend",endpoint="generate",namespace="dynamo"} 2
loom_requests_in_flight{component="frontend",endpoint="generate",namespace="dynamo"} 0
`
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), "loom_requests_in_flight"); err != nil {
		t.Fatal(err)
	}
}
