package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/loomrt/loom/llm/bench"
	"github.com/loomrt/loom/llm/kvrouter"
)

func init() { llmCommands = append(llmCommands, newLLMBench) }

type benchOptions struct {
	url         string
	model       string
	workers     int
	routers     string
	workload    string
	requests    int
	concurrency int
	rate        float64
	duration    time.Duration
	timeout     time.Duration
	runs        int
	churn       bool
	json        bool
	progress    string
	seed        uint64

	groups, prefixTokens, userTokens, outputTokens, turns, inputTokens int
	traceSpeed                                                         float64

	mock mockSpeed

	churnKill, churnStart int
	churnEvery            time.Duration

	cpuProfile string
}

// mockSpeed is how fast the in-process mock workers go.
type mockSpeed struct {
	prefillPerToken time.Duration
	decodeStep      time.Duration
	maxBatch        int
	kvBlocks        int
	// maxInFlight is the frontend's load threshold per worker (429 past
	// it); 0 is none.
	maxInFlight int
	// plane is how the frontend reaches the workers: tcp, nats, or local
	// (direct calls in the process).
	plane string
}

func newLLMBench() *cobra.Command {
	o := benchOptions{
		workload: "prefix", requests: 1000, timeout: 2 * time.Minute, runs: 1, progress: "auto",
		groups: 8, prefixTokens: 1024, userTokens: 64, outputTokens: 64, turns: 3, inputTokens: 512,
		traceSpeed: 1, churnKill: 4, churnStart: 4, routers: "kv",
	}
	o.mock.plane = "tcp"
	cmd := &cobra.Command{
		Use:   "bench (--url URL | --workers N) [flags]",
		Short: "Measure an OpenAI-compatible server: TTFT, ITL, throughput, KV hit rate",
		Long: `Send streaming chat completions to an OpenAI-compatible server and report
time to first token (TTFT), inter-token latency (ITL), end-to-end latency,
throughput, the KV cache hit rate the server reports in usage, errors by
kind and requests that did not end.

--url measures any server. --workers N starts Loom's frontend and N mock
workers in this process (embedded NATS) and measures them with the router
--router names; a comma-separated list (--router kv,round_robin) runs each
in turn on fresh workers and prints a comparison. --runs K repeats every
run K times and reports the medians.

Workloads: prefix (--groups conversations groups each sharing a system
prompt of --prefix-tokens, unique user turns of --user-tokens, --turns
turns resending their history), unique (--input-tokens each, no sharing),
trace:FILE (JSON lines {"timestamp": ms, "input_length": n,
"output_length": n, "prefix_group": g}, replayed at their timestamps
unless --concurrency or --rate is given).

--churn (in-process) kills --churn-kill workers abruptly and starts
--churn-start new ones, one every --churn-every, alternating, while the
run goes. docs/llm.md describes the output.`,
		Example: `  loom llm bench --workers 8 --router kv,round_robin,least_loaded --concurrency 24 --runs 3
  loom llm bench --url http://127.0.0.1:8000 --workload unique --rate 50 --requests 2000 --json
  loom llm bench --workers 16 --churn --duration 60s --concurrency 64`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signalContext(context.Background(), cmd.ErrOrStderr())
			defer stop()
			err := runBench(ctx, cmd.OutOrStdout(), cmd.ErrOrStderr(), o, cmd.Flags().Changed("requests"))
			var ue *usageError
			if errors.As(err, &ue) && ue.cmd == nil {
				ue.cmd = cmd // runBench refused the flags: show this usage line
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.url, "url", "", "base URL of an OpenAI-compatible server to measure (http://host:port)")
	f.IntVar(&o.workers, "workers", 0, "start the frontend and this many mock workers in this process and measure them")
	f.StringVar(&o.routers, "router", o.routers, "in-process: kv, kv_approx, round_robin, random or least_loaded; a comma-separated list compares them")
	f.StringVar(&o.model, "model", "", "model to ask for (default: the first GET /v1/models lists)")
	f.StringVar(&o.workload, "workload", o.workload, "prefix, unique or trace:FILE")
	f.IntVar(&o.requests, "requests", o.requests, "requests per run (with --duration alone: no limit but time; a trace: all its records)")
	f.IntVar(&o.concurrency, "concurrency", 0, "closed loop: keep this many requests in flight (default 32 unless --rate or a trace)")
	f.Float64Var(&o.rate, "rate", 0, "open loop: start this many requests per second (exponential gaps)")
	f.DurationVar(&o.duration, "duration", 0, "stop sending new requests after this long")
	f.DurationVar(&o.timeout, "timeout", o.timeout, "a request that has not ended after this long is cancelled and counted unfinished")
	f.IntVar(&o.runs, "runs", o.runs, "repeat each run this many times and report medians")
	f.BoolVar(&o.churn, "churn", false, "in-process: kill and start mock workers during the run")
	f.BoolVar(&o.json, "json", false, "print one JSON object instead of the summary")
	f.StringVar(&o.progress, "progress", o.progress, "auto (a bar on a terminal, lines otherwise), bar, lines or off")
	f.Uint64Var(&o.seed, "seed", 1, "seed of the prompts and arrival times")
	f.IntVar(&o.groups, "groups", o.groups, "prefix workload: groups sharing a system prompt")
	f.IntVar(&o.prefixTokens, "prefix-tokens", o.prefixTokens, "prefix and trace workloads: tokens of a group's system prompt")
	f.IntVar(&o.userTokens, "user-tokens", o.userTokens, "prefix workload: tokens of each user turn")
	f.IntVar(&o.outputTokens, "output-tokens", o.outputTokens, "prefix and unique workloads: tokens per answer (max_tokens)")
	f.IntVar(&o.turns, "turns", o.turns, "prefix workload: turns per conversation")
	f.IntVar(&o.inputTokens, "input-tokens", o.inputTokens, "unique workload: prompt tokens")
	f.Float64Var(&o.traceSpeed, "trace-speed", o.traceSpeed, "trace workload: replay this many times faster")
	f.DurationVar(&o.mock.prefillPerToken, "mock-prefill-per-token", 0, "in-process: mock prefill time per uncached prompt token (default: the mock's)")
	f.DurationVar(&o.mock.decodeStep, "mock-decode-step", 0, "in-process: mock decode time per step of the batch (default: the mock's)")
	f.IntVar(&o.mock.maxBatch, "mock-max-batch", 0, "in-process: mock worker's largest decode batch (default: the mock's)")
	f.IntVar(&o.mock.kvBlocks, "mock-kv-blocks", 0, "in-process: mock worker's KV cache size in blocks (default: the mock's)")
	f.StringVar(&o.mock.plane, "plane", o.mock.plane, "in-process: how the frontend reaches the workers: tcp (as across processes), nats, or local (direct calls)")
	f.IntVar(&o.mock.maxInFlight, "max-in-flight-per-worker", 0, "in-process: the frontend answers 429 when every worker has this many requests in flight (0: no limit)")
	f.StringVar(&o.cpuProfile, "cpuprofile", "", "in-process: write the run's CPU profile here, goroutines labelled loom.part=frontend|workers|generator|nats (the last run's, with --runs)")
	f.IntVar(&o.churnKill, "churn-kill", o.churnKill, "churn: workers to kill during the run")
	f.IntVar(&o.churnStart, "churn-start", o.churnStart, "churn: workers to start during the run")
	f.DurationVar(&o.churnEvery, "churn-every", 0, "churn: time between kills and starts (default: --duration spread over them, else 5s)")
	return cmd
}

// benchReport is one configuration's result as --json prints it.
type benchReport struct {
	*bench.Result
	Router      string       `json:"router,omitempty"`
	Workload    string       `json:"workload"`
	Workers     int          `json:"workers,omitempty"`
	URL         string       `json:"url,omitempty"`
	Concurrency int          `json:"concurrency,omitempty"`
	Rate        float64      `json:"rate,omitempty"`
	Churn       *churnReport `json:"churn,omitempty"`
}

// churnReport says what churn did during a run.
type churnReport struct {
	Killed  int `json:"killed"`
	Started int `json:"started"`
}

// badBenchFlags is the usage error of flags runBench refuses; the
// command fills in its usage line.
func badBenchFlags(format string, a ...any) error {
	return &usageError{err: fmt.Errorf(format, a...)}
}

func runBench(ctx context.Context, out, errOut io.Writer, o benchOptions, requestsSet bool) error {
	if (o.url == "") == (o.workers == 0) {
		return badBenchFlags("llm bench: give --url URL (a server to measure) or --workers N (start frontend and mock workers here), not both or neither")
	}
	if o.workers < 0 || o.runs < 1 {
		return badBenchFlags("llm bench: --workers %d and --runs %d must be positive", o.workers, o.runs)
	}
	switch {
	case o.requests < 0:
		return badBenchFlags("llm bench: --requests %d: want 0 or more", o.requests)
	case o.concurrency < 0:
		return badBenchFlags("llm bench: --concurrency %d: want 0 or more", o.concurrency)
	case o.rate < 0:
		return badBenchFlags("llm bench: --rate %g: want 0 or more", o.rate)
	case o.duration < 0:
		return badBenchFlags("llm bench: --duration %s: want 0 or more", o.duration)
	case o.timeout <= 0:
		return badBenchFlags("llm bench: --timeout %s: want more than 0", o.timeout)
	case !slices.Contains([]string{"auto", "bar", "lines", "off"}, o.progress):
		return badBenchFlags("llm bench: --progress %q: want auto, bar, lines or off", o.progress)
	case o.workers > 0 && !slices.Contains([]string{"tcp", "nats", "local"}, o.mock.plane):
		return badBenchFlags("llm bench: --plane %q: want tcp, nats or local", o.mock.plane)
	}
	if o.concurrency > 0 && o.rate > 0 {
		return badBenchFlags("llm bench: --concurrency %d and --rate %g: choose closed loop or open loop", o.concurrency, o.rate)
	}
	if o.duration > 0 && !requestsSet {
		o.requests = 0
	}
	routers := strings.Split(o.routers, ",")
	if o.url != "" && len(routers) > 1 {
		return badBenchFlags("llm bench: --router %s compares routers in-process (--workers); the server at --url routes as it is configured", o.routers)
	}
	if o.churn && o.workers == 0 {
		return badBenchFlags("llm bench: --churn kills and starts in-process mock workers: use it with --workers")
	}
	for _, r := range routers {
		if !slices.Contains(routerNames, r) {
			return badBenchFlags("llm bench: unknown router %q (want %s)", r, strings.Join(routerNames, ", "))
		}
	}
	var trace []bench.TraceRecord
	if file, ok := strings.CutPrefix(o.workload, "trace:"); ok {
		var err error
		if trace, err = bench.LoadTrace(file); err != nil {
			return err
		}
		if !requestsSet {
			o.requests = len(trace)
		}
	} else if o.workload != "prefix" && o.workload != "unique" {
		return badBenchFlags("llm bench: unknown workload %q (want prefix, unique or trace:FILE)", o.workload)
	}
	if o.concurrency == 0 && o.rate == 0 && trace == nil {
		o.concurrency = 32
	}
	prog := newProgress(errOut, o.progress)
	var reports []benchReport
	for _, router := range routers {
		var runs []*bench.Result
		var churn *churnReport
		for run := range o.runs {
			label := router
			if o.url != "" {
				label = o.url
			}
			if o.runs > 1 {
				label = fmt.Sprintf("%s run %d/%d", label, run+1, o.runs)
			}
			wl, err := makeWorkload(o, trace, o.seed+uint64(run))
			if err != nil {
				return err
			}
			res, ch, err := benchOnce(ctx, o, router, wl, prog.reporter(label))
			prog.end()
			if err != nil {
				return err
			}
			runs = append(runs, res)
			if ch != nil {
				if churn == nil {
					churn = &churnReport{}
				}
				churn.Killed += ch.Killed
				churn.Started += ch.Started
			}
			if ctx.Err() != nil {
				break
			}
		}
		rep := benchReport{Result: bench.Medians(runs), Workload: o.workload, Concurrency: o.concurrency, Rate: o.rate, Churn: churn}
		if o.workers > 0 {
			rep.Router, rep.Workers = router, o.workers
		} else {
			rep.URL = o.url
		}
		reports = append(reports, rep)
		if ctx.Err() != nil {
			break
		}
	}
	if o.json {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if len(reports) == 1 {
			return enc.Encode(reports[0])
		}
		by := map[string]benchReport{}
		for _, r := range reports {
			by[r.Router] = r
		}
		return enc.Encode(map[string]any{"routers": routers, "by_router": by})
	}
	for _, r := range reports {
		printSummary(out, r, o.runs)
	}
	if len(reports) > 1 {
		printComparison(out, reports, o.runs)
	}
	return ctx.Err()
}

var routerNames = kvrouter.Names

func makeWorkload(o benchOptions, trace []bench.TraceRecord, seed uint64) (bench.Workload, error) {
	switch {
	case trace != nil:
		return bench.Trace(trace, bench.TraceConfig{PrefixTokens: o.prefixTokens, Speed: o.traceSpeed, Seed: seed}), nil
	case o.workload == "unique":
		return bench.Unique(bench.UniqueConfig{InputTokens: o.inputTokens, OutputTokens: o.outputTokens, Seed: seed})
	default:
		return bench.Prefix(bench.PrefixConfig{Groups: o.groups, PrefixTokens: o.prefixTokens, UserTokens: o.userTokens,
			OutputTokens: o.outputTokens, Turns: o.turns, Seed: seed})
	}
}

// benchOnce runs one measurement, starting the in-process stack first if
// asked to.
func benchOnce(ctx context.Context, o benchOptions, router string, wl bench.Workload, progress func(bench.Progress)) (*bench.Result, *churnReport, error) {
	cfg := bench.Config{
		URL: o.url, Model: o.model, Workload: wl, Requests: o.requests, Duration: o.duration,
		Concurrency: o.concurrency, Rate: o.rate, RequestTimeout: o.timeout, Seed: o.seed,
		Progress: progress, ProgressEvery: 200 * time.Millisecond,
	}
	if o.workers == 0 {
		res, err := bench.Run(ctx, cfg)
		return res, nil, err
	}
	st, err := startStack(ctx, o.workers, router, o.mock)
	if err != nil {
		return nil, nil, err
	}
	defer st.Close()
	cfg.URL = st.URL()
	if err := st.StartMeasuring(o.cpuProfile); err != nil {
		return nil, nil, err
	}
	var churn *churnReport
	var wg sync.WaitGroup
	churnCtx, stopChurn := context.WithCancel(ctx)
	defer stopChurn()
	if o.churn {
		churn = &churnReport{}
		every := o.churnEvery
		if every <= 0 {
			every = 5 * time.Second
			if o.duration > 0 {
				every = o.duration / time.Duration(o.churnKill+o.churnStart+1)
			}
		}
		wg.Go(func() { runChurn(churnCtx, st, o.churnKill, o.churnStart, every, churn) })
	}
	var res *bench.Result
	bench.Part(ctx, bench.PartGenerator, func(ctx context.Context) { res, err = bench.Run(ctx, cfg) })
	stopChurn()
	wg.Wait()
	if err != nil {
		return nil, nil, err
	}
	st.Report(res)
	return res, churn, nil
}

// runChurn alternately kills a worker and starts one, every `every`,
// until it has done kill kills and start starts or ctx ends.
func runChurn(ctx context.Context, st *stack, kill, start int, every time.Duration, rep *churnReport) {
	t := time.NewTicker(every)
	defer t.Stop()
	for rep.Killed < kill || rep.Started < start {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if rep.Killed < kill && (rep.Killed <= rep.Started || rep.Started >= start) {
			if st.KillOne() {
				rep.Killed++
			}
		} else if err := st.StartOne(ctx); err == nil {
			rep.Started++
		}
	}
}

// progress draws a bar on a terminal, or prints a line every few seconds.
type progress struct {
	w     io.Writer
	mode  string // bar, lines, off
	last  time.Time
	drawn bool
}

func newProgress(w io.Writer, mode string) *progress {
	if mode == "auto" {
		mode = "lines"
		if isTerminal(w) {
			mode = "bar"
		}
	}
	return &progress{w: w, mode: mode}
}

func (p *progress) reporter(label string) func(bench.Progress) {
	if p.mode == "off" {
		return nil
	}
	return func(s bench.Progress) {
		rate := 0.0
		if s.Elapsed > 0 {
			rate = float64(s.Done) / s.Elapsed.Seconds()
		}
		total := "?"
		frac := 0.0
		if s.Total > 0 {
			total = fmt.Sprint(s.Total)
			frac = float64(s.Done) / float64(s.Total)
		}
		stats := fmt.Sprintf("%d/%s done  %.0f req/s  %d errors  %d in flight  %s", s.Done, total, rate, s.Errors, s.InFlight, s.Elapsed.Truncate(time.Second))
		switch p.mode {
		case "bar":
			const width = 30
			n := int(frac * width)
			fmt.Fprintf(p.w, "\r\033[K%s [%s%s] %s", label, strings.Repeat("#", n), strings.Repeat("-", width-n), stats)
			p.drawn = true
		default:
			if time.Since(p.last) >= 5*time.Second || (s.Total > 0 && s.Done == s.Total) {
				p.last = time.Now()
				fmt.Fprintf(p.w, "%s: %s\n", label, stats)
			}
		}
	}
}

// end finishes a bar's line.
func (p *progress) end() {
	if p.drawn {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
	p.last = time.Time{}
}

func printSummary(w io.Writer, r benchReport, runs int) {
	target := r.URL
	if r.Workers > 0 {
		target = fmt.Sprintf("%s in process, router %s", count(r.Workers, "mock worker"), r.Router)
	}
	load := fmt.Sprintf("concurrency %d", r.Concurrency)
	if r.Rate > 0 {
		load = fmt.Sprintf("rate %g/s", r.Rate)
	} else if r.Concurrency == 0 {
		load = "trace timestamps"
	}
	fmt.Fprintf(w, "loom llm bench: %s; workload %s, %s", target, r.Workload, load)
	if runs > 1 {
		fmt.Fprintf(w, "; medians of %d runs (counts are totals)", runs)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "  requests      %d sent, %d completed, %d errors%s, %d unfinished\n", r.Requests, r.Completed, sum(r.Errors), kinds(r.Errors), r.Unfinished)
	pl := func(name string, p bench.Percentiles) {
		fmt.Fprintf(w, "  %-13s p50 %.1f  p90 %.1f  p99 %.1f  max %.1f\n", name, p.P50, p.P90, p.P99, p.Max)
	}
	pl("TTFT ms", r.TTFT)
	pl("ITL ms", r.ITL)
	pl("E2E ms", r.E2E)
	fmt.Fprintf(w, "  throughput    %.1f req/s, %.0f output tokens/s over %.1f s\n", r.RequestsPerS, r.OutputTokensPerS, r.DurationS)
	fmt.Fprintf(w, "  KV hit rate   %.3f (mean prompt %.0f tokens, output %.0f)\n", r.KvHitRate, r.PromptTokensMean, r.OutputTokensMean)
	if r.ShedFraction > 0 {
		fmt.Fprintf(w, "  shed          %.3f of requests (429/529)\n", r.ShedFraction)
	}
	if len(r.PerWorker) > 0 {
		counts := slices.Sorted(maps.Values(r.PerWorker))
		fmt.Fprintf(w, "  per worker    %d workers: min %d, median %d, max %d requests\n", len(counts), counts[0], counts[len(counts)/2], counts[len(counts)-1])
	}
	if rs := r.KvEvents; rs != nil {
		fmt.Fprintf(w, "  kv_events     %d received, %d dropped, %d gaps, %d block sets fetched\n", rs.Received, rs.Dropped, rs.Gaps, rs.Resyncs)
	}
	if r.Churn != nil {
		fmt.Fprintf(w, "  churn         %d workers killed, %d started\n", r.Churn.Killed, r.Churn.Started)
	}
	if r.Migrated.Requests > 0 || r.Churn != nil {
		fmt.Fprintf(w, "  migrated      %d requests, TTFT p99 %.1f ms, E2E p99 %.1f ms\n", r.Migrated.Requests, r.Migrated.TTFT.P99, r.Migrated.E2E.P99)
	}
	switch {
	case r.FrontendCPUMsPerRequest != nil:
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(r.CPUByPart)) {
			parts = append(parts, fmt.Sprintf("%s %.3f", k, r.CPUByPart[k]))
		}
		fmt.Fprintf(w, "  CPU ms/req    frontend %.3f (whole process %.3f: %s)\n", *r.FrontendCPUMsPerRequest, r.ProcessCPUMsPerRequest, strings.Join(parts, ", "))
	case r.CPUProfileSamples != nil:
		// In-process, but the profile that splits the process's CPU
		// between its parts saw too little to do it.
		why := "the CPU profile took no sample"
		if len(r.Runs) > 0 {
			why = fmt.Sprintf("%s in %d of %d runs", why, unsampledRuns(r.Runs), len(r.Runs))
		}
		fmt.Fprintf(w, "  CPU ms/req    frontend unknown: %s; run more requests (whole process %.3f)\n", why, r.ProcessCPUMsPerRequest)
	default:
		fmt.Fprintf(w, "  CPU           %.3f ms/request for this process (the generator)\n", r.ProcessCPUMsPerRequest)
	}
	for k, v := range r.ErrorSamples {
		fmt.Fprintf(w, "  error %s: %s\n", k, v)
	}
}

// unsampledRuns counts the runs whose CPU profile took no sample.
func unsampledRuns(runs []*bench.Result) int {
	n := 0
	for _, r := range runs {
		if r.CPUProfileSamples != nil && *r.CPUProfileSamples == 0 {
			n++
		}
	}
	return n
}

func printComparison(w io.Writer, reports []benchReport, runs int) {
	fmt.Fprintln(w)
	if runs > 1 {
		fmt.Fprintf(w, "medians of %d runs\n", runs)
	}
	fmt.Fprintln(w, "| router | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | E2E p99 ms | req/s | output tok/s | KV hit rate | errors | unfinished |")
	fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	for _, r := range reports {
		fmt.Fprintf(w, "| %s | %.1f | %.1f | %.2f | %.1f | %.2f | %.0f | %.3f | %d | %d |\n", r.Router, r.TTFT.P50, r.TTFT.P99, r.ITL.P50, r.E2E.P99, r.RequestsPerS, r.OutputTokensPerS, r.KvHitRate, sum(r.Errors), r.Unfinished)
	}
	base := reports[0]
	for _, r := range reports[1:] {
		if r.TTFT.P50 > 0 && r.RequestsPerS > 0 {
			fmt.Fprintf(w, "%s vs %s: TTFT p50 %.2fx, throughput %.2fx\n", base.Router, r.Router, base.TTFT.P50/r.TTFT.P50, base.RequestsPerS/r.RequestsPerS)
		}
	}
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func kinds(m map[string]int) string {
	if len(m) == 0 {
		return ""
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s: %d", k, m[k]))
	}
	return " (" + strings.Join(parts, ", ") + ")"
}
