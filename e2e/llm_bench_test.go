package e2e

import (
	"encoding/json"
	"math"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// benchJSON is what the checks read of `loom llm bench --json`.
type benchJSON struct {
	Requests   *int               `json:"requests"`
	Completed  int                `json:"completed"`
	Errors     map[string]int     `json:"errors"`
	Unfinished *int               `json:"unfinished"`
	TTFT       *pcts              `json:"ttft_ms"`
	ITL        *pcts              `json:"itl_ms"`
	E2E        *pcts              `json:"e2e_ms"`
	ReqPerS    *float64           `json:"requests_per_s"`
	TokPerS    *float64           `json:"output_tokens_per_s"`
	KvHitRate  *float64           `json:"kv_hit_rate"`
	PerWorker  map[string]int     `json:"per_worker"`
	Samples    *int64             `json:"cpu_profile_samples"`
	FrontCPU   *float64           `json:"frontend_cpu_ms_per_request"`
	ProcCPU    float64            `json:"process_cpu_ms_per_request"`
	ByPart     map[string]float64 `json:"cpu_ms_per_request_by_part"`
	Router     string             `json:"router"`
	Workers    int                `json:"workers"`
}

type pcts struct {
	P50 *float64 `json:"p50"`
	P90 *float64 `json:"p90"`
	P99 *float64 `json:"p99"`
}

func (p *pcts) ordered() bool {
	return p != nil && p.P50 != nil && p.P90 != nil && p.P99 != nil && *p.P50 > 0 && *p.P50 <= *p.P90 && *p.P90 <= *p.P99
}

func TestLLMBenchInProcessReportsEveryField(t *testing.T) {
	cmd := exec.Command(filepath.Join(bin, "loom"), "llm", "bench", "--workers", "2", "--requests", "50", "--json",
		"--concurrency", "8", "--prefix-tokens", "256", "--output-tokens", "16")
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.Output(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("loom llm bench did not finish 50 requests in 2 minutes")
	}
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("loom llm bench: %v\n%s\n%s", err, out, stderr)
	}
	var r benchJSON
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("output is not one JSON object: %v\n%s", err, out)
	}
	if r.Requests == nil || *r.Requests != 50 || r.Completed != 50 || r.Errors == nil || len(r.Errors) != 0 || r.Unfinished == nil || *r.Unfinished != 0 {
		t.Errorf("requests/completed/errors/unfinished wrong, want 50, 50, {}, 0:\n%s", out)
	}
	for name, p := range map[string]*pcts{"ttft_ms": r.TTFT, "itl_ms": r.ITL, "e2e_ms": r.E2E} {
		if !p.ordered() {
			t.Errorf("%s is missing or not 0 < p50 <= p90 <= p99:\n%s", name, out)
		}
	}
	if r.TTFT.ordered() && r.E2E.ordered() && *r.E2E.P50 < *r.TTFT.P50 {
		t.Errorf("e2e p50 %g below ttft p50 %g", *r.E2E.P50, *r.TTFT.P50)
	}
	if r.ReqPerS == nil || *r.ReqPerS <= 0 || r.TokPerS == nil || *r.TokPerS < *r.ReqPerS {
		t.Errorf("throughputs missing or not positive (16 tokens a request):\n%s", out)
	}
	// Three turns per conversation over 8 groups: later turns and later
	// conversations of a group find their prefix cached.
	if r.KvHitRate == nil || *r.KvHitRate <= 0 || *r.KvHitRate > 1 {
		t.Errorf("kv_hit_rate missing or outside (0, 1]:\n%s", out)
	}
	total := 0
	for _, n := range r.PerWorker {
		total += n
	}
	if len(r.PerWorker) != 2 || total != 50 {
		t.Errorf("per_worker %v: want 2 workers serving 50 requests", r.PerWorker)
	}
	// 50 short requests cost a few tens of CPU milliseconds, a handful
	// of 100 Hz profile samples: the frontend may get none of them, but
	// the parts always add up to the process's CPU time. With no sample
	// at all there is no split, and the frontend's figure is absent
	// rather than 0.
	if r.ProcCPU <= 0 || r.Samples == nil {
		t.Errorf("process_cpu_ms_per_request %g, cpu_profile_samples %v: want a CPU time and a sample count:\n%s", r.ProcCPU, r.Samples, out)
	} else if *r.Samples == 0 {
		if r.FrontCPU != nil || len(r.ByPart) != 0 {
			t.Errorf("no profile sample, yet a frontend CPU or a split by part:\n%s", out)
		}
	} else {
		if r.FrontCPU == nil || *r.FrontCPU < 0 || *r.FrontCPU > r.ProcCPU {
			t.Errorf("frontend_cpu_ms_per_request missing or not in [0, process %g]:\n%s", r.ProcCPU, out)
		}
		parts := 0.0
		for _, v := range r.ByPart {
			parts += v
		}
		if math.Abs(parts-r.ProcCPU) > 0.01*r.ProcCPU {
			t.Errorf("cpu_ms_per_request_by_part %v adds up to %g, not the process's %g", r.ByPart, parts, r.ProcCPU)
		}
	}
	if r.Router != "kv" || r.Workers != 2 {
		t.Errorf("router %q workers %d, want kv and 2", r.Router, r.Workers)
	}
}
