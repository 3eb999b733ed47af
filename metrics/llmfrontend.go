package metrics

import (
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// LLMModel is the metrics of one model served through an LLM frontend
// (package llm/frontend), bound once so that the request path does no label
// lookups. Every field is safe for concurrent use.
type LLMModel struct {
	// InFlight is the number of requests being answered now.
	InFlight prometheus.Gauge
	// TTFT observes the time from a request's arrival to its first output
	// token written to the client, in seconds.
	TTFT prometheus.Observer
	// ITL observes the time between consecutive output tokens, in seconds.
	ITL prometheus.Observer
	// Duration observes the time from arrival to the end of the response.
	Duration prometheus.Observer
	// Migrations counts requests re-issued to another worker after theirs
	// failed mid-stream.
	Migrations prometheus.Counter
	// InputTokens, OutputTokens and CachedTokens count prompt tokens,
	// generated tokens, and prompt tokens the workers found in their KV
	// caches.
	InputTokens, OutputTokens, CachedTokens prometheus.Counter

	requests *prometheus.CounterVec
	model    string
	mu       sync.Mutex
	byStatus map[int]prometheus.Counter
}

// Request counts a finished request with its HTTP status.
func (m *LLMModel) Request(status int) { m.status(status).Inc() }

// status returns the counter of the requests answered with status, making
// its series (at 0) if it has none yet.
func (m *LLMModel) status(status int) prometheus.Counter {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, ok := m.byStatus[status]
	if !ok {
		c = m.requests.WithLabelValues(m.model, strconv.Itoa(status))
		m.byStatus[status] = c
	}
	return c
}

type llmVecs struct {
	requests                          *prometheus.CounterVec
	inFlight                          *prometheus.GaugeVec
	ttft, itl, duration               *prometheus.HistogramVec
	migrations, input, output, cached *prometheus.CounterVec
	mu                                sync.Mutex
	models                            map[string]*LLMModel
}

// llmSet is a Metrics' LLM frontend vectors, registered on first use.
type llmSet struct {
	once sync.Once
	v    *llmVecs
}

func newLLMVecs(reg *prometheus.Registry) *llmVecs {
	model := []string{"model"}
	counter := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, model)
	}
	hist := func(name, help string, buckets []float64) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, model)
	}
	v := &llmVecs{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loom_llm_requests_total",
			Help: "Requests the LLM frontend answered, by model and HTTP status (a stream that failed after its 200 header counts with the status its error has).",
		}, []string{"model", "status"}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "loom_llm_requests_in_flight",
			Help: "Requests the LLM frontend is answering now, by model.",
		}, model),
		ttft: hist("loom_llm_time_to_first_token_seconds", "Time from a request's arrival to its first output token, by model.",
			prometheus.ExponentialBuckets(0.001, 2, 16)),
		itl: hist("loom_llm_inter_token_latency_seconds", "Time between consecutive output tokens of a request, by model.",
			prometheus.ExponentialBuckets(0.0001, 2, 16)),
		duration: hist("loom_llm_request_duration_seconds", "Time from a request's arrival to the end of its response, by model.",
			prometheus.ExponentialBuckets(0.001, 2, 18)),
		migrations: counter("loom_llm_migrations_total", "Requests re-issued to another worker after their worker failed or left mid-request, by model."),
		input:      counter("loom_llm_input_tokens_total", "Prompt tokens of requests sent to workers, by model."),
		output:     counter("loom_llm_output_tokens_total", "Tokens generated for clients, by model."),
		cached:     counter("loom_llm_cached_tokens_total", "Prompt tokens the workers found in their KV caches, by model."),
		models:     make(map[string]*LLMModel),
	}
	reg.MustRegister(v.requests, v.inFlight, v.ttft, v.itl, v.duration, v.migrations, v.input, v.output, v.cached)
	return v
}

// LLMModel returns the bound LLM frontend metrics of model, registering the
// loom_llm_* metrics on first use. Calls with the same name return the
// same value. Every series of model starts at 0 here, and
// loom_llm_requests_total has one for each of statuses (the statuses the
// frontend answers with): a series born at its first count, at 1, would
// hide that count from increase() and rate(), which take a series' first
// sample as its start.
func (m *Metrics) LLMModel(model string, statuses ...int) *LLMModel {
	set := &m.llm
	set.once.Do(func() { set.v = newLLMVecs(m.reg) })
	v := set.v
	v.mu.Lock()
	defer v.mu.Unlock()
	lm, ok := v.models[model]
	if !ok {
		lm = v.newModel(model)
		v.models[model] = lm
	}
	for _, s := range statuses {
		lm.status(s)
	}
	return lm
}

func (v *llmVecs) newModel(model string) *LLMModel {
	return &LLMModel{
		InFlight:     v.inFlight.WithLabelValues(model),
		TTFT:         v.ttft.WithLabelValues(model),
		ITL:          v.itl.WithLabelValues(model),
		Duration:     v.duration.WithLabelValues(model),
		Migrations:   v.migrations.WithLabelValues(model),
		InputTokens:  v.input.WithLabelValues(model),
		OutputTokens: v.output.WithLabelValues(model),
		CachedTokens: v.cached.WithLabelValues(model),
		requests:     v.requests,
		model:        model,
		byStatus:     make(map[int]prometheus.Counter),
	}
}
