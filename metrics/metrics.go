// Package metrics holds Loom's Prometheus metrics, on a registry Loom owns
// (not the global one), so a program can serve it, merge it or ignore it.
// Every metric is declared in this package, one file per plane: requests
// and background tasks here, work queues in queue.go, events in events.go,
// canary health checks in health.go, the LLM frontend's in llmfrontend.go.
package metrics

import (
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Request outcome codes, the "code" label of request counters.
const (
	CodeOK        = "ok"
	CodeError     = "error"     // the handler returned an error
	CodePanic     = "panic"     // the handler panicked
	CodeCancelled = "cancelled" // the caller cancelled or the deadline passed
	CodeRefused   = "refused"   // not started: draining, overloaded, bad request
	// CodeNoInstances: a client found no instance to call.
	CodeNoInstances = "no_instances"
)

var endpointLabels = []string{"namespace", "component", "endpoint"}

// Metrics is one runtime's set of metrics.
type Metrics struct {
	reg *prometheus.Registry

	requests      *prometheus.CounterVec
	inFlight      *prometheus.Desc
	duration      *prometheus.HistogramVec
	firstResponse *prometheus.HistogramVec
	items         *prometheus.CounterVec
	bytes         *prometheus.CounterVec
	clientCalls   *prometheus.CounterVec
	clientRetries *prometheus.CounterVec
	taskPanics    *prometheus.CounterVec
	limitHits     *prometheus.CounterVec
	stalls        *prometheus.CounterVec

	events eventMetrics  // the event plane's, registered on first use (events.go)
	health healthMetrics // canary health checks', registered on first use (health.go)

	mu        sync.Mutex
	endpoints map[[3]string]*Endpoint
	clients   map[[3]string]*ClientEndpoint
}

// New returns a fresh set of metrics on a new registry, with the Go and
// process collectors.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loom_requests_total",
			Help: "Requests served, by endpoint and outcome code.",
		}, append(endpointLabels, "code")),
		inFlight: prometheus.NewDesc("loom_requests_in_flight", "Requests being served now.", endpointLabels, nil),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "loom_request_duration_seconds",
			Help:    "Time from a request's arrival to the end of its response stream.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}, endpointLabels),
		firstResponse: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "loom_request_first_response_seconds",
			Help:    "Time from a request's arrival to its first response item.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}, endpointLabels),
		items: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loom_response_items_total",
			Help: "Response items streamed by handlers.",
		}, endpointLabels),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loom_request_bytes_total",
			Help: "Encoded bytes of requests received (in) and response items sent (out) over the network.",
		}, append(endpointLabels, "direction")),
		clientCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loom_client_requests_total",
			Help: "Requests made by clients, by endpoint and outcome code.",
		}, append(endpointLabels, "code")),
		clientRetries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loom_client_retries_total",
			Help: "Requests retried on another instance after a failure before their first response.",
		}, endpointLabels),
		taskPanics: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loom_background_task_panics_total",
			Help: "Panics recovered in background tasks, by task.",
		}, []string{"task"}),
		limitHits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loom_request_plane_limit_hits_total",
			Help: "Times a peer hit a request-plane limit (its connection closed, or its new stream refused), by limit: max_conns, frame_timeout, max_queued_pongs, max_streams_per_conn, idle_timeout (a GOAWAY asking the client to close an idle connection).",
		}, []string{"limit"}),
		stalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loom_client_stalled_servers_total",
			Help: "Times a server this process calls stopped answering while calls waited on it (frozen or overloaded): its calls without a response went to other instances, and new calls avoided it. By transport: tcp, nats.",
		}, []string{"transport"}),
		endpoints: make(map[[3]string]*Endpoint),
		clients:   make(map[[3]string]*ClientEndpoint),
	}
	m.reg.MustRegister(m.requests, inFlightCollector{m}, m.duration, m.firstResponse, m.items, m.bytes,
		m.clientCalls, m.clientRetries, m.taskPanics, m.limitHits, m.stalls,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry returns the registry the metrics are on.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// TaskPanicked counts a panic recovered in the background task named task.
func (m *Metrics) TaskPanicked(task string) { m.taskPanics.WithLabelValues(task).Inc() }

// LimitHit counts a peer hitting the request-plane limit named limit.
func (m *Metrics) LimitHit(limit string) { m.limitHits.WithLabelValues(limit).Inc() }

// ServerStalled counts a server called over transport that stopped
// answering while calls waited on it.
func (m *Metrics) ServerStalled(transport string) { m.stalls.WithLabelValues(transport).Inc() }

// Endpoint is the metrics of one served endpoint, bound once so that the
// request path does no label lookups.
type Endpoint struct {
	OK, Error, Panic, Cancelled, Refused prometheus.Counter
	// InFlight is loom_requests_in_flight: an integer, so that a request
	// changes it with one atomic add each way (a prometheus.Gauge's Inc
	// and Dec are compare-and-swap loops on a float).
	InFlight                atomic.Int64
	Duration, FirstResponse prometheus.Observer
	Items                   prometheus.Counter
	BytesIn, BytesOut       prometheus.Counter
}

// Endpoint returns the bound metrics of ns/component/endpoint.
func (m *Metrics) Endpoint(ns, component, endpoint string) *Endpoint {
	key := [3]string{ns, component, endpoint}
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.endpoints[key]; ok {
		return e
	}
	l := prometheus.Labels{"namespace": ns, "component": component, "endpoint": endpoint}
	code := func(c string) prometheus.Counter {
		return m.requests.WithLabelValues(ns, component, endpoint, c)
	}
	e := &Endpoint{
		OK: code(CodeOK), Error: code(CodeError), Panic: code(CodePanic),
		Cancelled: code(CodeCancelled), Refused: code(CodeRefused),
		Duration:      m.duration.With(l),
		FirstResponse: m.firstResponse.With(l),
		Items:         m.items.With(l),
		BytesIn:       m.bytes.WithLabelValues(ns, component, endpoint, "in"),
		BytesOut:      m.bytes.WithLabelValues(ns, component, endpoint, "out"),
	}
	m.endpoints[key] = e
	return e
}

// inFlightCollector reports every endpoint's InFlight.
type inFlightCollector struct{ m *Metrics }

func (c inFlightCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.m.inFlight }

func (c inFlightCollector) Collect(ch chan<- prometheus.Metric) {
	type series struct {
		key [3]string
		n   int64
	}
	c.m.mu.Lock()
	all := make([]series, 0, len(c.m.endpoints))
	for key, e := range c.m.endpoints {
		all = append(all, series{key, e.InFlight.Load()})
	}
	c.m.mu.Unlock()
	for _, s := range all {
		ch <- prometheus.MustNewConstMetric(c.m.inFlight, prometheus.GaugeValue, float64(s.n), s.key[0], s.key[1], s.key[2])
	}
}

// ClientEndpoint is the metrics of the calls made to one endpoint.
type ClientEndpoint struct {
	OK, Error, Cancelled, NoInstances prometheus.Counter
	Retries                           prometheus.Counter
}

// Client returns the bound client-side metrics of ns/component/endpoint.
func (m *Metrics) Client(ns, component, endpoint string) *ClientEndpoint {
	key := [3]string{ns, component, endpoint}
	m.mu.Lock()
	defer m.mu.Unlock()
	if c, ok := m.clients[key]; ok {
		return c
	}
	code := func(c string) prometheus.Counter {
		return m.clientCalls.WithLabelValues(ns, component, endpoint, c)
	}
	c := &ClientEndpoint{
		OK: code(CodeOK), Error: code(CodeError), Cancelled: code(CodeCancelled), NoInstances: code(CodeNoInstances),
		Retries: m.clientRetries.WithLabelValues(ns, component, endpoint),
	}
	m.clients[key] = c
	return c
}
