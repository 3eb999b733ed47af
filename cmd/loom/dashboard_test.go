package main

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/loomrt/loom/embedded"
)

// TestLoomDashboardWithLoomUp runs `loom dashboard` with the environment
// `loom up` prints and reads its page and data.
func TestLoomDashboardWithLoomUp(t *testing.T) {
	up := startLoom(t, nil, "up", "--nats-port", "0", "--monitor-port", "0", "--discovery", "natskv", "--data-dir", t.TempDir())
	up.waitStderr(`^loom up: serving`)
	// Standard output is read apart from standard error: its lines may
	// come a moment later.
	var env []string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		env, _ = up.lines()
		if strings.Contains(strings.Join(env, "\n"), "LOOM_STATUS_PORT=-1") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("loom up printed %q, lacking LOOM_STATUS_PORT=-1", env)
		}
	}
	// At info, a status server would say where it listens: the
	// dashboard serves no endpoint and runs none, despite
	// LOOM_STATUS_PORT=-1.
	dash := startLoom(t, append(env, "LOOM_LOG_LEVEL=info"), "dashboard", "--addr", "127.0.0.1:0", "--nats-monitor", "off")
	url := dash.waitStderr(`^loom dashboard: (http://127\.0\.0\.1:\d+) \(natskv discovery, NATS nats://`)[1]
	if _, errs := dash.lines(); strings.Contains(strings.Join(errs, "\n"), "status server") {
		t.Errorf("loom dashboard started a status server:\n%s", strings.Join(errs, "\n"))
	}

	resp, err := http.Get(url + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), "<title>Loom dashboard</title>") {
		t.Fatalf("GET /: %s\n%.300s", resp.Status, page)
	}
	for _, asset := range []string{"/app.js", "/style.css"} {
		resp, err := http.Get(url + asset)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %s", asset, resp.Status)
		}
	}
	resp, err = http.Get(url + "/api/state")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Discovery string `json:"discovery"`
		NATS      struct {
			URL string `json:"url"`
		} `json:"nats"`
	}
	err = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if err != nil || st.Discovery != "natskv" || !strings.HasPrefix(st.NATS.URL, "nats://127.0.0.1:") {
		t.Fatalf("GET /api/state: %v %+v", err, st)
	}
	_ = dash.cmd.Process.Signal(syscall.SIGTERM)
	dash.exit()
	_ = up.cmd.Process.Signal(syscall.SIGTERM)
	up.exit()
}

// TestLLMUpServesTheDashboard runs `loom llm up --dashboard` and sees the
// serving view follow a chat completion.
func TestLLMUpServesTheDashboard(t *testing.T) {
	p := startLoom(t, nil, "llm", "up", "--port", "0", "--dashboard", "127.0.0.1:0")
	var api, dash string
	deadline := time.Now().Add(60 * time.Second)
	for (api == "" || dash == "") && time.Now().Before(deadline) {
		out, _ := p.lines()
		for _, l := range out {
			if v, ok := strings.CutPrefix(l, "OPENAI_BASE_URL="); ok {
				api = v
			}
			if v, ok := strings.CutPrefix(l, "dashboard at "); ok {
				dash = v
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if api == "" || dash == "" {
		out, errs := p.lines()
		t.Fatalf("loom llm up --dashboard printed no API or dashboard URL:\n%q\n%q", out, errs)
	}
	body := `{"model":"mock-model","max_tokens":5,"messages":[{"role":"user","content":"hello there"}]}`
	resp, err := http.Post(api+"/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("chat completion: %s", resp.Status)
	}
	type summary struct {
		Workers   int      `json:"workers"`
		TTFTP50   *float64 `json:"ttft_p50_ms"`
		Reporting int      `json:"reporting_workers"`
	}
	var st struct {
		Serving struct {
			Summary  summary `json:"summary"`
			Families []struct {
				Name  string  `json:"name"`
				Value float64 `json:"value"`
			} `json:"families"`
		} `json:"serving"`
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		resp, err := http.Get(dash + "/api/state")
		if err != nil {
			t.Fatal(err)
		}
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		requests := 0.0
		for _, f := range st.Serving.Families {
			if f.Name == "loom_llm_requests_total" {
				requests = f.Value
			}
		}
		if s := st.Serving.Summary; requests == 1 && s.Workers == 2 && s.Reporting == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the dashboard's serving view did not show 1 request from 2 workers: %+v", st.Serving)
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	p.exit()
}

// TestDashboardFlagsAreTheDocumented holds docs/dashboard.md's table of
// flags to the command's: every flag listed, with its default (a default
// the table words in prose, such as "none", is an empty one).
func TestDashboardFlagsAreTheDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/dashboard.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("^\\| `--([a-z-]+)[^`]*` \\| ([^|]*) \\|")
	flags := newDashboard().Flags()
	listed := map[string]bool{}
	for _, line := range strings.Split(string(doc), "\n") {
		m := row.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		name, def := m[1], strings.TrimSpace(m[2])
		listed[name] = true
		f := flags.Lookup(name)
		if f == nil {
			t.Errorf("docs/dashboard.md lists --%s; loom dashboard has no such flag", name)
			continue
		}
		got := strings.Trim(f.DefValue, "[]")
		want := ""
		if strings.HasPrefix(def, "`") || def == "false" || def == "true" {
			want = strings.Trim(def, "`")
		}
		if got != want {
			t.Errorf("--%s: docs/dashboard.md gives the default %s, the command %q", name, def, f.DefValue)
		}
	}
	flags.VisitAll(func(f *pflag.Flag) {
		if !listed[f.Name] {
			t.Errorf("--%s is missing from docs/dashboard.md's table of flags", f.Name)
		}
	})
}

// TestDashboardRefusesBadFlagValuesNamingThem runs loom dashboard with a
// URL that is not one and an interval that is not positive: a usage error
// naming the flag, not a page that fails every read or a silent default.
func TestDashboardRefusesBadFlagValuesNamingThem(t *testing.T) {
	env := []string{"NATS_SERVER=nats://127.0.0.1:1", "LOOM_DISCOVERY=memory"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--interval", "0s"}, "--interval 0s: want more than 0"},
		{[]string{"--interval", "-1s"}, "--interval -1s: want more than 0"},
		{[]string{"--nats-monitor", "127.0.0.1:8222"}, `--nats-monitor "127.0.0.1:8222": want an http:// or https:// URL`},
		{[]string{"--scrape", "http://127.0.0.1:9/metrics", "--scrape", "not a url"}, `--scrape "not a url": want an http:// or https:// URL`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			p := startLoom(t, env, append([]string{"dashboard", "--addr", "127.0.0.1:0"}, tc.args...)...)
			code := p.waitExit()
			_, errs := p.lines()
			stderr := strings.Join(errs, "\n")
			if code != 2 || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit code %d, stderr:\n%s\nwant 2 and %q", code, stderr, tc.want)
			}
		})
	}
}

// TestATakenPageAddressNamesTheFlagThatSetIt serves the page on a taken
// port from each command that serves it: the error must name that
// command's flag, not another command's.
func TestATakenPageAddressNamesTheFlagThatSetIt(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	addr := l.Addr().String()
	ns, err := embedded.StartNATS(embedded.NATSOptions{JetStream: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	env := []string{"NATS_SERVER=" + ns.ClientURL(), "LOOM_DISCOVERY=memory"}
	for _, tc := range []struct {
		args []string
		flag string
	}{
		{[]string{"dashboard", "--addr", addr, "--nats-monitor", "off"}, "--addr"},
		{[]string{"demo", "--serve", "--requests", "5", "--instances", "1", "--dashboard", addr}, "--dashboard"},
		{[]string{"llm", "up", "--port", "0", "--workers", "1", "--dashboard", addr}, "--dashboard"},
	} {
		t.Run(strings.Join(tc.args[:2], " "), func(t *testing.T) {
			p := startLoom(t, env, tc.args...)
			code := p.waitExit()
			_, errs := p.lines()
			stderr := strings.Join(errs, "\n")
			other := map[string]string{"--addr": "--dashboard", "--dashboard": "--addr"}[tc.flag]
			if code != 1 || !strings.Contains(stderr, addr) || !strings.Contains(stderr, "address already in use") ||
				!strings.Contains(stderr, "choose another address with "+tc.flag) || strings.Contains(stderr, "with "+other) {
				t.Errorf("exit code %d, stderr:\n%s\nwant 1, %s in use, and to choose another address with %s", code, stderr, addr, tc.flag)
			}
		})
	}
}

// TestAPageAddressThatCannotBeOneIsAUsageError gives loom dashboard --addr
// and loom demo --serve --dashboard an address that is not host:port: a
// usage error naming the flag, not a failure after the demo's batch that
// named --addr for demo, which has none.
func TestAPageAddressThatCannotBeOneIsAUsageError(t *testing.T) {
	env := []string{"NATS_SERVER=nats://127.0.0.1:1", "LOOM_DISCOVERY=memory"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"dashboard", "--addr", "127.0.0.1:99999"}, `--addr "127.0.0.1:99999": want host:port`},
		{[]string{"dashboard", "--addr", "8090"}, `--addr "8090": want host:port`},
		{[]string{"demo", "--serve", "--requests", "5", "--dashboard", "127.0.0.1:99999"}, `--dashboard "127.0.0.1:99999": want host:port`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			p := startLoom(t, env, tc.args...)
			code := p.waitExit()
			_, errs := p.lines()
			stderr := strings.Join(errs, "\n")
			if code != 2 || !strings.Contains(stderr, tc.want) || !strings.Contains(stderr, "usage: loom "+tc.args[0]) {
				t.Errorf("exit code %d, stderr:\n%s\nwant 2, %q and the usage line", code, stderr, tc.want)
			}
		})
	}
}

// TestPagesOnEveryAddressNameALoopbackURL runs loom dashboard and loom llm
// up listening on every address (0.0.0.0). They printed
// http://0.0.0.0:... or http://[::]:..., listen addresses that no browser
// or client should be given: they must name 127.0.0.1, say that they
// listen on every address, and answer there.
func TestPagesOnEveryAddressNameALoopbackURL(t *testing.T) {
	ns, err := embedded.StartNATS(embedded.NATSOptions{JetStream: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	get := func(url string) {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatalf("a URL printed: %v", err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %s", url, resp.Status)
		}
	}
	const note = "listening on every address"

	dash := startLoom(t, []string{"NATS_SERVER=" + ns.ClientURL(), "LOOM_DISCOVERY=natskv"}, "dashboard", "--addr", "0.0.0.0:0", "--nats-monitor", "off")
	m := dash.waitStderr(`^loom dashboard: (http://\S+) \((.*)\); Ctrl-C to stop`)
	if !regexp.MustCompile(`^http://127\.0\.0\.1:\d+$`).MatchString(m[1]) || !strings.Contains(m[2], note) {
		t.Errorf("loom dashboard --addr 0.0.0.0:0 printed %q; want http://127.0.0.1:port and %q", m[0], note)
	}
	get(m[1] + "/api/state")
	_ = dash.cmd.Process.Signal(syscall.SIGTERM)
	dash.exit()

	llm := startLoom(t, nil, "llm", "up", "--host", "0.0.0.0", "--port", "0", "--dashboard", "0.0.0.0:0")
	api := llm.waitStdout(`^OpenAI API at (http://\S+) \((.*)\); Ctrl-C stops`)
	base := llm.waitStdout(`^OPENAI_BASE_URL=(.*)`)[1]
	page := llm.waitStdout(`^dashboard at (http://\S+)(.*)`)
	if !regexp.MustCompile(`^http://127\.0\.0\.1:\d+/v1$`).MatchString(api[1]) || base != api[1] || !strings.Contains(api[2], note) {
		t.Errorf("loom llm up --host 0.0.0.0 printed %q and OPENAI_BASE_URL=%s; want http://127.0.0.1:port/v1 in both and %q", api[0], base, note)
	}
	if !regexp.MustCompile(`^http://127\.0\.0\.1:\d+$`).MatchString(page[1]) || !strings.Contains(page[2], note) {
		t.Errorf("loom llm up --dashboard 0.0.0.0:0 printed %q; want http://127.0.0.1:port and %q", page[0], note)
	}
	get(base + "/models")
	get(page[1] + "/api/state")
	_ = llm.cmd.Process.Signal(syscall.SIGTERM)
	llm.exit()
}
