package bench

import (
	"context"
	"os"
	"os/exec"
	"regexp"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestMain fails the run if a benchmark or test leaves goroutines behind:
// every server and client is closed after its sub-benchmark.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestBenchmarks runs every sub-benchmark for three iterations, in a child
// process (this test binary) so that the benchmarks run exactly as `go
// test -bench` runs them, with their own checks of every response.
func TestBenchmarks(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0],
		"-test.run=^$", "-test.bench=.", "-test.benchtime=3x", "-test.count=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("benchmarks failed: %v\n%s", err, out)
	}
	for _, want := range []struct{ name, unit string }{
		{"Unary/rawtcp", "ns/op"},
		{"Unary/loom", "ns/op"},
		{"Unary/grpc", "ns/op"},
		{"Unary/yamux", "ns/op"},
		{"Unary/nats", "ns/op"},
		{"Stream/rawtcp", "items/s"},
		{"Stream/rawtcp_fresh", "items/s"},
		{"Stream/loom", "items/s"},
		{"Stream/loom_reused", "items/s"},
		{"Stream/grpc", "items/s"},
		{"Stream/nats", "items/s"},
		{"Parallel/rawtcp", "calls/s"},
		{"Parallel/loom", "calls/s"},
		{"Parallel/grpc", "calls/s"},
		{"Parallel/nats", "calls/s"},
		{"IdleStreams/loom", "B/stream"},
		{"UnaryTracing/none", "ns/op"},
		{"UnaryTracing/off", "ns/op"},
		{"UnaryTracing/on", "ns/op"},
		{"UnaryTracingInterleaved", "%off-vs-none"},
	} {
		if want.name == "IdleStreams/loom" && raceEnabled {
			continue
		}
		line := regexp.MustCompile(`(?m)^Benchmark` + regexp.QuoteMeta(want.name) + `(-\d+)?\s+3\s.*\s` + regexp.QuoteMeta(want.unit) + `\b`)
		if !line.Match(out) {
			t.Errorf("no result for Benchmark%s in %s", want.name, want.unit)
		}
	}
	if t.Failed() {
		t.Logf("benchmark output:\n%s", out)
	}
}
