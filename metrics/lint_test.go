package metrics_test

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"

	"github.com/loomrt/loom/metrics"
)

// everyFamily returns a Metrics with a series in every family Loom
// declares: what a process's registry holds once it has served and
// called endpoints, run canaries, published and received events, run a
// work queue, an LLM frontend and a KV router.
func everyFamily(t *testing.T) *metrics.Metrics {
	t.Helper()
	m := metrics.New()
	m.Endpoint("ns", "backend", "generate").OK.Inc()
	m.Client("ns", "backend", "generate").OK.Inc()
	m.TaskStarted("watch ns/backend/generate")
	m.TaskPanicked("watch ns/backend/generate")
	m.LimitHit("max_conns")
	m.ServerStalled("tcp")
	m.NATSPermissionViolation(metrics.PermissionPublish)
	m.HealthCheck("ns", "backend", "generate").Show(true)
	m.Queue("jobs").Acked.Inc()
	m.LLMModel("test-model").Request(200)
	m.KVRouter("kv", func() metrics.KVRouterCounts { return metrics.KVRouterCounts{Workers: 1} })
	m.EventPublisher("nats", "namespace.ns.events.kv", func() metrics.EventPublisherCounts { return metrics.EventPublisherCounts{} })
	m.EventSubscription("nats", "namespace.ns.events.kv", func() metrics.EventSubscriptionCounts { return metrics.EventSubscriptionCounts{} })
	return m
}

// metricsMethods are the methods of *Metrics; everyFamily calls each one
// that registers a family. A new method fails
// TestEveryFamilyIsExercised until it is added here (and, if it
// registers a family, to everyFamily), so a family cannot escape the
// lint and the documentation check below.
var metricsMethods = []string{
	"Client", "Endpoint", "EventPublisher", "EventSubscription", "HealthCheck",
	"KVRouter", "LLMModel", "LimitHit", "NATSPermissionViolation", "Queue", "Registry", "ServerStalled", "TaskPanicked", "TaskStarted",
}

func TestEveryFamilyIsExercised(t *testing.T) {
	typ := reflect.TypeFor[*metrics.Metrics]()
	var got []string
	for i := range typ.NumMethod() {
		got = append(got, typ.Method(i).Name)
	}
	slices.Sort(got)
	if !slices.Equal(got, metricsMethods) {
		t.Fatalf("*metrics.Metrics has the methods %v, metricsMethods lists %v: make everyFamily call a new one that registers metrics, then list it", got, metricsMethods)
	}
}

// Every Prometheus metric is declared in package metrics (the style guide:
// names in one place), so that everyFamily sees them all: no other
// package of the module constructs a metric or registers one.
func TestNoOtherPackageDeclaresMetrics(t *testing.T) {
	constructs := regexp.MustCompile(`prometheus\.(New(Counter|Gauge|Histogram|Summary|Untyped|Desc)\w*|MustRegister|Register)\(|collectors\.New\w*\(|promauto\.|prometheus\.DefaultRegisterer`)
	err := filepath.WalkDir("..", func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case "metrics", "testdata", "bench", ".git":
				return filepath.SkipDir // bench is a module of its own
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if !bytes.Contains(b, []byte("client_golang")) {
			return nil // imports no Prometheus package
		}
		if loc := constructs.FindIndex(b); loc != nil {
			t.Errorf("%s declares or registers a metric (%q): declare it in package metrics, with its test and its row in docs/observability.md", path, b[loc[0]:loc[1]])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// lintExceptions are the families allowed to fail promlint, each with the
// reason (a name pinned by a documented consumer, such as Dynamo's
// dashboards). None today: every family passes. An entry whose family
// passes, or no longer exists, fails the test, so the list stays true.
var lintExceptions = map[string]string{}

// TestEveryFamilyPassesPromlint runs client_golang's promlint over every
// family of a process's registry, Loom's and the Go and process
// collectors': counters end in _total, units are base units (seconds,
// bytes) spelled out at the end of the name, every family has help.
func TestEveryFamilyPassesPromlint(t *testing.T) {
	mfs, err := everyFamily(t).Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	failing := make(map[string]bool)
	for _, p := range problems {
		failing[p.Metric] = true
		if _, ok := lintExceptions[p.Metric]; !ok {
			t.Errorf("promlint: %s: %s", p.Metric, p.Text)
		}
	}
	for name, reason := range lintExceptions {
		if !failing[name] {
			t.Errorf("lintExceptions holds %s (%s), which passes promlint or is not registered: remove it", name, reason)
		}
	}
}

// family is a metric family as docs/observability.md lists it.
type family struct {
	typ    string   // counter, gauge, histogram
	labels []string // sorted
}

// registered returns Loom's families in m's registry (the loom_ ones:
// the Go and process collectors' are client_golang's), by name.
func registered(t *testing.T, m *metrics.Metrics) map[string]family {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	fams := make(map[string]family)
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "loom_") {
			continue
		}
		f := family{typ: strings.ToLower(mf.GetType().String())}
		for _, s := range mf.GetMetric() {
			for _, l := range s.GetLabel() {
				if !slices.Contains(f.labels, l.GetName()) {
					f.labels = append(f.labels, l.GetName())
				}
			}
		}
		slices.Sort(f.labels)
		fams[mf.GetName()] = f
		if mf.GetType() == dto.MetricType_UNTYPED {
			t.Errorf("%s is untyped", mf.GetName())
		}
	}
	return fams
}

// documented reads the metrics table of docs/observability.md: rows
// "| `name` | type | `label`, `label` | what |".
func documented(t *testing.T) map[string]family {
	t.Helper()
	f, err := os.Open("../docs/observability.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	row := regexp.MustCompile("^\\| `(loom_[a-z_]+)` \\| ([a-z]+) \\| ([^|]*) \\|")
	label := regexp.MustCompile("`([a-z_]+)`")
	fams := make(map[string]family)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		m := row.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		fam := family{typ: m[2]}
		for _, l := range label.FindAllStringSubmatch(m[3], -1) {
			fam.labels = append(fam.labels, l[1])
		}
		slices.Sort(fam.labels)
		if _, dup := fams[m[1]]; dup {
			t.Errorf("docs/observability.md lists %s twice", m[1])
		}
		fams[m[1]] = fam
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return fams
}

// TestTheDocumentedMetricsAreTheRegisteredOnes: docs/observability.md's
// table of metrics names every family Loom registers, with its type and
// labels, and nothing else.
func TestTheDocumentedMetricsAreTheRegisteredOnes(t *testing.T) {
	reg, doc := registered(t, everyFamily(t)), documented(t)
	if len(doc) == 0 {
		t.Fatal("docs/observability.md has no metrics table")
	}
	for name, r := range reg {
		d, ok := doc[name]
		switch {
		case !ok:
			t.Errorf("%s (%s, labels %v) is registered but not in docs/observability.md's metrics table", name, r.typ, r.labels)
		case d.typ != r.typ || !slices.Equal(d.labels, r.labels):
			t.Errorf("%s: docs/observability.md says %s with labels %v; registered as %s with labels %v", name, d.typ, d.labels, r.typ, r.labels)
		}
	}
	for name := range doc {
		if _, ok := reg[name]; !ok {
			t.Errorf("docs/observability.md lists %s, which Loom does not register", name)
		}
	}
}

// notMetrics are the loom_ names the docs use that are not Loom's
// metrics, each with what it is.
var notMetrics = map[string]string{
	"loom_discovery":       "the NATS KV bucket of discovery",
	"loom_payloads":        "the JetStream object store bucket of queue.object_bucket",
	"loom_reused":          "a benchmark's column in docs/performance.md",
	"loom_llm_kv_hit_rate": "a gauge the dashboard reads if some other process exports it (docs/dashboard.md); Loom does not",
}

// TestTheDocsNameOnlyRegisteredMetrics: a metric named anywhere in
// README.md or docs/ (queues.md, llm.md, events.md...) is one Loom
// registers, so a renamed metric cannot leave a stale name behind.
func TestTheDocsNameOnlyRegisteredMetrics(t *testing.T) {
	reg := registered(t, everyFamily(t))
	files, err := filepath.Glob("../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	// A name ends in a letter: "loom_events_" is a prefix, not a name.
	name := regexp.MustCompile(`\bloom_[a-z_]*[a-z]\b`)
	for _, file := range append(files, "../README.md") {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range slices.Compact(slices.Sorted(slices.Values(name.FindAllString(string(b), -1)))) {
			if _, ok := reg[n]; !ok && notMetrics[n] == "" {
				t.Errorf("%s names %s, which Loom does not register", file, n)
			}
		}
	}
}
