// Package metrics holds Loom's Prometheus metrics, on a registry Loom owns
// (not the global one), so a program can serve it, merge it or ignore it.
// Every metric is declared in this package, one file per plane: requests
// and background tasks here, work queues in queue.go, events in events.go,
// canary health checks in health.go, the LLM frontend's in llmfrontend.go,
// the KV router's in kvrouter.go.
// The counts every request updates are striped over cache lines
// (striped.go), so that requests on many cores do not all write the same
// words; a collector sums them at scrape time.
package metrics

import (
	"maps"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/loomrt/loom/internal/buildinfo"
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

// Request-plane limits, the "limit" label of
// loom_request_plane_limit_hits_total (package internal/mux names them).
const (
	LimitMaxConns          = "max_conns"
	LimitFrameTimeout      = "frame_timeout"
	LimitMaxQueuedPongs    = "max_queued_pongs"
	LimitMaxStreamsPerConn = "max_streams_per_conn"
	LimitIdleTimeout       = "idle_timeout"
)

// Request-plane transports, the "transport" label of
// loom_client_stalled_servers_total.
const (
	TransportTCP  = "tcp"
	TransportNATS = "nats"
)

// What a NATS server refused a connection, the "kind" label of
// loom_nats_permission_violations_total (package natsconn names them).
const (
	PermissionPublish   = "publish"   // a publish to a subject
	PermissionReply     = "reply"     // a publish with a reply subject
	PermissionSubscribe = "subscribe" // a subscription
	PermissionOther     = "other"     // a refusal in a form not recognised
)

// limits, transports and permissionKinds are the fixed label sets New
// makes a series of each, at 0, so that the first count is seen by
// increase() and rate().
var (
	limits          = []string{LimitMaxConns, LimitFrameTimeout, LimitMaxQueuedPongs, LimitMaxStreamsPerConn, LimitIdleTimeout}
	transports      = []string{TransportTCP, TransportNATS}
	permissionKinds = []string{PermissionPublish, PermissionReply, PermissionSubscribe, PermissionOther}
)

var endpointLabels = []string{"namespace", "component", "endpoint"}

// Metrics is one runtime's set of metrics.
type Metrics struct {
	reg *prometheus.Registry

	// The per-request families, striped (striped.go) and reported by
	// requestCollector.
	stripes                                     int
	requests, inFlight, duration, firstResponse *prometheus.Desc
	items, bytes, clientCalls, clientRetries    *prometheus.Desc

	taskPanics *prometheus.CounterVec
	limitHits  *prometheus.CounterVec
	stalls     *prometheus.CounterVec
	refusals   *prometheus.CounterVec

	events    eventMetrics    // the event plane's, registered on first use (events.go)
	health    healthMetrics   // canary health checks', registered on first use (health.go)
	kvRouters kvRouterMetrics // the KV routers', registered on first use (kvrouter.go)
	queues    queueSet        // the work queues' (queue.go)
	llm       llmSet          // the LLM frontend's (llmfrontend.go)

	mu        sync.Mutex
	endpoints map[[3]string]*Endpoint
	clients   map[[3]string]*ClientEndpoint
}

// New returns a fresh set of metrics on a new registry, with the Go and
// process collectors.
func New() *Metrics {
	m := &Metrics{
		reg:           prometheus.NewRegistry(),
		stripes:       stripes(),
		requests:      prometheus.NewDesc("loom_requests_total", "Requests served, by endpoint and outcome code.", append(endpointLabels, "code"), nil),
		inFlight:      prometheus.NewDesc("loom_requests_in_flight", "Requests being served now.", endpointLabels, nil),
		duration:      prometheus.NewDesc("loom_request_duration_seconds", "Time from a request's arrival to the end of its response stream.", endpointLabels, nil),
		firstResponse: prometheus.NewDesc("loom_request_first_response_seconds", "Time from a request's arrival to its first response item.", endpointLabels, nil),
		items:         prometheus.NewDesc("loom_response_items_total", "Response items streamed by handlers.", endpointLabels, nil),
		bytes:         prometheus.NewDesc("loom_request_bytes_total", "Encoded bytes of requests received (in) and response items sent (out) over the network.", append(endpointLabels, "direction"), nil),
		clientCalls:   prometheus.NewDesc("loom_client_requests_total", "Requests made by clients, by endpoint and outcome code.", append(endpointLabels, "code"), nil),
		clientRetries: prometheus.NewDesc("loom_client_retries_total", "Requests retried on another instance after a failure before their first response.", endpointLabels, nil),
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
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loom_nats_permission_violations_total",
			Help: "Operations a NATS server refused this process's connections for want of permission on their subject, by kind: publish, reply (a publish's reply subject), subscribe, other.",
		}, []string{"kind"}),
		endpoints: make(map[[3]string]*Endpoint),
		clients:   make(map[[3]string]*ClientEndpoint),
	}
	for _, l := range limits {
		m.limitHits.WithLabelValues(l)
	}
	for _, tr := range transports {
		m.stalls.WithLabelValues(tr)
	}
	for _, k := range permissionKinds {
		m.refusals.WithLabelValues(k)
	}
	b := buildinfo.Read()
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "loom_build_info",
		Help:        "Always 1; its labels say which build of Loom this process runs: version (Loom's module version), revision (the commit, for a binary built from a checkout of Loom itself), go_version.",
		ConstLabels: prometheus.Labels{"version": b.Version, "revision": b.Revision, "go_version": b.Go},
	})
	build.Set(1)
	m.reg.MustRegister(requestCollector{m}, m.taskPanics, m.limitHits, m.stalls, m.refusals, build,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry returns the registry the metrics are on.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// TaskStarted makes the series of the background task named task in
// loom_background_task_panics_total, at 0, when the task starts: a series
// born at its first panic, at 1, would hide that panic from increase()
// and rate(), which take a series' first sample as its start.
func (m *Metrics) TaskStarted(task string) { m.taskPanics.WithLabelValues(task) }

// TaskPanicked counts a panic recovered in the background task named task.
func (m *Metrics) TaskPanicked(task string) { m.taskPanics.WithLabelValues(task).Inc() }

// LimitHit counts a peer hitting the request-plane limit named limit.
func (m *Metrics) LimitHit(limit string) { m.limitHits.WithLabelValues(limit).Inc() }

// ServerStalled counts a server called over transport that stopped
// answering while calls waited on it.
func (m *Metrics) ServerStalled(transport string) { m.stalls.WithLabelValues(transport).Inc() }

// NATSPermissionViolation counts an operation a NATS server refused for
// want of permission, of kind PermissionPublish, PermissionReply,
// PermissionSubscribe or PermissionOther.
func (m *Metrics) NATSPermissionViolation(kind string) { m.refusals.WithLabelValues(kind).Inc() }

// Endpoint is the metrics of one served endpoint, bound once so that the
// request path does no label lookups. Every count is striped.
type Endpoint struct {
	OK, Error, Panic, Cancelled, Refused *Counter
	InFlight                             *Gauge
	Duration, FirstResponse              *Histogram
	Items                                *Counter
	BytesIn, BytesOut                    *Counter
}

// Endpoint returns the bound metrics of ns/component/endpoint.
func (m *Metrics) Endpoint(ns, component, endpoint string) *Endpoint {
	key := [3]string{ns, component, endpoint}
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.endpoints[key]; ok {
		return e
	}
	n := m.stripes
	e := &Endpoint{
		OK: newCounter(n), Error: newCounter(n), Panic: newCounter(n),
		Cancelled: newCounter(n), Refused: newCounter(n),
		InFlight: newGauge(n), Duration: newHistogram(n), FirstResponse: newHistogram(n),
		Items: newCounter(n), BytesIn: newCounter(n), BytesOut: newCounter(n),
	}
	m.endpoints[key] = e
	return e
}

// ClientEndpoint is the metrics of the calls made to one endpoint.
type ClientEndpoint struct {
	OK, Error, Cancelled, NoInstances *Counter
	Retries                           *Counter
}

// Client returns the bound client-side metrics of ns/component/endpoint.
func (m *Metrics) Client(ns, component, endpoint string) *ClientEndpoint {
	key := [3]string{ns, component, endpoint}
	m.mu.Lock()
	defer m.mu.Unlock()
	if c, ok := m.clients[key]; ok {
		return c
	}
	n := m.stripes
	c := &ClientEndpoint{
		OK: newCounter(n), Error: newCounter(n), Cancelled: newCounter(n), NoInstances: newCounter(n),
		Retries: newCounter(n),
	}
	m.clients[key] = c
	return c
}

// requestCollector reports the striped per-request families of every
// endpoint served and called.
type requestCollector struct{ m *Metrics }

func (c requestCollector) Describe(ch chan<- *prometheus.Desc) {
	m := c.m
	for _, d := range []*prometheus.Desc{m.requests, m.inFlight, m.duration, m.firstResponse, m.items, m.bytes, m.clientCalls, m.clientRetries} {
		ch <- d
	}
}

func (c requestCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.m
	m.mu.Lock()
	endpoints, clients := maps.Clone(m.endpoints), maps.Clone(m.clients)
	m.mu.Unlock()
	counter := func(d *prometheus.Desc, v *Counter, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v.Value()), labels...)
	}
	histogram := func(d *prometheus.Desc, h *Histogram, labels ...string) {
		count, sum, buckets := h.snapshot()
		ch <- prometheus.MustNewConstHistogram(d, count, sum, buckets, labels...)
	}
	for k, e := range endpoints {
		ns, comp, ep := k[0], k[1], k[2]
		for code, v := range map[string]*Counter{CodeOK: e.OK, CodeError: e.Error, CodePanic: e.Panic, CodeCancelled: e.Cancelled, CodeRefused: e.Refused} {
			counter(m.requests, v, ns, comp, ep, code)
		}
		ch <- prometheus.MustNewConstMetric(m.inFlight, prometheus.GaugeValue, float64(e.InFlight.Value()), ns, comp, ep)
		histogram(m.duration, e.Duration, ns, comp, ep)
		histogram(m.firstResponse, e.FirstResponse, ns, comp, ep)
		counter(m.items, e.Items, ns, comp, ep)
		counter(m.bytes, e.BytesIn, ns, comp, ep, "in")
		counter(m.bytes, e.BytesOut, ns, comp, ep, "out")
	}
	for k, cl := range clients {
		ns, comp, ep := k[0], k[1], k[2]
		for code, v := range map[string]*Counter{CodeOK: cl.OK, CodeError: cl.Error, CodeCancelled: cl.Cancelled, CodeNoInstances: cl.NoInstances} {
			counter(m.clientCalls, v, ns, comp, ep, code)
		}
		counter(m.clientRetries, cl.Retries, ns, comp, ep)
	}
}
