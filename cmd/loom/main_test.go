package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/loomrt/loom/cmd/loom/internal/demo"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/llm/bench"
)

var loomBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "loom-bin-")
	if err != nil {
		panic(err)
	}
	loomBin = filepath.Join(dir, "loom")
	out, err := exec.Command("go", "build", "-o", loomBin, ".").CombinedOutput()
	if err != nil {
		os.RemoveAll(dir)
		panic("building the loom binary for the tests failed: " + string(out))
	}
	// VerifyTestMain ends the process itself: a deferred RemoveAll would
	// never run, and every run would leave the binary in the temp dir.
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		os.RemoveAll(dir)
		os.Exit(code)
	}))
}

func TestDemoInProcessServesEveryRequestOnEveryInstance(t *testing.T) {
	for _, plane := range []string{"tcp", "nats", "local"} {
		t.Run("over "+plane, func(t *testing.T) {
			opts := demo.DefaultOptions()
			opts.Requests, opts.Progress, opts.Plane = 60, false, plane
			var out bytes.Buffer
			log := slog.New(slog.NewTextHandler(io.Discard, nil))
			if err := runDemo(context.Background(), &out, opts, log, nil, false); err != nil {
				t.Fatalf("%v\n%s", err, &out)
			}
			s := out.String()
			for _, want := range []string{"over " + plane, "requests        60 (0 failed)", "streamed items  1920", "p50", "p99", "JetStream true"} {
				if !strings.Contains(s, want) {
					t.Errorf("summary lacks %q:\n%s", want, s)
				}
			}
			// Round robin over 3 instances: 20 each.
			line := regexp.MustCompile(`per instance .*`).FindString(s)
			per := regexp.MustCompile(`[0-9a-f]+:(\d+)`).FindAllStringSubmatch(line, -1)
			if len(per) != 3 {
				t.Fatalf("per-instance line has %d entries, want 3:\n%s", len(per), s)
			}
			for _, m := range per {
				if m[1] != "20" {
					t.Errorf("an instance served %s requests, want 20:\n%s", m[1], s)
				}
			}
		})
	}
}

func TestLoomDemoBinaryExitsZero(t *testing.T) {
	cmd := exec.Command(loomBin, "demo", "--requests", "50")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("loom demo: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "requests        50 (0 failed)") {
		t.Fatalf("unexpected output:\n%s", out)
	}
	// Standard output is a pipe here: a progress line redrawn with \r
	// would leave every frame in it.
	if strings.Contains(string(out), "\r") {
		t.Errorf("loom demo wrote \\r to a pipe:\n%q", out)
	}
}

// TestTheREADMEDemoSummaryIsTheDemosOwn holds the summary README.md shows
// for loom demo to the one it prints: the same lines in the same order,
// each of the same shape once the measured figures, durations and
// instance ids are set aside.
func TestTheREADMEDemoSummaryIsTheDemosOwn(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, doc, ok := strings.Cut(string(readme), "```\nsummary\n")
	if !ok {
		t.Fatal("README.md shows no loom demo summary (a block starting \"summary\"); update this test with it")
	}
	doc, _, _ = strings.Cut(doc, "```")
	out, err := exec.Command(loomBin, "demo", "--requests", "50").Output()
	if err != nil {
		t.Fatalf("loom demo: %v\n%s", err, out)
	}
	_, got, ok := strings.Cut(string(out), "\nsummary\n")
	if !ok {
		t.Fatalf("loom demo printed no summary:\n%s", out)
	}
	duration := regexp.MustCompile(`[0-9]+(\.[0-9]+)?(ns|µs|ms|s)\b`)
	id := regexp.MustCompile(`\b[0-9a-f]{8,}\b`)
	number := regexp.MustCompile(`[0-9]+(\.[0-9]+)?`)
	shape := func(lines string) []string {
		var shapes []string
		for l := range strings.Lines(lines) {
			l = number.ReplaceAllString(id.ReplaceAllString(duration.ReplaceAllString(l, "D"), "ID"), "N")
			shapes = append(shapes, strings.TrimRight(l, "\n"))
		}
		return shapes
	}
	if want, have := shape(doc), shape(got); !slices.Equal(want, have) {
		t.Errorf("README.md's loom demo summary, figures set aside:\n%s\nthe demo's:\n%s\nupdate README.md with a summary the demo prints",
			strings.Join(want, "\n"), strings.Join(have, "\n"))
	}
}

// TestTheLLMUpOutputTheDocsShowIsItsOwn holds what README.md and
// docs/llm.md show `loom llm up --workers 4` print to what it prints,
// line for line, the port and the embedded server's address set aside.
func TestTheLLMUpOutputTheDocsShowIsItsOwn(t *testing.T) {
	const command = "go run ./cmd/loom llm up --workers 4\n"
	shown := map[string][]string{}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if _, after, ok := strings.Cut(string(readme), "\n"+command); ok {
		for l := range strings.Lines(after) {
			l, ok := strings.CutPrefix(l, "# ")
			if !ok {
				break
			}
			shown["README.md"] = append(shown["README.md"], strings.TrimSuffix(l, "\n"))
		}
	}
	guide, err := os.ReadFile("../../docs/llm.md")
	if err != nil {
		t.Fatal(err)
	}
	if _, after, ok := strings.Cut(string(guide), "\n$ "+command); ok {
		for l := range strings.Lines(after) {
			if strings.HasPrefix(l, "$ ") || strings.HasPrefix(l, "```") {
				break
			}
			shown["docs/llm.md"] = append(shown["docs/llm.md"], strings.TrimSuffix(l, "\n"))
		}
	}
	for _, doc := range []string{"README.md", "docs/llm.md"} {
		if len(shown[doc]) == 0 {
			t.Fatalf("%s no longer shows the output of %q as this test reads it; update the test", doc, strings.TrimSpace(command))
		}
	}

	p := startLoom(t, []string{"LOOM_LOG_LEVEL=warn"}, "llm", "up", "--workers", "4", "--port", "0")
	p.waitStdout(`^OPENAI_BASE_URL=`)
	printed, _ := p.lines()
	nats := regexp.MustCompile(`nats://\S+`)
	port := regexp.MustCompile(`:[0-9]+\b`)
	shape := func(lines []string) []string {
		var shapes []string
		for _, l := range lines {
			shapes = append(shapes, port.ReplaceAllString(nats.ReplaceAllString(l, "nats://..."), ":PORT"))
		}
		return shapes
	}
	for doc, lines := range shown {
		if want, have := shape(lines), shape(printed); !slices.Equal(want, have) {
			t.Errorf("%s shows loom llm up --workers 4 printing, the port and NATS address set aside:\n%s\nit prints:\n%s",
				doc, strings.Join(want, "\n"), strings.Join(have, "\n"))
		}
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	p.exit()
}

// TestLLMCommandsCountWorkersInWords: one worker is "1 mock worker", one
// prefill worker "1 prefill worker", in loom llm up's first line and in
// loom llm bench's summary.
func TestLLMCommandsCountWorkersInWords(t *testing.T) {
	var sum bytes.Buffer
	printSummary(&sum, benchReport{Result: &bench.Result{}, Router: "kv", Workers: 1}, 1)
	if want := "loom llm bench: 1 mock worker in process, router kv;"; !strings.HasPrefix(sum.String(), want) {
		t.Errorf("loom llm bench --workers 1 summary:\n%s\nwant it to start %q", &sum, want)
	}

	p := startLoom(t, []string{"LOOM_LOG_LEVEL=warn"}, "llm", "up", "--workers", "1", "--remote-prefill", "--prefill-workers", "1", "--port", "0")
	first := p.waitStdout(`^loom llm up: .*`)[0]
	if want := "loom llm up: 1 mock worker of model mock-model and 1 prefill worker, router kv, "; !strings.HasPrefix(first, want) {
		t.Errorf("loom llm up --workers 1 --prefill-workers 1 printed\n%s\nwant it to start %q", first, want)
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	p.exit()
}

func TestLoomDemoJSONPrintsTheSummaryAsOneObject(t *testing.T) {
	cmd := exec.Command(loomBin, "demo", "--requests", "30", "--json")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("loom demo --json: %v\n%s", err, &stderr)
	}
	var r demo.Report
	dec := json.NewDecoder(&stdout)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		t.Fatalf("loom demo --json printed no JSON object: %v\n%s", err, stdout.String())
	}
	if dec.More() {
		t.Errorf("loom demo --json printed more than one value")
	}
	if r.Requests != 30 || r.Failed != 0 || r.StreamedItems != 30*demo.DefaultOptions().Tokens || !r.NATS.JetStream || r.LatencyP99MS < r.LatencyP50MS || r.LatencyP50MS <= 0 {
		t.Errorf("report: %+v", r)
	}
	total := 0
	for _, p := range r.PerInstance {
		if p.InstanceID == 0 {
			t.Errorf("an instance without its id: %+v", r.PerInstance)
		}
		total += p.Requests
	}
	if len(r.PerInstance) != demo.DefaultOptions().Instances || total != 30 {
		t.Errorf("per instance %+v; want %d instances serving 30 requests", r.PerInstance, demo.DefaultOptions().Instances)
	}
	if !strings.Contains(stderr.String(), "loom demo: ") {
		t.Errorf("the banner did not go to standard error: %q", &stderr)
	}
}

func TestLoomDemoServeStopsGracefullyOnSIGTERM(t *testing.T) {
	cmd := exec.Command(loomBin, "demo", "--serve", "--requests", "20")
	// At debug every runtime logs its start, each line naming its
	// instance once.
	cmd.Env = append(os.Environ(), "LOOM_LOG_LEVEL=debug")
	stdout, _ := cmd.StdoutPipe()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill() }()
	serving := make(chan struct{})
	go func() {
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			if strings.HasPrefix(s.Text(), "serving") {
				close(serving)
			}
		}
	}()
	select {
	case <-serving:
	case <-time.After(30 * time.Second):
		t.Fatalf("loom demo --serve never said it was serving; stderr:\n%s", &stderr)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit: %v; stderr:\n%s", err, &stderr)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("still running 20s after SIGTERM; stderr:\n%s", &stderr)
	}
	if !strings.Contains(stderr.String(), "shut down cleanly") {
		t.Errorf("stderr does not report a clean shutdown:\n%s", &stderr)
	}
	for line := range strings.Lines(stderr.String()) {
		if strings.Count(line, " instance=") > 1 {
			t.Errorf("a log line names more than one instance: %s", line)
		}
	}
}

// TestLoomDemoServeIgnoresTheEnvironmentsSystem runs loom demo --serve in
// a shell with loom up's lines set, as README.md has a reader do before
// watching the demo in the dashboard, and in one whose lines name servers
// that are gone: the demo is a system of its own (its embedded
// nats-server, its own discovery), so it must serve every request either
// way, and stop cleanly.
func TestLoomDemoServeIgnoresTheEnvironmentsSystem(t *testing.T) {
	ns, err := embedded.StartNATS(embedded.NATSOptions{JetStream: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	for _, tc := range []struct {
		name string
		env  []string
	}{
		{"loom up's natskv lines", []string{"NATS_SERVER=" + ns.ClientURL(), "LOOM_DISCOVERY=natskv", "LOOM_STATUS_PORT=-1"}},
		{"lines of servers that are gone", []string{"NATS_SERVER=nats://127.0.0.1:1", "LOOM_DISCOVERY=etcd", "ETCD_ENDPOINTS=http://127.0.0.1:1", "LOOM_STATUS_PORT=-1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startLoom(t, tc.env, "demo", "--serve", "--requests", "10", "--instances", "2", "--dashboard", "127.0.0.1:0")
			page := p.waitStdout(`^  dashboard on (http://\S+)`)[1]
			p.waitStdout(`^serving demo/backend/generate`)
			// The page shows the demo's system, and says which it is.
			resp, err := http.Get(page + "/api/state")
			if err != nil {
				t.Fatal(err)
			}
			var state struct {
				Discovery string            `json:"discovery"`
				Instances []json.RawMessage `json:"instances"`
			}
			err = json.NewDecoder(resp.Body).Decode(&state)
			resp.Body.Close()
			if err != nil || state.Discovery != "memory" || len(state.Instances) != 2 {
				t.Errorf("the dashboard's state: %+v, %v; want memory discovery and the 2 backends", state, err)
			}
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
			code := p.waitExit()
			out, errs := p.lines()
			if code != 0 || !slices.Contains(out, "  requests        10 (0 failed)") {
				t.Errorf("exit code %d; stdout %q; stderr %q\nwant 0 and every request served", code, out, errs)
			}
		})
	}
}

func TestLoomConfigPrintsValuesAndSources(t *testing.T) {
	cmd := exec.Command(loomBin, "config")
	cmd.Env = append(os.Environ(), "NATS_SERVER=nats://10.1.2.3:4222", "LOOM_SHUTDOWN_TIMEOUT=45s", "NATS_AUTH_TOKEN=hunter2")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`nats\.url\s+nats://10\.1\.2\.3:4222\s+env NATS_SERVER`),
		regexp.MustCompile(`shutdown\.timeout\s+45s\s+env LOOM_SHUTDOWN_TIMEOUT`),
		regexp.MustCompile(`nats\.token\s+\*\*\*\*\s+env NATS_AUTH_TOKEN`),
		regexp.MustCompile(`client\.router\s+round_robin\s+default`),
	} {
		if !want.Match(out) {
			t.Errorf("loom config output does not match %s:\n%s", want, out)
		}
	}
	if strings.Contains(string(out), "hunter2") {
		t.Error("loom config printed a secret")
	}
}

func TestLoomConfigJSONListsEveryKey(t *testing.T) {
	cmd := exec.Command(loomBin, "config", "--json")
	cmd.Env = append(os.Environ(), "LOOM_SHUTDOWN_TIMEOUT=45s", "NATS_AUTH_TOKEN=hunter2")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var got []map[string]string
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("loom config --json printed no JSON array: %v\n%s", err, out)
	}
	seen := map[string]map[string]string{}
	for _, s := range got {
		if len(s) != 3 {
			t.Errorf("an entry with fields other than key, value and source: %v", s)
		}
		seen[s["key"]] = s
	}
	if len(got) != len(config.Keys()) {
		t.Errorf("%d entries, want one per key (%d)", len(got), len(config.Keys()))
	}
	for key, want := range map[string][2]string{
		"shutdown.timeout": {"45s", "env LOOM_SHUTDOWN_TIMEOUT"},
		"nats.token":       {"****", "env NATS_AUTH_TOKEN"},
		"client.router":    {"round_robin", "default"},
	} {
		if s := seen[key]; s["value"] != want[0] || s["source"] != want[1] {
			t.Errorf("%s: %v, want value %q from %q", key, s, want[0], want[1])
		}
	}
	if strings.Contains(string(out), "hunter2") {
		t.Error("loom config --json printed a secret")
	}
}

func TestLoomConfigRejectsABadValueNamingIt(t *testing.T) {
	cmd := exec.Command(loomBin, "config")
	cmd.Env = append(os.Environ(), "LOOM_SHUTDOWN_TIMEOUT=5 parsecs")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("loom config with a bad value exited %v", err)
	}
	for _, want := range []string{"shutdown.timeout", "5 parsecs", "env LOOM_SHUTDOWN_TIMEOUT"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("error does not name %q:\n%s", want, out)
		}
	}
	// README.md shows this very command, its line and its status.
	if ee.ExitCode() != 1 {
		t.Errorf("loom config with a bad value exited %d; README.md says a failure exits 1", ee.ExitCode())
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, shown, ok := strings.Cut(string(readme), "$ LOOM_SHUTDOWN_TIMEOUT=\"5 parsecs\" loom config\n")
	if !ok {
		t.Fatal("README.md no longer shows LOOM_SHUTDOWN_TIMEOUT=\"5 parsecs\" loom config as this test reads it; update the test")
	}
	shown, _, _ = strings.Cut(shown, "\n")
	if got := strings.TrimSpace(string(out)); got != shown {
		t.Errorf("loom config with a bad value printed\n%s\nREADME.md shows\n%s", got, shown)
	}
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestUsageErrorsExitTwoWithTheUsageLine(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"bogus"}, "usage: loom <command> [flags]"},
		{[]string{"call"}, "usage: loom call namespace/component/endpoint"},
		{[]string{"ls", "--nope"}, "usage: loom ls"},
		{[]string{"queue", "zz"}, "usage: loom queue <command> [flags]"},
		{[]string{"demo", "--requests", "-1"}, "--requests -1: want 0 or more"},
		{[]string{"demo", "--router", "bogus"}, "--router bogus: want round_robin"},
		{[]string{"demo", "--plane", "bogus"}, "--plane bogus: want local, tcp or nats"},
		{[]string{"help", "nosuch"}, `unknown help topic "nosuch"`},
		{[]string{"help", "queue", "nosuch"}, `unknown help topic "queue nosuch"`},
		{[]string{"completion", "nosuch"}, "usage: loom completion <command> [flags]"},
		{[]string{"completion", "bash", "extra"}, "usage: loom completion bash"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			root := newRoot()
			root.SetArgs(tc.args)
			root.SetOut(io.Discard)
			var stderr bytes.Buffer
			if code := run(root, &stderr); code != 2 {
				t.Errorf("exit code %d, want 2; stderr:\n%s", code, stderr.String())
			}
			if !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("stderr %q does not show %q", stderr.String(), tc.want)
			}
		})
	}
	for _, args := range [][]string{nil, {"help"}, {"help", "queue", "add"}, {"queue", "add", "--help"}} {
		root := newRoot()
		root.SetArgs(args)
		root.SetOut(io.Discard)
		var stderr bytes.Buffer
		if code := run(root, &stderr); code != 0 {
			t.Errorf("loom %s exited %d, want 0; stderr:\n%s", strings.Join(args, " "), code, &stderr)
		}
	}
	// completion writes where standard output was when newRoot added it:
	// run the binary, whose output this test holds.
	if out, err := exec.Command(loomBin, "completion", "bash").Output(); err != nil || !strings.Contains(string(out), "__start_loom") {
		t.Errorf("loom completion bash: %v, printed %d bytes; want exit 0 and the script", err, len(out))
	}
}

// TestOutOfRangeFlagValuesAreUsageErrors runs the binary with flag values
// that mean nothing (a count, a timeout or an interval below its range):
// each must be a usage error naming the flag, exit 2, before connecting to
// anything, rather than be taken silently as "nothing" or "no limit".
func TestOutOfRangeFlagValuesAreUsageErrors(t *testing.T) {
	// Nothing listens there: a command that goes on to connect fails
	// with exit 1, not 2.
	env := []string{"NATS_SERVER=nats://127.0.0.1:1", "LOOM_DISCOVERY=memory", "LOOM_CLIENT_WAIT_TIMEOUT=0s"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"pub", "ns/c", "t", "{}", "--count", "0"}, "--count 0: want 1 or more"},
		{[]string{"pub", "ns/c", "t", "{}", "--count", "-1"}, "--count -1: want 1 or more"},
		{[]string{"pub", "ns/c", "t", "{}", "--timeout", "0s"}, "--timeout 0s: want more than 0"},
		{[]string{"pub", "ns/c", "t", "{}", "--interval", "-1s"}, "--interval -1s: want 0 or more"},
		{[]string{"pub", "ns/c", "t", "{}", "--wait-subscribers", "-1"}, "--wait-subscribers -1: want 0 or more"},
		{[]string{"sub", "ns/c", "t", "--count", "-1"}, "--count -1: want 0 or more"},
		{[]string{"sub", "ns/c", "t", "--timeout", "-1s"}, "--timeout -1s: want 0 or more"},
		{[]string{"call", "ns/c/e", "{}", "--timeout", "-1s"}, "--timeout -1s: want 0 or more"},
		{[]string{"queue", "peek", "q", "-n", "0"}, "-n 0: want 1 or more"},
		{[]string{"queue", "dlq", "q", "-n", "-1"}, "-n -1: want 1 or more"},
		{[]string{"queue", "dlq", "q", "--requeue", "--purge"}, "--requeue and --purge are exclusive"},
		{[]string{"queue", "dlq", "q", "5"}, `"5": sequence numbers follow --requeue`},
		{[]string{"queue", "dlq", "q", "--requeue", "x"}, `"x": sequence numbers follow --requeue`},
		{[]string{"llm", "bench"}, "give --url URL"},
		{[]string{"llm", "bench", "--url", "http://127.0.0.1:1", "--workers", "1"}, "not both or neither"},
		{[]string{"llm", "bench", "--workers", "1", "--router", "fastest"}, `unknown router "fastest"`},
		{[]string{"llm", "bench", "--url", "http://127.0.0.1:1", "--workload", "zipf"}, `unknown workload "zipf"`},
		{[]string{"llm", "bench", "--url", "http://127.0.0.1:1", "--rate", "5", "--concurrency", "2"}, "choose closed loop or open loop"},
		{[]string{"llm", "bench", "--url", "http://127.0.0.1:1", "--requests", "-1"}, "--requests -1: want 0 or more"},
		{[]string{"llm", "bench", "--url", "http://127.0.0.1:1", "--concurrency", "-3"}, "--concurrency -3: want 0 or more"},
		{[]string{"llm", "bench", "--url", "http://127.0.0.1:1", "--rate", "-1"}, "--rate -1: want 0 or more"},
		{[]string{"llm", "bench", "--url", "http://127.0.0.1:1", "--duration", "-1s"}, "--duration -1s: want 0 or more"},
		{[]string{"llm", "bench", "--url", "http://127.0.0.1:1", "--timeout", "-1s"}, "--timeout -1s: want more than 0"},
		{[]string{"llm", "bench", "--url", "http://127.0.0.1:1", "--progress", "bogus"}, `--progress "bogus": want auto, bar, lines or off`},
		{[]string{"llm", "bench", "--workers", "1", "--plane", "bogus"}, `--plane "bogus": want tcp, nats or local`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			p := startLoom(t, env, tc.args...)
			code := p.waitExit()
			_, errs := p.lines()
			stderr := strings.Join(errs, "\n")
			if code != 2 {
				t.Errorf("exit code %d, want 2; stderr:\n%s", code, stderr)
			}
			if !strings.Contains(stderr, tc.want) || !strings.Contains(stderr, "usage: loom "+strings.Join(commandPath(tc.args), " ")) {
				t.Errorf("stderr does not say %q with the usage line:\n%s", tc.want, stderr)
			}
		})
	}
}

// commandPath is the command args name: its words before the first
// flag or argument of the command itself.
func commandPath(args []string) []string {
	if len(args) > 1 && (args[0] == "llm" || args[0] == "queue") {
		return args[:2]
	}
	return args[:1]
}

// TestBadNamesAreUsageErrorsBeforeConnecting gives loom call, pub, sub and
// ls a bad endpoint path, scope or topic with discovery pointed at an etcd
// that is not there: the name must be refused at once, a usage error
// naming it, not after the discovery dial timeout with etcd's error.
func TestBadNamesAreUsageErrorsBeforeConnecting(t *testing.T) {
	env := []string{"LOOM_DISCOVERY=etcd", "ETCD_ENDPOINTS=http://127.0.0.1:1", "LOOM_DISCOVERY_DIAL_TIMEOUT=20s",
		"NATS_SERVER=nats://127.0.0.1:1", "LOOM_LOG_LEVEL=error"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"call", "Demo/backend/generate", "{}"}, `endpoint path "Demo/backend/generate": invalid namespace name "Demo"`},
		{[]string{"call", "demo/backend", "{}"}, `endpoint path "demo/backend": want namespace/component/endpoint`},
		{[]string{"pub", "dyn/*", "kv_events", "{}"}, `a publisher's scope cannot hold the wildcard "*"`},
		{[]string{"pub", "dyn/w1", "KV", "{}"}, `invalid topic name "KV"`},
		{[]string{"sub", "dyn/*", "KV"}, `invalid topic name "KV"`},
		{[]string{"sub", "Dyn", "kv_events"}, `invalid namespace name "Dyn"`},
		{[]string{"ls", "Dyn"}, `invalid namespace name "Dyn"`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			start := time.Now()
			p := startLoom(t, env, tc.args...)
			code := p.waitExit()
			_, errs := p.lines()
			stderr := strings.Join(errs, "\n")
			if code != 2 || !strings.Contains(stderr, tc.want) || !strings.Contains(stderr, "usage: loom "+tc.args[0]) {
				t.Errorf("exit code %d, stderr:\n%s\nwant 2, %q and the usage line", code, stderr, tc.want)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("took %v: it waited for discovery before checking the name", d)
			}
		})
	}
}
