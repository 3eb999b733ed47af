package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Health check results, the "result" label of loom_health_check_total.
const (
	HealthOK      = "ok"
	HealthTimeout = "timeout" // no answer within health.canary_timeout
	HealthError   = "error"   // the health request ended with an error
)

type healthMetrics struct {
	once     sync.Once
	checks   *prometheus.CounterVec
	duration *prometheus.HistogramVec
	ready    *prometheus.GaugeVec
}

// HealthCheck is the metrics of one endpoint's canary health checks.
type HealthCheck struct {
	OK, Timeout, Error prometheus.Counter
	Duration           prometheus.Observer

	ready  *prometheus.GaugeVec
	labels prometheus.Labels
	mu     sync.Mutex
	state  int              // readyUnshown, then readyShown, then readyRemoved
	gauge  prometheus.Gauge // the endpoint's loom_health_check_ready, once shown
}

// The life of an endpoint's loom_health_check_ready series.
const (
	readyUnshown = iota // not served yet: no series
	readyShown          // served: the series says whether it is ready
	readyRemoved        // served no more: no series
)

// HealthCheck returns the bound health check metrics of
// ns/component/endpoint, registering the family on first use. Its
// loom_health_check_ready series shows from Show to Remove only.
func (m *Metrics) HealthCheck(ns, component, endpoint string) *HealthCheck {
	h := &m.health
	h.once.Do(func() {
		h.checks = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loom_health_check_total",
			Help: "Canary health checks sent to idle endpoints, by endpoint and result (ok, timeout, error).",
		}, append(endpointLabels, "result"))
		h.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "loom_health_check_duration_seconds",
			Help:    "Time a canary health check took to answer.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}, endpointLabels)
		h.ready = prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "loom_health_check_ready",
			Help: "1 while an endpoint's last canary health check (or request) succeeded, 0 while it is failing; no series for an endpoint not served.",
		}, endpointLabels)
		m.reg.MustRegister(h.checks, h.duration, h.ready)
	})
	l := prometheus.Labels{"namespace": ns, "component": component, "endpoint": endpoint}
	res := func(r string) prometheus.Counter { return h.checks.WithLabelValues(ns, component, endpoint, r) }
	return &HealthCheck{OK: res(HealthOK), Timeout: res(HealthTimeout), Error: res(HealthError),
		Duration: h.duration.With(l), ready: h.ready, labels: l}
}

// Show makes the endpoint's loom_health_check_ready series, with ready,
// once the endpoint is served: a Serve refused or failed shows nothing,
// and does not touch the series of the endpoint served already. It does
// nothing after Remove.
func (h *HealthCheck) Show(ready bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state != readyUnshown {
		return
	}
	h.state, h.gauge = readyShown, h.ready.With(h.labels)
	h.gauge.Set(gaugeOf(ready))
}

// SetReady sets the endpoint's loom_health_check_ready while it shows.
func (h *HealthCheck) SetReady(ready bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state == readyShown {
		h.gauge.Set(gaugeOf(ready))
	}
}

// Remove removes the endpoint's loom_health_check_ready series, once the
// endpoint is served no more: a scraper then sees no readiness for it,
// rather than its last value for ever, and a canary ending later sets
// nothing. The counters and the histogram stay, as the request counters
// of a closed endpoint do.
func (h *HealthCheck) Remove() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state == readyShown {
		h.ready.Delete(h.labels)
	}
	h.state = readyRemoved
}

func gaugeOf(ready bool) float64 {
	if ready {
		return 1
	}
	return 0
}
