package main

import (
	"os/exec"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/loomrt/loom/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, testutil.LeakOptions()...) }

func TestPrefillDemoPrefillsEveryRequestDespiteACrash(t *testing.T) {
	cmd := exec.Command("go", "run", ".", "demo", "-n", "30")
	cmd.Env = append(cmd.Environ(), "LOOM_LOG_LEVEL=warn", "NATS_SERVER=", "LOOM_NATS_URL=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go run ./examples/prefill: %v\n%s", err, out)
	}
	for _, want := range []string{
		"handed 30 prefill requests",
		"without acknowledging it (a crash)",
		"came back (delivery 2)",
		"prefilled 30 of 30 requests; 1 redelivered after a worker dropped it; 0 left in prefill_queue, 0 dead letters",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
