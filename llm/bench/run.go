package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Config says what a run sends where.
type Config struct {
	// URL is the server's base URL (http://host:port, or the
	// http://host:port/v1 OpenAI clients take); requests go to
	// http://host:port/v1/chat/completions.
	URL string
	// Model names the model to ask for; empty takes the first that
	// GET /v1/models lists.
	Model    string
	Workload Workload
	// Requests is how many requests to send (a trace may end sooner); 0
	// with a Duration means no limit but time.
	Requests int
	// Duration, if set, stops sending new requests once this long has
	// passed since the first; requests in flight then finish.
	Duration time.Duration
	// Concurrency keeps this many requests in flight (closed loop). Rate,
	// if set instead, starts requests at this many per second with
	// exponential gaps (open loop). With neither, a workload whose items
	// carry arrival times (a trace) is replayed at those times.
	Concurrency int
	Rate        float64
	// RequestTimeout bounds each request; one that has not ended by then
	// is cancelled and counted as unfinished. 0 means 2 minutes.
	RequestTimeout time.Duration
	// Progress, if set, is called about every ProgressEvery (default 1s)
	// and once at the end.
	Progress      func(Progress)
	ProgressEvery time.Duration
	// Seed drives the open-loop arrival gaps.
	Seed uint64
	// HTTPClient overrides the client; by default one with a connection
	// pool sized to the concurrency.
	HTTPClient *http.Client
}

// Progress is a run's state while it goes.
type Progress struct {
	Elapsed  time.Duration
	Sent     int
	Done     int
	Errors   int
	InFlight int
	// Total is the requests to send, 0 when only a duration bounds them.
	Total int
}

// Result is a run's report; its JSON form is `loom llm bench --json`.
type Result struct {
	// Requests counts requests sent; Completed those that ended with
	// [DONE]; Errors those that failed, by kind; Unfinished those that
	// had no ending within the request bound (or when the run was
	// stopped).
	Requests   int            `json:"requests"`
	Completed  int            `json:"completed"`
	Errors     map[string]int `json:"errors"`
	Unfinished int            `json:"unfinished"`
	// TTFT, ITL and E2E are over completed requests, in milliseconds.
	// ITL pools every gap between consecutive content chunks.
	TTFT Percentiles `json:"ttft_ms"`
	ITL  Percentiles `json:"itl_ms"`
	E2E  Percentiles `json:"e2e_ms"`
	// DurationS is the run's wall time, from the first request sent to
	// the last ending.
	DurationS        float64 `json:"duration_s"`
	RequestsPerS     float64 `json:"requests_per_s"`
	OutputTokensPerS float64 `json:"output_tokens_per_s"`
	PromptTokensMean float64 `json:"prompt_tokens_mean"`
	OutputTokensMean float64 `json:"output_tokens_mean"`
	// KvHitRate is the sum of usage.prompt_tokens_details.cached_tokens
	// over the sum of usage.prompt_tokens, over completed requests.
	KvHitRate float64 `json:"kv_hit_rate"`
	// ShedFraction is the fraction of requests refused with HTTP 429 or
	// 529.
	ShedFraction float64 `json:"shed_fraction"`
	// PerWorker counts completed requests by serving worker, when the
	// server says which (see Outcome.Worker), else it is empty.
	PerWorker map[string]int `json:"per_worker"`
	// Migrated summarises the completed requests that the server moved
	// to another worker mid-way, when it says so.
	Migrated MigratedStats `json:"migrated"`
	// ProcessCPUMsPerRequest is the CPU time (user + system, from
	// getrusage) the whole process spent during the run, per completed
	// request. Against a URL it is the generator's own cost.
	ProcessCPUMsPerRequest float64 `json:"process_cpu_ms_per_request"`
	// CPUProfileSamples is set in-process (`loom llm bench --workers`):
	// the CPU profile samples FrontendCPUMsPerRequest and CPUByPart come
	// from. When it is 0 the run was too short for the profile to see
	// anything, and those two are unset rather than zero.
	CPUProfileSamples *int64 `json:"cpu_profile_samples,omitempty"`
	// FrontendCPUMsPerRequest is set in-process when the profile took a
	// sample: the frontend's share of the process's CPU time per
	// completed request; docs/llm.md says how it is computed.
	FrontendCPUMsPerRequest *float64 `json:"frontend_cpu_ms_per_request,omitempty"`
	// CPUByPart splits ProcessCPUMsPerRequest between the parts of an
	// in-process run (see CPUSplit), when the profile took a sample.
	CPUByPart map[string]float64 `json:"cpu_ms_per_request_by_part,omitempty"`
	// KvEvents is set in-process with the kv router: what it saw of the
	// workers' kv_events.
	KvEvents *KvEventStats `json:"kv_events,omitempty"`
	// Runs holds each run's result when this one is their medians.
	Runs []*Result `json:"runs,omitempty"`
	// ErrorSamples holds a few error messages, one per kind.
	ErrorSamples map[string]string `json:"error_samples,omitempty"`
}

// KvEventStats counts what a kv router saw of the workers' kv_events
// during a run (see kvrouter.Stats).
type KvEventStats struct {
	// Received counts the events its subscription received; Dropped
	// those dropped before it could read them.
	Received uint64 `json:"received"`
	Dropped  uint64 `json:"dropped"`
	// Gaps counts gaps in the workers' event sequences, and Resyncs the
	// block sets fetched to replace a worker's view (one per worker as it
	// appears, one per gap).
	Gaps    uint64 `json:"gaps"`
	Resyncs uint64 `json:"resyncs"`
}

// MigratedStats describes migrated requests.
type MigratedStats struct {
	Requests int         `json:"requests"`
	TTFT     Percentiles `json:"ttft_ms"`
	E2E      Percentiles `json:"e2e_ms"`
}

// ErrConfig is wrapped by the error of a run whose configuration
// cannot work.
var ErrConfig = errors.New("bench: bad config")

// Run sends cfg.Requests requests and reports on them. It returns when
// every request has ended or been cancelled at its bound; cancelling ctx
// stops the run early, cancelling the requests in flight (counted as
// unfinished).
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.URL == "" {
		return nil, fmt.Errorf("%w: no server URL", ErrConfig)
	}
	if cfg.Workload == nil {
		return nil, fmt.Errorf("%w: no workload", ErrConfig)
	}
	if cfg.Requests == 0 && cfg.Duration > 0 {
		cfg.Requests = math.MaxInt32
	}
	if cfg.Requests < 1 {
		return nil, fmt.Errorf("%w: requests = %d, want at least 1 (or a duration)", ErrConfig, cfg.Requests)
	}
	if cfg.Concurrency > 0 && cfg.Rate > 0 {
		return nil, fmt.Errorf("%w: both a concurrency (%d) and a rate (%g/s): choose closed loop or open loop", ErrConfig, cfg.Concurrency, cfg.Rate)
	}
	if cfg.Concurrency < 0 || cfg.Rate < 0 || math.IsInf(cfg.Rate, 0) || math.IsNaN(cfg.Rate) {
		return nil, fmt.Errorf("%w: concurrency %d / rate %g: want positive values", ErrConfig, cfg.Concurrency, cfg.Rate)
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 2 * time.Minute
	}
	if cfg.ProgressEvery <= 0 {
		cfg.ProgressEvery = time.Second
	}
	// The base URL, with or without the /v1 that OpenAI clients take.
	base := strings.TrimSuffix(strings.TrimRight(cfg.URL, "/"), "/v1")
	hc := cfg.HTTPClient
	if hc == nil {
		conns := max(cfg.Concurrency, 64)
		if cfg.Rate > 0 {
			conns = max(conns, int(cfg.Rate*4))
		}
		tr := newTransport(conns)
		defer tr.CloseIdleConnections()
		hc = &http.Client{Transport: tr}
	}
	model := cfg.Model
	if model == "" {
		ids, err := listModels(ctx, hc, base)
		if err != nil {
			return nil, err
		}
		if len(ids) == 0 {
			return nil, fmt.Errorf("bench: %s/v1/models lists no model (no worker registered yet?)", base)
		}
		model = ids[0]
	}
	r := &runner{cfg: cfg, c: &client{http: hc, url: base + "/v1/chat/completions", model: model}}
	return r.run(ctx)
}

type runner struct {
	cfg Config
	c   *client

	sent, done, errs, inflight atomic.Int64

	mu       sync.Mutex
	outcomes []Outcome
}

func (r *runner) run(ctx context.Context) (*Result, error) {
	cpu0 := ProcessCPU()
	start := time.Now()
	var wg sync.WaitGroup
	progDone := make(chan struct{})
	progStopped := make(chan struct{})
	go func() {
		defer close(progStopped)
		if r.cfg.Progress == nil {
			return
		}
		t := time.NewTicker(r.cfg.ProgressEvery)
		defer t.Stop()
		for {
			select {
			case <-progDone:
				return
			case <-t.C:
				r.cfg.Progress(r.progress(start))
			}
		}
	}()
	switch {
	case r.cfg.Concurrency > 0:
		for range r.cfg.Concurrency {
			wg.Go(func() {
				for ctx.Err() == nil && !r.pastDuration(start) && r.sent.Add(1) <= int64(r.cfg.Requests) {
					it := r.cfg.Workload.Next()
					if it == nil {
						r.sent.Add(-1)
						return
					}
					r.one(ctx, it)
				}
			})
		}
		wg.Wait()
		r.sent.Store(min(r.sent.Load(), int64(r.cfg.Requests)))
	default:
		r.openLoop(ctx, start, &wg)
		wg.Wait()
	}
	end := time.Now()
	close(progDone)
	<-progStopped
	if r.cfg.Progress != nil {
		r.cfg.Progress(r.progress(start))
	}
	res := summarize(r.outcomes, int(r.sent.Load()), end.Sub(start))
	if res.Completed > 0 {
		res.ProcessCPUMsPerRequest = ms(ProcessCPU()-cpu0) / float64(res.Completed)
	}
	return res, nil
}

// openLoop starts requests at their arrival times without waiting for
// earlier ones.
func (r *runner) openLoop(ctx context.Context, start time.Time, wg *sync.WaitGroup) {
	rng := rand.New(rand.NewPCG(r.cfg.Seed, 4))
	var at time.Duration
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for i := 0; i < r.cfg.Requests; i++ {
		it := r.cfg.Workload.Next()
		if it == nil {
			return
		}
		switch {
		case r.cfg.Rate > 0:
			if i > 0 {
				at += time.Duration(rng.ExpFloat64() / r.cfg.Rate * float64(time.Second))
			}
		case it.At >= 0:
			at = it.At
		}
		if d := time.Until(start.Add(at)); d > 0 {
			timer.Reset(d)
			select {
			case <-ctx.Done():
				return
			case <-timer.C:
			}
		}
		if ctx.Err() != nil || r.pastDuration(start) {
			return
		}
		r.sent.Add(1)
		wg.Go(func() { r.one(ctx, it) })
	}
}

func (r *runner) pastDuration(start time.Time) bool {
	return r.cfg.Duration > 0 && time.Since(start) >= r.cfg.Duration
}

func (r *runner) one(ctx context.Context, it *Item) {
	r.inflight.Add(1)
	rctx, cancel := context.WithTimeout(ctx, r.cfg.RequestTimeout)
	o := r.c.do(rctx, it.Messages, it.MaxTokens)
	cancel()
	r.inflight.Add(-1)
	if o.ErrKind != "" {
		r.errs.Add(1)
	}
	r.done.Add(1)
	r.cfg.Workload.Done(it, &o)
	o.Text = "" // the conversation holds it; the report does not need it
	r.mu.Lock()
	r.outcomes = append(r.outcomes, o)
	r.mu.Unlock()
}

func (r *runner) progress(start time.Time) Progress {
	total := r.cfg.Requests
	if total == math.MaxInt32 {
		total = 0
	}
	return Progress{
		Elapsed:  time.Since(start),
		Sent:     int(min(r.sent.Load(), int64(r.cfg.Requests))),
		Done:     int(r.done.Load()),
		Errors:   int(r.errs.Load()),
		InFlight: int(r.inflight.Load()),
		Total:    total,
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// summarize turns outcomes into a Result.
func summarize(outcomes []Outcome, sent int, wall time.Duration) *Result {
	res := &Result{
		Requests:     sent,
		Errors:       map[string]int{},
		PerWorker:    map[string]int{},
		ErrorSamples: map[string]string{},
	}
	var ttft, itl, e2e, mttft, me2e []float64
	var prompt, cached, output int
	shed := 0
	for i := range outcomes {
		o := &outcomes[i]
		switch o.ErrKind {
		case "":
		case ErrKindTimeout, ErrKindCancelled:
			res.Unfinished++
			continue
		default:
			res.Errors[o.ErrKind]++
			if _, ok := res.ErrorSamples[o.ErrKind]; !ok && o.Err != nil {
				res.ErrorSamples[o.ErrKind] = o.Err.Error()
			}
			if o.ErrKind == ErrKindShed429 || o.ErrKind == ErrKindShed529 {
				shed++
			}
			continue
		}
		res.Completed++
		ttft = append(ttft, ms(o.TTFT))
		e2e = append(e2e, ms(o.E2E))
		for _, g := range o.ITL {
			itl = append(itl, ms(g))
		}
		prompt += o.PromptTokens
		cached += o.CachedTokens
		output += o.OutputTokens
		if o.Worker != "" {
			res.PerWorker[o.Worker]++
		}
		if o.Migrations > 0 {
			mttft = append(mttft, ms(o.TTFT))
			me2e = append(me2e, ms(o.E2E))
		}
	}
	// Unfinished requests never reached an outcome if the run was
	// stopped before they were sent; those sent are all in outcomes.
	res.Unfinished += sent - len(outcomes)
	res.TTFT, res.ITL, res.E2E = Summarize(ttft), Summarize(itl), Summarize(e2e)
	res.Migrated = MigratedStats{Requests: len(mttft), TTFT: Summarize(mttft), E2E: Summarize(me2e)}
	res.DurationS = wall.Seconds()
	if s := wall.Seconds(); s > 0 {
		res.RequestsPerS = float64(res.Completed) / s
		res.OutputTokensPerS = float64(output) / s
	}
	if res.Completed > 0 {
		res.PromptTokensMean = float64(prompt) / float64(res.Completed)
		res.OutputTokensMean = float64(output) / float64(res.Completed)
	}
	if prompt > 0 {
		res.KvHitRate = float64(cached) / float64(prompt)
	}
	if sent > 0 {
		res.ShedFraction = float64(shed) / float64(sent)
	}
	return res
}
