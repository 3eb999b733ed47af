package metrics_test

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/loomrt/loom/internal/buildinfo"
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
	if got := a.Items.Value(); got != 5 {
		t.Fatalf("items = %v, want 5", got)
	}
}

func TestTwoSetsDoNotShareARegistry(t *testing.T) {
	a, b := metrics.New(), metrics.New()
	a.Endpoint("n", "c", "e").OK.Inc()
	if got := b.Endpoint("n", "c", "e").OK.Value(); got != 0 {
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

// The striped families read as the prometheus ones did: a histogram's
// buckets are cumulative, its count and sum in seconds; bytes by
// direction; client calls by code.
func TestStripedFamiliesExposeAsBefore(t *testing.T) {
	m := metrics.New()
	e := m.Endpoint("n", "c", "e")
	for _, d := range []time.Duration{50 * time.Microsecond, 100 * time.Microsecond, 300 * time.Microsecond, time.Minute} {
		e.Duration.Observe(d)
	}
	e.FirstResponse.Observe(time.Millisecond)
	e.BytesIn.Add(10)
	e.BytesOut.Add(32)
	cl := m.Client("n", "c", "e")
	cl.OK.Inc()
	cl.Retries.Add(2)
	want := durationText([11]int{2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 4}, "60.00045") + `
# HELP loom_request_bytes_total Encoded bytes of requests received (in) and response items sent (out) over the network.
# TYPE loom_request_bytes_total counter
loom_request_bytes_total{component="c",direction="in",endpoint="e",namespace="n"} 10
loom_request_bytes_total{component="c",direction="out",endpoint="e",namespace="n"} 32
# HELP loom_client_requests_total Requests made by clients, by endpoint and outcome code.
# TYPE loom_client_requests_total counter
loom_client_requests_total{code="cancelled",component="c",endpoint="e",namespace="n"} 0
loom_client_requests_total{code="error",component="c",endpoint="e",namespace="n"} 0
loom_client_requests_total{code="no_instances",component="c",endpoint="e",namespace="n"} 0
loom_client_requests_total{code="ok",component="c",endpoint="e",namespace="n"} 1
# HELP loom_client_retries_total Requests retried on another instance after a failure before their first response.
# TYPE loom_client_retries_total counter
loom_client_retries_total{component="c",endpoint="e",namespace="n"} 2
`
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), "loom_request_duration_seconds", "loom_request_bytes_total", "loom_client_requests_total", "loom_client_retries_total"); err != nil {
		t.Fatal(err)
	}
}

// Updates from many goroutines at once all count.
func TestStripedCountsAddUpUnderConcurrency(t *testing.T) {
	m := metrics.New()
	e := m.Endpoint("n", "c", "e")
	const workers, each = 8, 1000
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range each {
				e.InFlight.Add(1)
				e.OK.Inc()
				e.Duration.Observe(time.Millisecond)
				e.InFlight.Add(-1)
			}
		})
	}
	wg.Wait()
	if got := e.OK.Value(); got != workers*each {
		t.Errorf("ok = %d, want %d", got, workers*each)
	}
	if got := e.InFlight.Value(); got != 0 {
		t.Errorf("in flight = %d, want 0", got)
	}
	want := durationText([11]int{0, 0, 8000, 8000, 8000, 8000, 8000, 8000, 8000, 8000, 8000}, "8")
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), "loom_request_duration_seconds"); err != nil {
		t.Fatal(err)
	}
}

// durationText is the exposition of loom_request_duration_seconds for the
// endpoint n/c/e: the cumulative count at each bound, then at +Inf (the
// count), and the sum.
func durationText(cumulative [11]int, sum string) string {
	var b strings.Builder
	b.WriteString("\n# HELP loom_request_duration_seconds Time from a request's arrival to the end of its response stream.\n")
	b.WriteString("# TYPE loom_request_duration_seconds histogram\n")
	const series = `loom_request_duration_seconds%s{component="c",endpoint="e",namespace="n"%s} %s` + "\n"
	for i, le := range []string{"0.0001", "0.0004", "0.0016", "0.0064", "0.0256", "0.1024", "0.4096", "1.6384", "6.5536", "26.2144", "+Inf"} {
		fmt.Fprintf(&b, series, "_bucket", `,le="`+le+`"`, strconv.Itoa(cumulative[i]))
	}
	fmt.Fprintf(&b, series, "_sum", "", sum)
	fmt.Fprintf(&b, series, "_count", "", strconv.Itoa(cumulative[10]))
	return b.String()
}

// The counters whose label values are a fixed set have a series for each
// value from the start, at 0: Prometheus's increase() and rate() take a
// series' first sample as its start, so a series born at 1 hides its
// first count from an alert on increase(...) > 0, and one that does not
// exist yet reads as "no data" rather than 0.
func TestFixedSetCountersStartAtZero(t *testing.T) {
	m := metrics.New()
	const want = `
# HELP loom_request_plane_limit_hits_total Times a peer hit a request-plane limit (its connection closed, or its new stream refused), by limit: max_conns, frame_timeout, max_queued_pongs, max_streams_per_conn, idle_timeout (a GOAWAY asking the client to close an idle connection).
# TYPE loom_request_plane_limit_hits_total counter
loom_request_plane_limit_hits_total{limit="frame_timeout"} 0
loom_request_plane_limit_hits_total{limit="idle_timeout"} 0
loom_request_plane_limit_hits_total{limit="max_conns"} 0
loom_request_plane_limit_hits_total{limit="max_queued_pongs"} 0
loom_request_plane_limit_hits_total{limit="max_streams_per_conn"} 0
# HELP loom_client_stalled_servers_total Times a server this process calls stopped answering while calls waited on it (frozen or overloaded): its calls without a response went to other instances, and new calls avoided it. By transport: tcp, nats.
# TYPE loom_client_stalled_servers_total counter
loom_client_stalled_servers_total{transport="nats"} 0
loom_client_stalled_servers_total{transport="tcp"} 0
# HELP loom_nats_permission_violations_total Operations a NATS server refused this process's connections for want of permission on their subject, by kind: publish, reply (a publish's reply subject), subscribe, other.
# TYPE loom_nats_permission_violations_total counter
loom_nats_permission_violations_total{kind="other"} 0
loom_nats_permission_violations_total{kind="publish"} 0
loom_nats_permission_violations_total{kind="reply"} 0
loom_nats_permission_violations_total{kind="subscribe"} 0
`
	families := []string{"loom_request_plane_limit_hits_total", "loom_client_stalled_servers_total", "loom_nats_permission_violations_total"}
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), families...); err != nil {
		t.Fatal(err)
	}
	m.LimitHit(metrics.LimitMaxConns)
	m.ServerStalled(metrics.TransportNATS)
	m.NATSPermissionViolation(metrics.PermissionPublish)
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(strings.NewReplacer(
		`limit="max_conns"} 0`, `limit="max_conns"} 1`, `transport="nats"} 0`, `transport="nats"} 1`,
		`kind="publish"} 0`, `kind="publish"} 1`).Replace(want)),
		families...); err != nil {
		t.Fatal(err)
	}
}

// The limits the request planes count (internal/mux, internal/natsplane,
// which name them by string) are the set New starts at 0, so that none
// is born at 1.
func TestTheRequestPlanesCountOnlyTheKnownLimits(t *testing.T) {
	known := []string{metrics.LimitMaxConns, metrics.LimitFrameTimeout, metrics.LimitMaxQueuedPongs,
		metrics.LimitMaxStreamsPerConn, metrics.LimitIdleTimeout}
	call := regexp.MustCompile(`\b(tripped|f|OnLimit)\("([a-z_]+)"`)
	files, err := filepath.Glob("../internal/mux/*.go")
	if err != nil {
		t.Fatal(err)
	}
	more, err := filepath.Glob("../internal/natsplane/*.go")
	if err != nil {
		t.Fatal(err)
	}
	counted := make(map[string]bool)
	for _, file := range append(files, more...) {
		if strings.HasSuffix(file, "_test.go") {
			continue
		}
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range call.FindAllStringSubmatch(string(b), -1) {
			counted[m[2]] = true
			if !slices.Contains(known, m[2]) {
				t.Errorf("%s counts the limit %q, which metrics does not start at 0: add it to metrics' limits (and to docs/observability.md)", file, m[2])
			}
		}
	}
	for _, l := range known {
		if !counted[l] {
			t.Errorf("metrics starts the limit %q at 0, which no request plane counts", l)
		}
	}
}

// A background task's panic counter starts at 0 when the task starts
// (package internal/supervise calls TaskStarted), so that its first panic
// is seen by increase() and rate() (see TestFixedSetCountersStartAtZero).
func TestTaskPanicsStartAtZero(t *testing.T) {
	m := metrics.New()
	m.TaskStarted("watch ns/backend/generate")
	m.TaskStarted("watch ns/backend/generate") // started again: still one series
	const want = `
# HELP loom_background_task_panics_total Panics recovered in background tasks, by task.
# TYPE loom_background_task_panics_total counter
loom_background_task_panics_total{task="watch ns/backend/generate"} 0
`
	const family = "loom_background_task_panics_total"
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), family); err != nil {
		t.Fatal(err)
	}
	m.TaskPanicked("watch ns/backend/generate")
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(strings.Replace(want, "} 0", "} 1", 1)), family); err != nil {
		t.Fatal(err)
	}
}

// An LLM model's request counter starts at 0 for each status it is bound
// with (package llm/frontend binds every status it answers with), so that
// the model's first 5xx or 429 is seen by increase() and rate().
func TestModelRequestsStartAtZero(t *testing.T) {
	m := metrics.New()
	lm := m.LLMModel("test-model", 200, 503)
	if again := m.LLMModel("test-model", 200, 503, 429); again != lm {
		t.Fatal("the same model got two sets of metrics")
	}
	m.LLMModel("", 404)
	const want = `
# HELP loom_llm_requests_total Requests the LLM frontend answered, by model and HTTP status (a stream that failed after its 200 header counts with the status its error has).
# TYPE loom_llm_requests_total counter
loom_llm_requests_total{model="",status="404"} 0
loom_llm_requests_total{model="test-model",status="200"} 0
loom_llm_requests_total{model="test-model",status="429"} 0
loom_llm_requests_total{model="test-model",status="503"} 0
`
	const family = "loom_llm_requests_total"
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), family); err != nil {
		t.Fatal(err)
	}
	lm.Request(503)
	lm.Request(503)
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(strings.Replace(want, `status="503"} 0`, `status="503"} 2`, 1)), family); err != nil {
		t.Fatal(err)
	}
	// A status outside the bound set is still counted, in a series of its
	// own.
	lm.Request(418)
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(strings.Replace(want, `status="503"} 0`, `status="503"} 2`, 1)+
		`loom_llm_requests_total{model="test-model",status="418"} 1`+"\n"), family); err != nil {
		t.Fatal(err)
	}
}

func TestBuildInfoSaysWhichBuildRuns(t *testing.T) {
	m := metrics.New()
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	b := buildinfo.Read()
	for _, f := range fams {
		if f.GetName() != "loom_build_info" {
			continue
		}
		if len(f.Metric) != 1 || f.Metric[0].GetGauge().GetValue() != 1 {
			t.Fatalf("loom_build_info: %v; want one series at 1", f.Metric)
		}
		got := map[string]string{}
		for _, l := range f.Metric[0].Label {
			got[l.GetName()] = l.GetValue()
		}
		want := map[string]string{"version": b.Version, "revision": b.Revision, "go_version": runtime.Version()}
		if !maps.Equal(got, want) {
			t.Fatalf("loom_build_info labels %v, want %v", got, want)
		}
		return
	}
	t.Fatal("no loom_build_info in a new registry")
}
