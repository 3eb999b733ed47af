package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/discovery/memory"
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/events"
	"github.com/loomrt/loom/internal/testutil"
)

// loomProc is a loom binary running in the background, its output kept.
type loomProc struct {
	t      *testing.T
	cmd    *exec.Cmd
	mu     sync.Mutex
	stdout []string
	stderr []string
	done   chan struct{}
}

func startLoom(t *testing.T, env []string, args ...string) *loomProc {
	t.Helper()
	return startLoomWithStdin(t, nil, env, args...)
}

// startLoomWithStdin is startLoom with standard input read from stdin.
func startLoomWithStdin(t *testing.T, stdin io.Reader, env []string, args ...string) *loomProc {
	t.Helper()
	p := &loomProc{t: t, cmd: exec.Command(loomBin, args...), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdin = stdin
	out, _ := p.cmd.StdoutPipe()
	errOut, _ := p.cmd.StderrPipe()
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, s := range []struct {
		r    *bufio.Scanner
		into *[]string
	}{{bufio.NewScanner(out), &p.stdout}, {bufio.NewScanner(errOut), &p.stderr}} {
		wg.Go(func() {
			for s.r.Scan() {
				p.mu.Lock()
				*s.into = append(*s.into, s.r.Text())
				p.mu.Unlock()
			}
		})
	}
	go func() {
		wg.Wait()
		_ = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

func (p *loomProc) lines() (stdout, stderr []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.stdout...), append([]string(nil), p.stderr...)
}

// waitStderr waits for a line of standard error matching re.
func (p *loomProc) waitStderr(re string) []string {
	p.t.Helper()
	return p.waitLine(re, false)
}

// waitStdout waits for a line of standard output matching re.
func (p *loomProc) waitStdout(re string) []string {
	p.t.Helper()
	return p.waitLine(re, true)
}

func (p *loomProc) waitLine(re string, stdout bool) []string {
	p.t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.After(30 * time.Second)
	for {
		outs, errs := p.lines()
		if stdout {
			errs = outs
		}
		for _, l := range errs {
			if m := rx.FindStringSubmatch(l); m != nil {
				return m
			}
		}
		select {
		case <-p.done:
			out, errs := p.lines()
			p.t.Fatalf("%v exited before printing %q\nstdout: %q\nstderr: %q", p.cmd.Args, re, out, errs)
		case <-deadline:
			out, errs := p.lines()
			p.t.Fatalf("%v did not print %q within 30s\nstdout: %q\nstderr: %q", p.cmd.Args, re, out, errs)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// exit waits for the process and fails unless it exits 0.
func (p *loomProc) exit() {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		out, errs := p.lines()
		p.t.Fatalf("%v still running after 30s\nstdout: %q\nstderr: %q", p.cmd.Args, out, errs)
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		out, errs := p.lines()
		p.t.Fatalf("%v exited %d\nstdout: %q\nstderr: %q", p.cmd.Args, code, out, errs)
	}
}

func runLoom(t *testing.T, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command(loomBin, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("loom %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestLoomSubShowsWhatLoomPubSends runs `loom sub` and `loom pub` as
// separate processes on one nats-server, on each transport.
func TestLoomSubShowsWhatLoomPubSends(t *testing.T) {
	ns, err := embedded.StartNATS(embedded.NATSOptions{JetStream: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	base := []string{"NATS_SERVER=" + ns.ClientURL(), "LOOM_DISCOVERY=natskv", "LOOM_LOG_LEVEL=warn"}
	for _, tr := range []string{"nats", "zmq", "jetstream"} {
		t.Run("over "+tr, func(t *testing.T) {
			env := append(base, "LOOM_EVENTS_TRANSPORT="+tr)
			sub := startLoom(t, env, "sub", "dyn.eu/*", "kv_events", "--count", "4")
			sub.waitStderr(`subscribed to namespace\.dyn%2Eeu\.component\.\*\.kv_events over ` + tr)
			wait := []string{}
			if tr == "zmq" {
				wait = []string{"--wait-subscribers", "1"}
			}
			runLoom(t, env, append([]string{"pub", "dyn.eu/backend", "kv_events", `{"stored": [1, 2], "worker": "a"}`}, wait...)...)
			out := runLoom(t, env, append([]string{"pub", "dyn.eu/prefill", "kv_events", `{"removed": [3]}`, "--count", "3", "--codec", "json"}, wait...)...)
			if strings.Count(out, "published namespace.dyn%2Eeu.component.prefill.kv_events") != 3 || !strings.Contains(out, "sequence=2") {
				t.Fatalf("loom pub printed:\n%s", out)
			}
			sub.exit()
			got, errs := sub.lines()
			want := []*regexp.Regexp{
				regexp.MustCompile(`^namespace\.dyn%2Eeu\.component\.backend\.kv_events publisher=[0-9a-f]+ sequence=0 {"stored":\[1,2\],"worker":"a"}$`),
				regexp.MustCompile(`^namespace\.dyn%2Eeu\.component\.prefill\.kv_events publisher=[0-9a-f]+ sequence=0 {"removed":\[3\]}$`),
				regexp.MustCompile(`^namespace\.dyn%2Eeu\.component\.prefill\.kv_events publisher=[0-9a-f]+ sequence=1 {"removed":\[3\]}$`),
				regexp.MustCompile(`^namespace\.dyn%2Eeu\.component\.prefill\.kv_events publisher=[0-9a-f]+ sequence=2 {"removed":\[3\]}$`),
			}
			if len(got) != len(want) {
				t.Fatalf("loom sub printed %d lines, want %d:\n%s\nstderr: %q", len(got), len(want), strings.Join(got, "\n"), errs)
			}
			for i, re := range want {
				if !re.MatchString(got[i]) {
					t.Errorf("line %d is %q, want %s", i, got[i], re)
				}
			}
			if last := errs[len(errs)-1]; last != "loom sub: 4 events; lost 0, dropped 0, reordered 0, duplicates 0, malformed 0" {
				t.Errorf("summary %q", last)
			}
		})
	}
	t.Run("replaying stored events", func(t *testing.T) {
		env := append(base, "LOOM_EVENTS_TRANSPORT=jetstream")
		out := runLoom(t, env, "sub", "dyn.eu/backend", "kv_events", "--all", "--count", "1", "--json")
		if !strings.Contains(out, `"payload":{"stored":[1,2],"worker":"a"}`) || !strings.Contains(out, `"stream_sequence":1`) {
			t.Fatalf("loom sub --all --json printed:\n%s", out)
		}
	})
}

// TestLoomUpRunsAZMQBroker starts `loom up --zmq-broker` and sends events
// through it with the environment it prints.
func TestLoomUpRunsAZMQBroker(t *testing.T) {
	up := startLoom(t, nil, "up", "--nats-port", "0", "--monitor-port", "0", "--discovery", "natskv",
		"--data-dir", t.TempDir(), "--zmq-broker=0,0")
	up.waitStderr(`^loom up: serving`)
	// Standard output is read apart from standard error: its lines may
	// come a moment later. LOOM_STATUS_PORT is the last.
	up.waitStdout(`^LOOM_STATUS_PORT=`)
	out, _ := up.lines()
	env := append([]string{"LOOM_LOG_LEVEL=warn"}, out...)
	for _, key := range []string{"LOOM_EVENTS_TRANSPORT=zmq", "LOOM_EVENTS_ZMQ_BROKER_PUB=tcp://127.0.0.1:", "LOOM_EVENTS_ZMQ_BROKER_SUB=tcp://127.0.0.1:"} {
		if !strings.Contains(strings.Join(out, "\n"), key) {
			t.Fatalf("loom up printed %q, lacking %s", out, key)
		}
	}
	// At info, a status server would say where it listens: sub serves no
	// endpoint and runs none, despite loom up's LOOM_STATUS_PORT=-1.
	sub := startLoom(t, append(env, "LOOM_LOG_LEVEL=info"), "sub", "dyn/*", "load_metrics", "--count", "2")
	sub.waitStderr(`subscribed to .* over zmq`)
	runLoom(t, env, "pub", "dyn/w1", "load_metrics", `{"active": 1}`, "--count", "2", "--wait-subscribers", "1")
	sub.exit()
	got, errs := sub.lines()
	if len(got) != 2 || !strings.Contains(got[1], `sequence=1 {"active":1}`) {
		t.Fatalf("loom sub through the broker printed %q", got)
	}
	if strings.Contains(strings.Join(errs, "\n"), "status server") {
		t.Errorf("loom sub started a status server:\n%s", strings.Join(errs, "\n"))
	}
	_ = up.cmd.Process.Signal(syscall.SIGTERM)
	up.exit()
}

// TestLoomUpJSONWithTheBrokerPortsAfterASpace starts `loom up --json
// --zmq-broker 0,0` (the ports after a space, not an =) and publishes with
// loom pub --json through what it printed.
func TestLoomUpJSONWithTheBrokerPortsAfterASpace(t *testing.T) {
	up := startLoom(t, nil, "up", "--nats-port", "0", "--monitor-port", "0", "--discovery", "natskv",
		"--data-dir", t.TempDir(), "--json", "--zmq-broker", "0,0")
	up.waitStderr(`^loom up: serving .*; set the variables of the JSON object above in`)
	var env map[string]string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		out, _ := up.lines()
		if len(out) > 0 {
			if len(out) != 1 {
				t.Fatalf("loom up --json printed %d lines, want one JSON object: %q", len(out), out)
			}
			if err := json.Unmarshal([]byte(out[0]), &env); err != nil {
				t.Fatalf("loom up --json printed %q: %v", out[0], err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("loom up --json printed nothing on standard output")
		}
	}
	for key, prefix := range map[string]string{
		"NATS_SERVER": "nats://127.0.0.1:", "LOOM_DISCOVERY": "natskv", "LOOM_STATUS_PORT": "-1",
		"LOOM_EVENTS_TRANSPORT": "zmq", "LOOM_EVENTS_ZMQ_BROKER_PUB": "tcp://127.0.0.1:", "LOOM_EVENTS_ZMQ_BROKER_SUB": "tcp://127.0.0.1:",
	} {
		if !strings.HasPrefix(env[key], prefix) {
			t.Errorf("loom up --json: %s=%q, want it to start with %q", key, env[key], prefix)
		}
	}
	if env["LOOM_EVENTS_ZMQ_BROKER_PUB"] == "tcp://127.0.0.1:5557" {
		t.Errorf("--zmq-broker 0,0 ran the broker on the default ports: %v", env)
	}
	// At info, a status server would say where it listens: pub serves
	// no endpoint and runs none, despite LOOM_STATUS_PORT=-1.
	vars := []string{"LOOM_LOG_LEVEL=info"}
	for k, v := range env {
		vars = append(vars, k+"="+v)
	}
	cmd := exec.Command(loomBin, "pub", "dyn/w1", "load_metrics", `{"active": 1}`, "--count", "2", "--json")
	cmd.Env = append(os.Environ(), vars...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("loom pub --json: %v\n%s", err, &stderr)
	}
	if strings.Contains(stderr.String(), "status server") {
		t.Errorf("loom pub started a status server:\n%s", &stderr)
	}
	dec := json.NewDecoder(&stdout)
	for i := range 2 {
		var p struct {
			Subject     string `json:"subject"`
			PublisherID uint64 `json:"publisher_id"`
			Sequence    uint64 `json:"sequence"`
		}
		if err := dec.Decode(&p); err != nil {
			t.Fatalf("loom pub --json line %d: %v", i+1, err)
		}
		if p.Subject != "namespace.dyn.component.w1.load_metrics" || p.PublisherID == 0 || p.Sequence != uint64(i) {
			t.Errorf("loom pub --json line %d: %+v", i+1, p)
		}
	}
	_ = up.cmd.Process.Signal(syscall.SIGTERM)
	up.exit()
}

func TestZMQDirectOnMemoryDiscoveryIsWarnedOf(t *testing.T) {
	for _, tc := range []struct {
		discovery, transport, broker string
		warned                       bool
	}{
		{"memory", events.ZMQ, "", true},
		{"memory", events.ZMQ, "tcp://127.0.0.1:1", false},
		{"memory", events.NATS, "", false},
		{"natskv", events.ZMQ, "", false},
	} {
		cfg := config.Default()
		cfg.Discovery.Backend, cfg.Events.ZMQ.BrokerSub = tc.discovery, tc.broker
		d := memory.New()
		rt, err := loom.NewRuntime(context.Background(), loom.WithConfig(cfg), loom.WithDiscovery(d), loom.WithLogger(quietLog()))
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		warnLocalDiscovery(&out, "loom sub", rt, tc.transport)
		_ = rt.Shutdown(context.Background())
		_ = d.Close()
		if got := strings.Contains(out.String(), "discovery.backend is memory"); got != tc.warned {
			t.Errorf("%s discovery, %s transport, broker %q: warned %v (%q), want %v", tc.discovery, tc.transport, tc.broker, got, out.String(), tc.warned)
		}
	}
}

// TestLoomPubFromStdinStopsOnSIGINT publishes lines of a standard input
// that stays open, as a terminal's does, then interrupts: loom pub must
// exit at once, having flushed what it published, not wait for a line or
// an end of input that never comes.
func TestLoomPubFromStdinStopsOnSIGINT(t *testing.T) {
	ns, err := embedded.StartNATS(embedded.NATSOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	// An *os.File, so that the child reads it itself: exec's copying
	// goroutine for any other reader would keep Wait waiting on it.
	stdin, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	defer w.Close()
	pub := startLoomWithStdin(t, stdin, []string{"NATS_SERVER=" + ns.ClientURL(), "LOOM_LOG_LEVEL=warn"}, "pub", "dyn/w1", "load_metrics")
	if _, err := io.WriteString(w, `{"active": 1}`+"\n"); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 30*time.Second, "loom pub publishing the line", func() bool {
		out, _ := pub.lines()
		return len(out) == 1
	})
	_ = pub.cmd.Process.Signal(os.Interrupt)
	select {
	case <-pub.done:
	case <-time.After(10 * time.Second):
		out, errs := pub.lines()
		t.Fatalf("loom pub still running 10s after SIGINT\nstdout: %q\nstderr: %q", out, errs)
	}
	if code := pub.cmd.ProcessState.ExitCode(); code != 0 {
		out, errs := pub.lines()
		t.Errorf("loom pub exited %d after SIGINT, want 0\nstdout: %q\nstderr: %q", code, out, errs)
	}
}

// TestBadJSONIsAnErrorNamingWhatItIs gives loom call and loom pub JSON
// that does not parse, on the command line and on standard input: each
// must fail, exit 1, quoting the text and naming it a request or an event.
func TestBadJSONIsAnErrorNamingWhatItIs(t *testing.T) {
	ns, err := embedded.StartNATS(embedded.NATSOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	env := []string{"NATS_SERVER=" + ns.ClientURL(), "LOOM_LOG_LEVEL=warn"}
	for _, tc := range []struct {
		stdin string
		args  []string
		want  string
	}{
		{"", []string{"call", "ns/c/e", `{"prompt": `}, `loom: the request "{\"prompt\": ": codec: not JSON`},
		{`{"prompt": `, []string{"call", "ns/c/e", "-"}, `loom: the request "{\"prompt\": ": codec: not JSON`},
		{"", []string{"pub", "ns/c", "t", `{"x": 1} 2`}, `loom: the event "{\"x\": 1} 2": codec: `},
		{"{}\n\n{bad\n", []string{"pub", "ns/c", "t"}, `loom: standard input line 3: the event "{bad": codec: not JSON`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			p := startLoomWithStdin(t, strings.NewReader(tc.stdin), env, tc.args...)
			code := p.waitExit()
			_, errs := p.lines()
			stderr := strings.Join(errs, "\n")
			if code != 1 {
				t.Errorf("exit code %d, want 1; stderr:\n%s", code, stderr)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr does not say %q:\n%s", tc.want, stderr)
			}
		})
	}
}

// TestCommandsThatRunUntilCtrlCExitZeroOnSIGINT holds the commands that
// run until Ctrl-C (sub, ls --watch, dashboard, up, the llm servers) to
// the README's exit statuses: on SIGINT or SIGTERM each ends at once, sub
// with its summary, and exits 0.
func TestCommandsThatRunUntilCtrlCExitZeroOnSIGINT(t *testing.T) {
	ns, err := embedded.StartNATS(embedded.NATSOptions{JetStream: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	env := []string{"NATS_SERVER=" + ns.ClientURL(), "LOOM_DISCOVERY=natskv", "LOOM_LOG_LEVEL=warn"}
	stderrStarts := func(prefix string) func(_, e []string) bool {
		return func(_, e []string) bool { return len(e) > 0 && strings.HasPrefix(e[0], prefix) }
	}
	stdoutHas := func(prefix string) func(o, _ []string) bool {
		return func(o, _ []string) bool {
			return slices.ContainsFunc(o, func(l string) bool { return strings.HasPrefix(l, prefix) })
		}
	}
	for _, sig := range []os.Signal{os.Interrupt, syscall.SIGTERM} {
		for _, tc := range []struct {
			args       []string
			ready      func(stdout, stderr []string) bool
			lastStderr string
		}{
			{[]string{"sub", "dyn/*", "kv_events"}, stderrStarts("loom sub: subscribed to"),
				"loom sub: 0 events; lost 0, dropped 0, reordered 0, duplicates 0, malformed 0"},
			{[]string{"ls", "--watch"}, func(o, _ []string) bool { return len(o) > 0 && o[0] == "# synced: what follows are changes" }, ""},
			{[]string{"ls", "--watch", "--json"}, func(o, _ []string) bool { return len(o) > 0 && o[0] == `{"event":"synced"}` }, ""},
			{[]string{"dashboard", "--addr", "127.0.0.1:0", "--nats-monitor", "off"}, stderrStarts("loom dashboard: http://"), ""},
			{[]string{"up", "--data-dir", t.TempDir(), "--discovery", "natskv", "--nats-port", "0", "--monitor-port", "0"},
				stderrStarts("loom up: serving"), "loom up: stopping"},
			{[]string{"llm", "worker"}, stdoutHas("loom llm worker: worker "), ""},
			{[]string{"llm", "frontend", "--port", "0"}, stdoutHas("OPENAI_BASE_URL="), ""},
			{[]string{"llm", "up", "--workers", "1", "--port", "0"}, stdoutHas("OPENAI_BASE_URL="), ""},
		} {
			t.Run(strings.Join(tc.args[:min(2, len(tc.args))], " ")+" "+sig.String(), func(t *testing.T) {
				p := startLoom(t, env, tc.args...)
				testutil.Eventually(t, 30*time.Second, "loom "+tc.args[0]+" being ready", func() bool { return tc.ready(p.lines()) })
				_ = p.cmd.Process.Signal(sig)
				select {
				case <-p.done:
				case <-time.After(10 * time.Second):
					out, errs := p.lines()
					t.Fatalf("still running 10s after %v\nstdout: %q\nstderr: %q", sig, out, errs)
				}
				out, errs := p.lines()
				if code := p.cmd.ProcessState.ExitCode(); code != 0 {
					t.Errorf("exit code %d after %v, want 0\nstdout: %q\nstderr: %q", code, sig, out, errs)
				}
				if tc.lastStderr != "" && (len(errs) == 0 || errs[len(errs)-1] != tc.lastStderr) {
					t.Errorf("standard error %q, want it to end with %q", errs, tc.lastStderr)
				}
			})
		}
	}
}

// TestLoomSubReplaysJetStreamFromWhereItIsTold holds loom sub's help to
// what it does on the jetstream transport: --from-seq, --since,
// --last-per-subject and --all start a replay where they say, --durable
// resumes where the last run left off, and giving two starts is a usage
// error.
func TestLoomSubReplaysJetStreamFromWhereItIsTold(t *testing.T) {
	ns, err := embedded.StartNATS(embedded.NATSOptions{JetStream: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	env := []string{"NATS_SERVER=" + ns.ClientURL(), "LOOM_DISCOVERY=natskv", "LOOM_LOG_LEVEL=warn", "LOOM_EVENTS_TRANSPORT=jetstream"}
	runLoom(t, env, "pub", "replay/w1", "kv_events", `{"n": 1}`, "--count", "3")
	// stream sequences of the events a sub run printed
	seqs := func(args ...string) []int {
		t.Helper()
		out := runLoom(t, env, append([]string{"sub", "replay/w1", "kv_events", "--json"}, args...)...)
		var got []int
		for line := range strings.Lines(out) {
			var ev struct {
				StreamSeq int `json:"stream_sequence"`
			}
			if err := json.Unmarshal([]byte(line), &ev); err != nil {
				continue // standard error's lines
			}
			got = append(got, ev.StreamSeq)
		}
		return got
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--all", "--count", "3"}, "[1 2 3]"},
		{[]string{"--from-seq", "2", "--count", "2"}, "[2 3]"},
		{[]string{"--since", "1h", "--count", "3"}, "[1 2 3]"},
		{[]string{"--last-per-subject", "--count", "1"}, "[3]"},
		{[]string{"--durable", "replayer", "--all", "--count", "2"}, "[1 2]"},
		{[]string{"--durable", "replayer", "--all", "--count", "1"}, "[3]"}, // the same start: a durable keeps its own
	} {
		if got := fmt.Sprint(seqs(tc.args...)); got != tc.want {
			t.Errorf("loom sub %s: stream sequences %s, want %s", strings.Join(tc.args, " "), got, tc.want)
		}
	}
	for _, args := range [][]string{{"--all", "--from-seq", "2"}, {"--since", "yesterday"}} {
		p := startLoom(t, env, append([]string{"sub", "replay/w1", "kv_events"}, args...)...)
		code := p.waitExit()
		if _, errs := p.lines(); code != 2 || !strings.Contains(strings.Join(errs, "\n"), "usage: loom sub") {
			t.Errorf("loom sub %s: exit code %d, stderr %q; want a usage error", strings.Join(args, " "), code, errs)
		}
	}
}

// TestJetStreamStartsOnAnotherTransportAreUsageErrors gives loom sub a
// flag that replays or resumes stored events on a transport that keeps
// none: a usage error naming the flag, the transport in effect and how to
// choose jetstream, before connecting (the servers named here are not
// running), not the library's words for its options.
func TestJetStreamStartsOnAnotherTransportAreUsageErrors(t *testing.T) {
	env := []string{"NATS_SERVER=nats://127.0.0.1:1", "LOOM_DISCOVERY=memory"}
	for _, tc := range []struct {
		env  []string
		args []string
		want string
	}{
		{[]string{"LOOM_EVENTS_TRANSPORT="}, []string{"--since", "10m"}, "--since: only the jetstream transport keeps events to replay or resume, and this is nats (events.transport, from default)"},
		{[]string{"LOOM_EVENTS_TRANSPORT=zmq"}, []string{"--durable", "d", "--all"}, "--all: only the jetstream transport keeps events to replay or resume, and this is zmq (events.transport, from env LOOM_EVENTS_TRANSPORT)"},
		{[]string{"LOOM_EVENTS_TRANSPORT=jetstream"}, []string{"--transport", "nats", "--from-seq", "3"}, "--from-seq: only the jetstream transport keeps events to replay or resume, and this is nats (--transport)"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			p := startLoom(t, append(env, tc.env...), append([]string{"sub", "dyn/w1", "kv_events"}, tc.args...)...)
			code := p.waitExit()
			_, errs := p.lines()
			stderr := strings.Join(errs, "\n")
			if code != 2 || !strings.Contains(stderr, tc.want) || !strings.Contains(stderr, "use --transport jetstream") || !strings.Contains(stderr, "usage: loom sub") {
				t.Errorf("exit code %d, stderr:\n%s\nwant 2, %q and the usage line", code, stderr, tc.want)
			}
		})
	}
}

// TestWaitSubscribersOffZeroMQIsAUsageError gives loom pub
// --wait-subscribers on transports whose publishers do not know their
// subscribers: a usage error naming the flag and the transport in effect,
// before connecting (the server named here is not running).
func TestWaitSubscribersOffZeroMQIsAUsageError(t *testing.T) {
	env := []string{"NATS_SERVER=nats://127.0.0.1:1", "LOOM_DISCOVERY=memory"}
	for _, tc := range []struct {
		env  []string
		args []string
		want string
	}{
		{[]string{"LOOM_EVENTS_TRANSPORT="}, nil, "this is nats (events.transport, from default)"},
		{[]string{"LOOM_EVENTS_TRANSPORT=zmq"}, []string{"--transport", "jetstream"}, "this is jetstream (--transport)"},
	} {
		t.Run(strings.Join(append(tc.env, tc.args...), " "), func(t *testing.T) {
			p := startLoom(t, append(env, tc.env...), append([]string{"pub", "dyn/w1", "kv_events", "{}", "--wait-subscribers", "1"}, tc.args...)...)
			code := p.waitExit()
			_, errs := p.lines()
			stderr := strings.Join(errs, "\n")
			if code != 2 || !strings.Contains(stderr, "--wait-subscribers: only a ZeroMQ publisher knows its subscribers, and "+tc.want) ||
				!strings.Contains(stderr, "use --transport zmq") || !strings.Contains(stderr, "usage: loom pub") {
				t.Errorf("exit code %d, stderr:\n%s\nwant 2, the flag, %q and the usage line", code, stderr, tc.want)
			}
		})
	}
}
