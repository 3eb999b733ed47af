package dashboard

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// maxScrapeBytes bounds what one /metrics answer may hold; a process with
// more is reported as a scrape error rather than read without limit.
const maxScrapeBytes = 8 << 20

// sample is one process's metrics as scraped at one time, reduced to what
// the dashboard shows.
type sample struct {
	at        time.Time
	endpoints map[string]*endpointCounts // by "ns/component/endpoint"
	events    eventCounts
	queues    map[string]queueCounts // loom_queue_* by queue
	serving   map[string]*family     // families the serving view reads, by name
	build     Build                  // from loom_build_info; Version "unknown" without it
	ready     *bool                  // from /health; nil when unknown
	err       string                 // why the scrape failed, if it did
}

// endpointCounts are the served-request metrics of one endpoint in one
// process (package metrics: loom_requests_*, loom_request_duration_seconds).
type endpointCounts struct {
	ok, errors, panics, cancelled, refused float64
	inFlight                               float64
	duration                               histogram
	firstResponse                          histogram
}

func (e *endpointCounts) total() float64 {
	return e.ok + e.errors + e.panics + e.cancelled + e.refused
}

// failed counts the requests that ended with an error: the handler's
// error or panic. Cancelled and refused requests are the caller's or the
// server's choice and are shown apart.
func (e *endpointCounts) failed() float64 { return e.errors + e.panics }

// histogram is a cumulative Prometheus histogram: upper bounds and the
// count of observations at or below each, in bound order.
type histogram struct {
	bounds []float64
	counts []float64
	count  float64
	sum    float64
}

// sub returns h minus an earlier scrape of the same histogram; a
// histogram whose buckets changed or went down (a restarted process) is
// returned whole.
func (h histogram) sub(prev histogram) histogram {
	if len(prev.bounds) != len(h.bounds) || prev.count > h.count {
		return h
	}
	d := histogram{bounds: h.bounds, counts: make([]float64, len(h.counts)), count: h.count - prev.count, sum: h.sum - prev.sum}
	for i := range h.counts {
		if prev.bounds[i] != h.bounds[i] {
			return h
		}
		d.counts[i] = h.counts[i] - prev.counts[i]
	}
	return d
}

// add returns the sum of two histograms with the same buckets (else h).
func (h histogram) add(o histogram) histogram {
	if len(h.bounds) == 0 {
		return o
	}
	if len(o.bounds) != len(h.bounds) {
		return h
	}
	s := histogram{bounds: h.bounds, counts: slices.Clone(h.counts), count: h.count + o.count, sum: h.sum + o.sum}
	for i := range o.counts {
		s.counts[i] += o.counts[i]
	}
	return s
}

// quantile estimates the q-quantile as Prometheus's histogram_quantile
// does: linear interpolation inside the bucket it falls in. It returns
// NaN when the histogram holds nothing; a quantile in the +Inf bucket is
// the highest finite bound.
func (h histogram) quantile(q float64) float64 {
	if h.count <= 0 || len(h.bounds) == 0 {
		return math.NaN()
	}
	rank := q * h.count
	lower, below := 0.0, 0.0
	for i, b := range h.bounds {
		if h.counts[i] >= rank {
			if math.IsInf(b, 1) {
				return lower
			}
			in := h.counts[i] - below
			if in <= 0 {
				return b
			}
			return lower + (b-lower)*(rank-below)/in
		}
		lower, below = b, h.counts[i]
		if math.IsInf(b, 1) {
			break
		}
	}
	return lower
}

// eventCounts are a process's event-plane counters, by publisher subject
// and by subscription pattern (package metrics, events.go).
type eventCounts struct {
	pubs map[string]*pubCounts // by transport + " " + subject
	subs map[string]*subCounts // by transport + " " + pattern
}

type pubCounts struct {
	transport, subject             string
	published, errors, sendDropped float64
}

type subCounts struct {
	transport, pattern                                   string
	received, delivered, lost, reordered, dropped, malfd float64
}

type queueCounts struct {
	enqueued, acked, nakked, redelivered, deadLettered float64
}

// family is a metric family the serving view shows, kept generic: its
// type and its series' values (a histogram's series keep their buckets).
type family struct {
	name, help, kind string
	series           []series
}

type series struct {
	labels map[string]string
	value  float64
	hist   histogram
}

// parseMetrics reads a Prometheus text exposition into a sample. It is
// the decoder of the bytes scraped from other processes: anything it does
// not recognise is skipped, and a malformed exposition is an error.
func parseMetrics(r io.Reader, servingPrefixes []string) (*sample, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(io.LimitReader(r, maxScrapeBytes))
	if err != nil {
		return nil, fmt.Errorf("malformed metrics: %w", err)
	}
	s := &sample{
		endpoints: map[string]*endpointCounts{},
		events:    eventCounts{pubs: map[string]*pubCounts{}, subs: map[string]*subCounts{}},
		queues:    map[string]queueCounts{},
		serving:   map[string]*family{},
		build:     Build{Version: UnknownBuild},
	}
	if mf := fams[buildInfoName]; mf != nil {
		s.build = readBuild(mf)
	}
	ep := func(m *dto.Metric) *endpointCounts {
		l := labels(m)
		key := l["namespace"] + "/" + l["component"] + "/" + l["endpoint"]
		e := s.endpoints[key]
		if e == nil {
			e = &endpointCounts{}
			s.endpoints[key] = e
		}
		return e
	}
	pub := func(m *dto.Metric) *pubCounts {
		l := labels(m)
		key := l["transport"] + " " + l["subject"]
		c := s.events.pubs[key]
		if c == nil {
			c = &pubCounts{transport: l["transport"], subject: l["subject"]}
			s.events.pubs[key] = c
		}
		return c
	}
	sub := func(m *dto.Metric) *subCounts {
		l := labels(m)
		key := l["transport"] + " " + l["pattern"]
		c := s.events.subs[key]
		if c == nil {
			c = &subCounts{transport: l["transport"], pattern: l["pattern"]}
			s.events.subs[key] = c
		}
		return c
	}
	queue := func(m *dto.Metric, f func(*queueCounts, float64)) {
		name := labels(m)["queue"]
		q := s.queues[name]
		f(&q, value(m))
		s.queues[name] = q
	}
	for name, mf := range fams {
		for _, m := range mf.GetMetric() {
			v := value(m)
			switch name {
			case "loom_requests_total":
				e := ep(m)
				switch labels(m)["code"] {
				case "ok":
					e.ok += v
				case "error":
					e.errors += v
				case "panic":
					e.panics += v
				case "cancelled":
					e.cancelled += v
				case "refused":
					e.refused += v
				}
			case "loom_requests_in_flight":
				ep(m).inFlight += v
			case "loom_request_duration_seconds":
				e := ep(m)
				e.duration = e.duration.add(hist(m))
			case "loom_request_first_response_seconds":
				e := ep(m)
				e.firstResponse = e.firstResponse.add(hist(m))
			case "loom_events_published_total":
				pub(m).published += v
			case "loom_events_publish_errors_total":
				pub(m).errors += v
			case "loom_events_send_dropped_total":
				pub(m).sendDropped += v
			case "loom_events_received_total":
				sub(m).received += v
			case "loom_events_delivered_total":
				sub(m).delivered += v
			case "loom_events_lost_total":
				sub(m).lost += v
			case "loom_events_reordered_total":
				sub(m).reordered += v
			case "loom_events_dropped_total":
				sub(m).dropped += v
			case "loom_events_malformed_total":
				sub(m).malfd += v
			case "loom_queue_enqueued_total":
				queue(m, func(q *queueCounts, v float64) { q.enqueued += v })
			case "loom_queue_acked_total":
				queue(m, func(q *queueCounts, v float64) { q.acked += v })
			case "loom_queue_nakked_total":
				queue(m, func(q *queueCounts, v float64) { q.nakked += v })
			case "loom_queue_redelivered_total":
				queue(m, func(q *queueCounts, v float64) { q.redelivered += v })
			case "loom_queue_dead_lettered_total":
				queue(m, func(q *queueCounts, v float64) { q.deadLettered += v })
			}
		}
		if hasPrefix(name, servingPrefixes) {
			f := &family{name: name, help: mf.GetHelp(), kind: strings.ToLower(mf.GetType().String())}
			for _, m := range mf.GetMetric() {
				sr := series{labels: labels(m), value: value(m)}
				if m.Histogram != nil {
					sr.hist = hist(m)
				}
				f.series = append(f.series, sr)
			}
			s.serving[name] = f
		}
	}
	return s, nil
}

// buildInfoName is the gauge whose labels say which build of Loom a
// process runs (package metrics).
const buildInfoName = "loom_build_info"

// UnknownBuild is the version of a process that does not say which build
// it runs: an older Loom, or a process that is not Loom.
const UnknownBuild = "unknown"

// maxBuildLabel bounds each label kept from loom_build_info; a release
// tag, a pseudo-version with +dirty, a commit hash and a Go version with
// its experiments all fit.
const maxBuildLabel = 128

// readBuild keeps one series of loom_build_info: a process exports one,
// and one that exports several (or values too long) is not to be
// believed further than its first, clipped.
func readBuild(mf *dto.MetricFamily) Build {
	b := Build{Version: UnknownBuild}
	ms := mf.GetMetric()
	if len(ms) == 0 {
		return b
	}
	for _, lp := range ms[0].GetLabel() {
		switch lp.GetName() {
		case "version":
			b.Version = clip(lp.GetValue())
		case "revision":
			b.Revision = clip(lp.GetValue())
		case "go_version":
			b.GoVersion = clip(lp.GetValue())
		}
	}
	if b.Version == "" {
		b.Version = UnknownBuild
	}
	return b
}

// clip returns s as valid UTF-8 of at most maxBuildLabel bytes, cut at a
// character boundary, with an ellipsis where it was cut.
func clip(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= maxBuildLabel {
		return s
	}
	const ellipsis = "…"
	n := maxBuildLabel - len(ellipsis)
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + ellipsis
}

func hasPrefix(name string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

func labels(m *dto.Metric) map[string]string {
	l := make(map[string]string, len(m.GetLabel()))
	for _, lp := range m.GetLabel() {
		l[lp.GetName()] = lp.GetValue()
	}
	return l
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Untyped != nil:
		return m.Untyped.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	case m.Summary != nil:
		return float64(m.Summary.GetSampleCount())
	}
	return 0
}

func hist(m *dto.Metric) histogram {
	h := m.GetHistogram()
	if h == nil {
		return histogram{}
	}
	out := histogram{count: float64(h.GetSampleCount()), sum: h.GetSampleSum()}
	for _, b := range h.GetBucket() {
		out.bounds = append(out.bounds, b.GetUpperBound())
		out.counts = append(out.counts, float64(b.GetCumulativeCount()))
	}
	// The text format lists +Inf last; make sure it is there so that
	// quantile never runs off the end.
	if n := len(out.bounds); n == 0 || !math.IsInf(out.bounds[n-1], 1) {
		out.bounds = append(out.bounds, math.Inf(1))
		out.counts = append(out.counts, out.count)
	}
	return out
}

// scraper fetches processes' /metrics and /health.
type scraper struct {
	client          *http.Client
	servingPrefixes []string
}

// scrape reads one process's status server at addr (host:port) or a full
// metrics URL; it never fails, the sample says why it has no data.
func (sc *scraper) scrape(ctx context.Context, target string, withHealth bool) *sample {
	base, metricsURL := targetURLs(target)
	s, err := sc.metrics(ctx, metricsURL)
	if err != nil {
		return &sample{at: time.Now(), err: err.Error()}
	}
	if withHealth {
		if ready, ok := sc.health(ctx, base+"/health"); ok {
			s.ready = &ready
		}
	}
	return s
}

// targetURLs turns a status address (host:port) into its base URL and
// /metrics URL; a target that is already a URL is its own metrics URL.
func targetURLs(target string) (base, metrics string) {
	if strings.Contains(target, "://") {
		return strings.TrimSuffix(strings.TrimSuffix(target, "/metrics"), "/"), target
	}
	base = "http://" + target
	return base, base + "/metrics"
}

func (sc *scraper) metrics(ctx context.Context, url string) (*sample, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := sc.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: %s", url, resp.Status)
	}
	at := time.Now()
	s, err := parseMetrics(resp.Body, sc.servingPrefixes)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	s.at = at
	return s, nil
}

// health reads /health: 200 is ready, 503 is not (shutting down or an
// endpoint not registered); anything else is unknown.
func (sc *scraper) health(ctx context.Context, url string) (ready, ok bool) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false, false
	}
	resp, err := sc.client.Do(req)
	if err != nil {
		return false, false
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		return true, true
	case http.StatusServiceUnavailable:
		return false, true
	}
	return false, false
}
