package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/loomrt/loom/llm/bench"
)

func testBenchOptions() benchOptions {
	o := benchOptions{
		workload: "prefix", requests: 30, concurrency: 4, timeout: 30_000_000_000, runs: 1, progress: "off", seed: 1,
		groups: 2, prefixTokens: 64, userTokens: 8, outputTokens: 8, turns: 2, inputTokens: 32, traceSpeed: 1,
		churnKill: 1, churnStart: 1, routers: "round_robin",
		mock: mockSpeed{plane: "tcp"},
	}
	return o
}

func TestLLMBenchMeasuresAFrontendByURL(t *testing.T) {
	ctx := context.Background()
	st, err := startStack(ctx, 2, "round_robin", mockSpeed{plane: "tcp"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	o := testBenchOptions()
	o.url, o.json = st.URL(), true
	var out bytes.Buffer
	if err := runBench(ctx, &out, io.Discard, o, true); err != nil {
		t.Fatalf("%v\n%s", err, &out)
	}
	var r struct {
		Requests, Completed, Unfinished int
		Errors                          map[string]int
		KvHitRate                       float64               `json:"kv_hit_rate"`
		TTFT                            struct{ P50 float64 } `json:"ttft_ms"`
		URL                             string
		Front                           *float64       `json:"frontend_cpu_ms_per_request"`
		PerWorker                       map[string]int `json:"per_worker"`
	}
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("%v\n%s", err, &out)
	}
	if r.Requests != 30 || r.Completed != 30 || len(r.Errors) != 0 || r.Unfinished != 0 || r.TTFT.P50 <= 0 || r.URL != st.URL() {
		t.Errorf("against %s: %s", st.URL(), &out)
	}
	// The frontend reports cached prompt tokens in usage: the second
	// turns and the second conversations of each group hit.
	if r.KvHitRate <= 0 {
		t.Errorf("kv_hit_rate %g, want the shared prefixes to show: %s", r.KvHitRate, &out)
	}
	if r.Front != nil {
		t.Errorf("a --url run reported the frontend's CPU, which it cannot see: %s", &out)
	}
	// Loom's frontend does not say which worker served a request.
	if len(r.PerWorker) != 0 {
		t.Errorf("per_worker %v against a URL, want it empty (docs/llm.md says so)", r.PerWorker)
	}

	// A trace replays at its timestamps, all its records by default.
	trace := filepath.Join(t.TempDir(), "trace.jsonl")
	lines := ""
	for i := range 6 {
		lines += fmt.Sprintf("{\"timestamp\": %d, \"input_length\": 80, \"output_length\": 4, \"prefix_group\": %d}\n", i*10, i%2)
	}
	if err := os.WriteFile(trace, []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	to := o
	to.workload, to.concurrency = "trace:"+trace, 0
	out.Reset()
	if err := runBench(ctx, &out, io.Discard, to, false); err != nil {
		t.Fatalf("%v\n%s", err, &out)
	}
	if err := json.Unmarshal(out.Bytes(), &r); err != nil || r.Requests != 6 || r.Completed != 6 || r.KvHitRate <= 0 {
		t.Errorf("trace replay: %v %s", err, &out)
	}

	// The human summary and a comparison need nothing more.
	o.json = false
	out.Reset()
	if err := runBench(ctx, &out, io.Discard, o, true); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"requests      30 sent, 30 completed, 0 errors, 0 unfinished", "TTFT ms", "KV hit rate"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, &out)
		}
	}
}

func TestLLMBenchComparesRoutersInProcess(t *testing.T) {
	o := testBenchOptions()
	o.workers, o.routers, o.runs, o.requests, o.json = 2, "kv,round_robin", 2, 12, true
	o.cpuProfile = filepath.Join(t.TempDir(), "cpu.pprof")
	var out bytes.Buffer
	if err := runBench(context.Background(), &out, io.Discard, o, true); err != nil {
		t.Fatalf("%v\n%s", err, &out)
	}
	if fi, err := os.Stat(o.cpuProfile); err != nil || fi.Size() == 0 {
		t.Errorf("--cpuprofile left %v, %v; want the run's profile", fi, err)
	}
	var r struct {
		Routers  []string
		ByRouter map[string]struct {
			Requests, Completed int
			Router              string
			Runs                []struct {
				Samples *int64 `json:"cpu_profile_samples"`
			}
			Samples  *int64              `json:"cpu_profile_samples"`
			Front    *float64            `json:"frontend_cpu_ms_per_request"`
			KvEvents *bench.KvEventStats `json:"kv_events"`
		} `json:"by_router"`
	}
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("%v\n%s", err, &out)
	}
	if strings.Join(r.Routers, ",") != "kv,round_robin" || len(r.ByRouter) != 2 {
		t.Fatalf("routers %v, by_router %d entries:\n%s", r.Routers, len(r.ByRouter), &out)
	}
	for name, rep := range r.ByRouter {
		if rep.Router != name || rep.Requests != 24 || rep.Completed != 24 || len(rep.Runs) != 2 {
			t.Errorf("%s: %+v, want 2 runs of 12 completed requests", name, rep)
			continue
		}
		// 12 short requests may take less CPU than the profile's 10 ms
		// period: the frontend's CPU is there when every run's profile
		// took a sample, and absent, not 0, otherwise.
		sampled := true
		for _, run := range rep.Runs {
			if run.Samples == nil {
				t.Fatalf("%s: a run without cpu_profile_samples:\n%s", name, &out)
			}
			sampled = sampled && *run.Samples > 0
		}
		if rep.Samples == nil || *rep.Samples != *rep.Runs[0].Samples+*rep.Runs[1].Samples {
			t.Errorf("%s: cpu_profile_samples %v, want the runs' total", name, rep.Samples)
		}
		if sampled != (rep.Front != nil) {
			t.Errorf("%s: runs' samples %v %v, frontend CPU %v: want a figure exactly when every run has samples", name, *rep.Runs[0].Samples, *rep.Runs[1].Samples, rep.Front)
		}
	}
	// The kv router reports the workers' kv_events: each run's 2 workers
	// had their block sets fetched as they appeared, nothing was dropped.
	if ev := r.ByRouter["kv"].KvEvents; ev == nil || ev.Received == 0 || ev.Dropped != 0 || ev.Gaps != 0 || ev.Resyncs < 4 {
		t.Errorf("kv: kv_events %+v, want events received over 2 runs, none dropped, no gap, a block set fetched per worker and run", ev)
	}
	if ev := r.ByRouter["round_robin"].KvEvents; ev != nil {
		t.Errorf("round_robin reports kv_events %+v; it reads none", ev)
	}
	var sum bytes.Buffer
	printSummary(&sum, benchReport{Result: &bench.Result{KvEvents: &bench.KvEventStats{Received: 120, Dropped: 3, Gaps: 2, Resyncs: 10}}, Router: "kv", Workers: 2}, 1)
	if want := "kv_events     120 received, 3 dropped, 2 gaps, 10 block sets fetched"; !strings.Contains(sum.String(), want) {
		t.Errorf("summary lacks %q:\n%s", want, &sum)
	}
}

func TestLLMBenchSaysWhenTheProfileTookNoSample(t *testing.T) {
	res := &bench.Result{Completed: 20}
	setCPU(res, 8*time.Millisecond, nil, 0)
	if res.ProcessCPUMsPerRequest != 0.4 || res.CPUProfileSamples == nil || *res.CPUProfileSamples != 0 || res.FrontendCPUMsPerRequest != nil || res.CPUByPart != nil {
		t.Fatalf("no sample: process %g, samples %v, frontend %v, by part %v; want 0.4, 0, no frontend, no split",
			res.ProcessCPUMsPerRequest, res.CPUProfileSamples, res.FrontendCPUMsPerRequest, res.CPUByPart)
	}
	rep := benchReport{Result: res, Router: "kv", Workers: 2}
	var sum bytes.Buffer
	printSummary(&sum, rep, 1)
	if want := "CPU ms/req    frontend unknown: the CPU profile took no sample; run more requests (whole process 0.400)"; !strings.Contains(sum.String(), want) {
		t.Errorf("summary lacks %q:\n%s", want, &sum)
	}
	js, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(js), `"cpu_profile_samples":0`) || strings.Contains(string(js), "frontend_cpu") || strings.Contains(string(js), "by_part") {
		t.Errorf("JSON %s: want cpu_profile_samples 0 and no frontend CPU or split", js)
	}

	// With samples, the unlabelled CPU is shared out as the labelled is:
	// frontend 30 + other 20 × 30/60 = 40 ms over 20 requests.
	sampled := &bench.Result{Completed: 20}
	setCPU(sampled, 80*time.Millisecond, map[string]time.Duration{
		bench.PartFrontend: 30 * time.Millisecond, bench.PartWorkers: 30 * time.Millisecond, bench.PartOther: 20 * time.Millisecond}, 8)
	if f := sampled.FrontendCPUMsPerRequest; f == nil || *f != 2 || sampled.CPUByPart[bench.PartOther] != 1 {
		t.Errorf("8 samples: frontend %v, by part %v; want 2 ms and other 1 ms a request", f, sampled.CPUByPart)
	}

	// Over runs, one without a sample leaves the medians without a
	// frontend figure, and the summary says which runs.
	sum.Reset()
	printSummary(&sum, benchReport{Result: bench.Medians([]*bench.Result{sampled, res}), Router: "kv", Workers: 2}, 2)
	if want := "frontend unknown: the CPU profile took no sample in 1 of 2 runs; run more requests"; !strings.Contains(sum.String(), want) {
		t.Errorf("summary lacks %q:\n%s", want, &sum)
	}
}

func TestLLMBenchComparisonTable(t *testing.T) {
	f := 1.0
	mk := func(router string, ttft, rps float64) benchReport {
		return benchReport{Router: router, Result: &bench.Result{TTFT: bench.Percentiles{P50: ttft, P99: 2 * ttft}, RequestsPerS: rps, FrontendCPUMsPerRequest: &f}}
	}
	var out bytes.Buffer
	printComparison(&out, []benchReport{mk("kv", 10, 60), mk("round_robin", 40, 50)}, 3)
	for _, want := range []string{"medians of 3 runs", "| kv | 10.0 | 20.0 |", "| round_robin | 40.0 | 80.0 |", "kv vs round_robin: TTFT p50 0.25x, throughput 1.20x"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("comparison lacks %q:\n%s", want, &out)
		}
	}
}

func TestLLMBenchRefusesBadFlagsNamingThem(t *testing.T) {
	trace := filepath.Join(t.TempDir(), "bad.jsonl")
	if err := os.WriteFile(trace, []byte(`{"timestamp": 0, "input_length": 0, "output_length": 1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		set  func(*benchOptions)
		want string
	}{
		{"neither url nor workers", func(o *benchOptions) {}, "give --url URL"},
		{"both url and workers", func(o *benchOptions) { o.url, o.workers = "http://x", 2 }, "not both"},
		{"an unknown router", func(o *benchOptions) { o.workers, o.routers = 2, "kv,fastest" }, `unknown router "fastest"`},
		{"routers against a url", func(o *benchOptions) { o.url, o.routers = "http://x", "kv,random" }, "compares routers in-process"},
		{"churn against a url", func(o *benchOptions) { o.url, o.churn = "http://x", true }, "--churn kills and starts in-process"},
		{"an unknown workload", func(o *benchOptions) { o.url, o.workload = "http://x", "zipf" }, `unknown workload "zipf"`},
		{"a bad trace", func(o *benchOptions) { o.url, o.workload = "http://x", "trace:"+trace }, "bad.jsonl line 1: input_length 0"},
		{"both loops", func(o *benchOptions) { o.url, o.rate = "http://x", 5 }, "choose closed loop or open loop"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := testBenchOptions()
			o.routers = "kv"
			tc.set(&o)
			err := runBench(context.Background(), io.Discard, io.Discard, o, true)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("runBench = %v, want an error with %q", err, tc.want)
			}
		})
	}
}
