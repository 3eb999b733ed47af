package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

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

// TestEnqueueAndWorkerAgainstAServerAsTheREADMESays runs the two modes
// README.md gives for use against loom up, as processes on one
// nats-server: `enqueue -n N` twice within the duplicate window stores N
// requests, not 2N (they are keyed by their ids), and `worker` prefills
// each once, then exits 0 on Ctrl-C.
func TestEnqueueAndWorkerAgainstAServerAsTheREADMESays(t *testing.T) {
	ns, err := embedded.StartNATS(embedded.NATSOptions{JetStream: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	bin := filepath.Join(t.TempDir(), "prefill")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	env := append(os.Environ(), "NATS_SERVER="+ns.ClientURL(), "LOOM_NATS_URL=", "LOOM_LOG_LEVEL=warn")
	const n = 7
	for range 2 {
		cmd := exec.Command(bin, "enqueue", "-n", strconv.Itoa(n))
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), fmt.Sprintf("handed %d prefill requests to prefill_queue", n)) {
			t.Fatalf("prefill enqueue -n %d: %v\n%s", n, err, out)
		}
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(t.Context(), "prefill_queue")
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != n {
		t.Fatalf("prefill_queue holds %d requests after two runs of enqueue -n %d; want %d", info.State.Msgs, n, n)
	}

	worker := exec.Command(bin, "worker")
	worker.Env = env
	var out testutil.SyncBuffer
	worker.Stdout, worker.Stderr = &out, &out
	if err := worker.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- worker.Wait() }()
	defer func() {
		if worker.ProcessState == nil {
			_ = worker.Process.Kill()
			<-exited
		}
	}()
	testutil.Eventually(t, 20*time.Second, fmt.Sprintf("the worker prefilled %d requests", n), func() bool {
		return strings.Count(out.String(), " done (") == n
	})
	_ = worker.Process.Signal(os.Interrupt)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("prefill worker after Ctrl-C: %v\n%s", err, out.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("prefill worker still running 20s after Ctrl-C\n%s", out.String())
	}
	for i := range n {
		if c := strings.Count(out.String(), fmt.Sprintf("req-%03d done", i)); c != 1 {
			t.Errorf("req-%03d prefilled %d times; want once\n%s", i, c, out.String())
		}
	}
}
