package main

import (
	"bytes"
	"context"
	"errors"
	"iter"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/cmd/loom/internal/demo"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/internal/testutil"
)

func TestLoomCallPrintsEachResponseAsJSON(t *testing.T) {
	for _, fast := range []string{"true", "false"} {
		t.Run("local fast path "+fast, func(t *testing.T) {
			t.Setenv("LOOM_CLIENT_LOCAL_FAST_PATH", fast)
			t.Setenv("LOOM_LOG_LEVEL", "error")
			ctx := context.Background()
			rt, err := loom.NewRuntime(ctx, loom.WithLogger(quietLog()))
			if err != nil {
				t.Fatal(err)
			}
			defer rt.Shutdown(ctx)
			ep, err := rt.Endpoint("calltest/backend/generate")
			if err != nil {
				t.Fatal(err)
			}
			gen := loom.EngineFunc[demo.Request, demo.Token](func(ctx context.Context, r demo.Request) iter.Seq2[demo.Token, error] {
				return func(yield func(demo.Token, error) bool) {
					for i := range r.MaxTokens {
						if !yield(demo.Token{Text: r.Prompt, Index: i, Instance: 7}, nil) {
							return
						}
					}
				}
			})
			if err := loom.Serve(ctx, ep, gen); err != nil {
				t.Fatal(err)
			}
			req, err := parseJSONArg("the request", `{"prompt": "hi", "max_tokens": 3}`)
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			if err := call(ctx, &out, "calltest/backend/generate", req, instanceID{}, 10*time.Second); err != nil {
				t.Fatal(err)
			}
			want := `{"index":0,"instance":7,"text":"hi"}
{"index":1,"instance":7,"text":"hi"}
{"index":2,"instance":7,"text":"hi"}
`
			if out.String() != want {
				t.Fatalf("printed:\n%s\nwant:\n%s", &out, want)
			}
		})
	}
}

func TestLoomCallErrorsSayWhatIsWrong(t *testing.T) {
	t.Setenv("LOOM_CLIENT_WAIT_TIMEOUT", "50ms")
	t.Setenv("LOOM_LOG_LEVEL", "error")
	if _, err := parseJSONArg("the request", `{"prompt": `); err == nil || !strings.Contains(err.Error(), "not JSON") {
		t.Errorf("bad JSON: %v", err)
	}
	if _, err := parseJSONArg("the request", `{} {}`); err == nil || !strings.Contains(err.Error(), "more than one JSON value") {
		t.Errorf("two values: %v", err)
	}
	t.Setenv("LOOM_DISCOVERY", "memory")
	err := call(context.Background(), &bytes.Buffer{}, "nobody/is/home", map[string]any{}, instanceID{}, 0)
	if !errors.Is(err, loom.ErrNoInstances) {
		t.Errorf("calling an endpoint nobody serves: %v, want ErrNoInstances", err)
	}
	if err == nil || !strings.Contains(err.Error(), "discovery.backend is memory") || !strings.Contains(err.Error(), "loom up") {
		t.Errorf("no instance on memory discovery: %v; want a hint that it sees only this process and loom up", err)
	}
	// The README quotes the start of it.
	if want := "no instances: none of nobody/is/home appeared within 50ms (is a server for it running and registered in the same discovery?"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("no instance: %v; want it to say %q", err, want)
	}
	err = call(context.Background(), &bytes.Buffer{}, "Bad/Path", map[string]any{}, instanceID{}, 0)
	if err == nil || !strings.Contains(err.Error(), "namespace/component/endpoint") {
		t.Errorf("bad path: %v", err)
	}
}

func TestReadRequestArgFromStdinAndFile(t *testing.T) {
	big := `{"prompt": "` + strings.Repeat("x", 200<<10) + `"}`
	got, err := readRequestArg("-", strings.NewReader(big))
	if err != nil || got != big {
		t.Fatalf("from stdin: %d bytes, %v; want the %d bytes given", len(got), err, len(big))
	}
	path := filepath.Join(t.TempDir(), "req.json")
	if err := os.WriteFile(path, []byte(big), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err = readRequestArg("@"+path, nil); err != nil || got != big {
		t.Fatalf("from @file: %d bytes, %v", len(got), err)
	}
	if _, err = readRequestArg("@"+path+".missing", nil); err == nil || !strings.Contains(err.Error(), "request file") {
		t.Errorf("a missing file gave %v", err)
	}
	if got, _ = readRequestArg(`{"a":1}`, nil); got != `{"a":1}` {
		t.Errorf("a literal request came back as %q", got)
	}
}

func TestCallInstanceTakesTheIDInHexOrDecimal(t *testing.T) {
	t.Setenv("LOOM_LOG_LEVEL", "error")
	t.Setenv("LOOM_DISCOVERY", "memory")
	ctx := context.Background()
	// Ids chosen so that some read both ways: "1234" is 0x1234 (live) or
	// 1234 (not), "4567" is 4567 (live) or 0x4567 (not), "99" is 0x99 and
	// 99, both live.
	for _, id := range []uint64{0xabc, 4567, 0x1234, 0x99, 99} {
		rt, err := loom.NewRuntime(ctx, loom.WithLogger(quietLog()), loom.WithInstanceID(id))
		if err != nil {
			t.Fatal(err)
		}
		defer rt.Shutdown(ctx)
		ep, err := rt.Endpoint("calltest/ids/who")
		if err != nil {
			t.Fatal(err)
		}
		who := loom.EngineFunc[map[string]any, uint64](func(ctx context.Context, _ map[string]any) iter.Seq2[uint64, error] {
			return func(yield func(uint64, error) bool) { yield(rt.ID(), nil) }
		})
		if err := loom.Serve(ctx, ep, who); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name, flag string
		want       string // the answering id, in decimal as JSON prints it
		wantErr    string
	}{
		{name: "hex as loom ls prints it", flag: "abc", want: "2748"},
		{name: "hex with 0x", flag: "0xABC", want: "2748"},
		{name: "decimal as loom ls --json prints it", flag: "4567", want: "4567"},
		{name: "digits that are only a live id in hex", flag: "1234", want: "4660"},
		{name: "0x settles digits that name two instances", flag: "0x99", want: "153"},
		{name: "digits that name two instances are refused", flag: "99", wantErr: "names two instances, 99 in hex and 99 in decimal"},
		{name: "not a number", flag: "xyz", wantErr: "in hex as loom ls prints it"},
		{name: "zero", flag: "0", wantErr: "non-zero"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := parseInstanceID(tc.flag)
			var out bytes.Buffer
			if err == nil {
				err = call(ctx, &out, "calltest/ids/who", map[string]any{}, id, 10*time.Second)
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("--instance %s: %v, printed %q; want an error containing %q", tc.flag, err, &out, tc.wantErr)
				}
				return
			}
			if err != nil || strings.TrimSpace(out.String()) != tc.want {
				t.Fatalf("--instance %s: %v, answered by %q; want %s", tc.flag, err, strings.TrimSpace(out.String()), tc.want)
			}
		})
	}
}

func TestLsOnMemoryDiscoverySaysItSeesOnlyItself(t *testing.T) {
	for _, args := range [][]string{{"ls"}, {"ls", "--json"}} {
		cmd := exec.Command(loomBin, args...)
		cmd.Env = append(cmd.Environ(), "LOOM_DISCOVERY=memory", "LOOM_LOG_LEVEL=error", "LOOM_STATUS_PORT=0")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("loom %s: %v\n%s", strings.Join(args, " "), err, &stderr)
		}
		if !strings.Contains(stderr.String(), "discovery.backend is memory") || !strings.Contains(stderr.String(), "loom up") {
			t.Errorf("loom %s said on stderr %q; want the memory discovery hint", strings.Join(args, " "), &stderr)
		}
		if len(args) == 2 && strings.TrimSpace(stdout.String()) != "[]" {
			t.Errorf("loom ls --json printed %q; want [] alone on stdout", &stdout)
		}
	}
	// loom dashboard too: its page would stay empty without a word.
	ns, err := embedded.StartNATS(embedded.NATSOptions{JetStream: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	p := startLoom(t, []string{"LOOM_DISCOVERY=memory", "NATS_SERVER=" + ns.ClientURL()}, "dashboard", "--addr", "127.0.0.1:0", "--nats-monitor", "off")
	p.waitStderr(`^loom dashboard: discovery\.backend is memory, which sees only this process.*loom up`)
	_ = p.cmd.Process.Signal(os.Interrupt)
	if code := p.waitExit(); code != 0 {
		t.Errorf("loom dashboard exited %d after Ctrl-C", code)
	}
	// loom llm frontend and worker too: a frontend would answer 503 for
	// want of workers, and a worker would wait for requests, in silence.
	for _, args := range [][]string{{"llm", "frontend", "--port", "0"}, {"llm", "worker"}} {
		p := startLoom(t, []string{"LOOM_DISCOVERY=memory", "NATS_SERVER=" + ns.ClientURL(), "LOOM_STATUS_PORT=-1"}, args...)
		p.waitStderr(`^loom ` + args[0] + ` ` + args[1] + `: discovery\.backend is memory, which sees only this process.*loom up`)
		_ = p.cmd.Process.Signal(os.Interrupt)
		if code := p.waitExit(); code != 0 {
			t.Errorf("loom %s exited %d after Ctrl-C", strings.Join(args, " "), code)
		}
	}
}

// The commands that only look or call run in shells set up with loom
// up's lines, LOOM_STATUS_PORT=-1 among them, which is for components:
// they start no status server, so they log no line about one. A failure
// names the program once.
func TestToolCommandsRunNoStatusServerAndNameLoomOnce(t *testing.T) {
	env := []string{"LOOM_DISCOVERY=memory", "LOOM_STATUS_PORT=-1", "LOOM_CLIENT_WAIT_TIMEOUT=50ms", "LOOM_LOG_LEVEL=info"}
	for _, tc := range []struct {
		args []string
		fail string // the start of the error line, if the command fails
	}{
		{[]string{"ls"}, ""},
		{[]string{"call", "nobody/is/home", "{}"}, "loom: no instances: "},
	} {
		cmd := exec.Command(loomBin, tc.args...)
		cmd.Env = append(cmd.Environ(), env...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		name := "loom " + strings.Join(tc.args, " ")
		if (err != nil) != (tc.fail != "") {
			t.Fatalf("%s: %v, want failure %v\n%s", name, err, tc.fail != "", &stderr)
		}
		if strings.Contains(stderr.String(), "status server") {
			t.Errorf("%s started a status server:\n%s", name, &stderr)
		}
		if tc.fail == "" {
			continue
		}
		last := strings.TrimSpace(stderr.String())
		last = last[strings.LastIndex(last, "\n")+1:]
		if !strings.HasPrefix(last, tc.fail) {
			t.Errorf("%s: error line %q, want it to start %q", name, last, tc.fail)
		}
	}
}

func TestErrorLineNamesLoomOnce(t *testing.T) {
	for _, tc := range []struct{ err, want string }{
		{"loom: no instances: none", "loom: no instances: none"},
		{"loom demo: --router bogus", "loom demo: --router bogus"},
		{"workqueue: closed", "loom: workqueue: closed"},
		{"loomish: x", "loom: loomish: x"},
	} {
		if got := errorLine(errors.New(tc.err)); got != tc.want {
			t.Errorf("errorLine(%q) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

// TestLoomCallStopsOnTheFirstSIGINTAndKillsOnTheSecond holds loom call to
// its help: Ctrl-C asks the handler to stop gracefully, a second Ctrl-C
// kills the call. The handler runs in this process, the call in the
// binary, over NATS KV discovery.
func TestLoomCallStopsOnTheFirstSIGINTAndKillsOnTheSecond(t *testing.T) {
	ns, err := embedded.StartNATS(embedded.NATSOptions{JetStream: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	env := []string{"NATS_SERVER=" + ns.ClientURL(), "LOOM_DISCOVERY=natskv", "LOOM_LOG_LEVEL=error"}
	cfg := config.Default()
	cfg.NATS.URL, cfg.Discovery.Backend = ns.ClientURL(), "natskv"
	ctx := context.Background()
	rt, err := loom.NewRuntime(ctx, loom.WithConfig(cfg), loom.WithLogger(quietLog()))
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Shutdown(ctx)
	ep, err := rt.Endpoint("calltest/stop/generate")
	if err != nil {
		t.Fatal(err)
	}
	type request struct {
		IgnoreStop bool `json:"ignore_stop" msgpack:"ignore_stop"`
	}
	stopSeen, killed := make(chan struct{}, 1), make(chan struct{}, 1)
	gen := loom.EngineFunc[request, string](func(ctx context.Context, r request) iter.Seq2[string, error] {
		return func(yield func(string, error) bool) {
			if !yield("started", nil) {
				return
			}
			select {
			case <-loom.Stopped(ctx):
				stopSeen <- struct{}{}
				if !r.IgnoreStop {
					yield("stopped", nil)
					return
				}
			case <-ctx.Done():
				killed <- struct{}{}
				return
			}
			<-ctx.Done()
			killed <- struct{}{}
		}
	})
	if err := loom.Serve(ctx, ep, gen); err != nil {
		t.Fatal(err)
	}
	started := func(p *loomProc) {
		t.Helper()
		testutil.Eventually(t, 30*time.Second, "loom call printing the first response", func() bool {
			out, _ := p.lines()
			return len(out) > 0
		})
	}
	within := func(what string, ch <-chan struct{}) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s did not happen within 10s", what)
		}
	}

	t.Run("one SIGINT stops the handler gracefully", func(t *testing.T) {
		p := startLoom(t, env, "call", "calltest/stop/generate", `{"ignore_stop": false}`)
		started(p)
		_ = p.cmd.Process.Signal(os.Interrupt)
		within("the handler seeing the stop", stopSeen)
		code := p.waitExit()
		out, errs := p.lines()
		if code != 0 || strings.Join(out, "\n") != `"started"`+"\n"+`"stopped"` {
			t.Errorf("exit code %d, stdout %q, stderr %q; want 0 and both responses", code, out, errs)
		}
	})
	t.Run("a second SIGINT kills the call", func(t *testing.T) {
		p := startLoom(t, env, "call", "calltest/stop/generate", `{"ignore_stop": true}`)
		started(p)
		_ = p.cmd.Process.Signal(os.Interrupt)
		within("the handler seeing the stop", stopSeen)
		_ = p.cmd.Process.Signal(os.Interrupt)
		within("the handler's context ending", killed)
		if code := p.waitExit(); code != 130 {
			out, errs := p.lines()
			t.Errorf("a killed call exited %d; stdout %q, stderr %q; want 130 (128 + SIGINT), as loom.Run exits on a second signal", code, out, errs)
		}
	})
}

// TestABadRequestOfMegabytesIsQuotedShort gives loom call a request file
// of a megabyte that is not JSON: the error quotes its start, not all of
// it onto the terminal.
func TestABadRequestOfMegabytesIsQuotedShort(t *testing.T) {
	big := strings.Repeat("[", 1<<20)
	_, err := parseJSONArg("the request", big)
	if err == nil {
		t.Fatal("a megabyte of [ parsed as JSON")
	}
	if msg := err.Error(); len(msg) > 300 || !strings.HasPrefix(msg, `the request "[[[[`) || !strings.Contains(msg, "not JSON") {
		t.Errorf("error of %d bytes: %.400s", len(msg), msg)
	}
}
