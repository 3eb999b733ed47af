//go:build browser

package e2e

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/internal/browsertest"
)

// live is how soon the page must show a server that started or stopped:
// the target, measured here from the server printing that it
// serves (it is registered) and from its SIGTERM.
const live = time.Second

// TestBrowserDashboardFollowsProcesses runs what an operator runs — loom
// up, two hello servers with its environment and loom dashboard, as
// processes — and watches the page in headless Chromium: each server is
// listed within a second of registering, and one that gets SIGTERM leaves
// within a second, without a reload. What the page shows agrees with
// loom ls --json and with the servers' own /metrics.
func TestBrowserDashboardFollowsProcesses(t *testing.T) {
	c := up(t, "etcd")
	env := append(c.componentEnv(10*time.Second), "LOOM_STATUS_PORT=-1")
	dash := start(t, env, "loom", "dashboard", "--addr", "127.0.0.1:0", "--nats-monitor", "off")
	url := waitStderr(t, dash, regexp.MustCompile(`loom dashboard: (http://\S+) `))

	ctx := browsertest.Start(t)
	if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
		t.Fatal(err)
	}
	browsertest.WaitDOM(t, ctx, 30*time.Second, "the page is live", `document.getElementById("conn").textContent === "live" && document.getElementById("topology").innerText.includes("No instances")`, "topology")

	var servers []*proc
	var ids []string
	for i := 1; i <= 2; i++ {
		s := start(t, env, "hello", "server")
		line := s.waitLine("serving hello/greeter/greet as instance ", 30*time.Second)
		id := strings.TrimPrefix(line, "serving hello/greeter/greet as instance ")
		took := browsertest.WaitDOM(t, ctx, live, fmt.Sprintf("server %d (%s) is listed", i, id),
			fmt.Sprintf(`document.querySelector('tr.inst[data-instance="%s"]') !== null && document.querySelectorAll("tr.inst").length === %d`, id, i), "topology")
		t.Logf("server %d (%s) listed %s after it said it serves", i, id, took)
		servers, ids = append(servers, s), append(ids, id)
	}
	// The page reads each server's status server: both ready, with load data.
	browsertest.WaitDOM(t, ctx, 10*time.Second, "both servers ready", `document.querySelectorAll("tr.inst .state.ready").length === 2`, "topology")

	// The page agrees with loom ls --json: the same instances at the same
	// addresses over the same transport.
	list := ls(t, env, "hello/greeter/greet")
	if len(list) != 2 {
		t.Fatalf("loom ls --json lists %d instances of hello/greeter/greet, want 2: %+v", len(list), list)
	}
	for _, inst := range list {
		row := fmt.Sprintf(`document.querySelector('tr.inst[data-instance="%x"]')`, inst.ID)
		browsertest.WaitDOM(t, ctx, 5*time.Second, fmt.Sprintf("instance %x shown as loom ls --json lists it (%s at %s)", inst.ID, inst.Transport, inst.Address),
			fmt.Sprintf(`%s !== null && %s.cells[2].textContent === %q && %s.cells[1].textContent.startsWith(%q)`, row, row, inst.Address, row, inst.Transport), "topology")
	}
	// After some calls, each instance's request count on the page is
	// what its own /metrics says.
	client := start(t, env, "hello", "client", "-calls", "20", "-concurrency", "4")
	if code := client.wait(30 * time.Second); code != 0 {
		_, errOut := client.output()
		t.Fatalf("hello client exited %d; stderr:\n%s", code, errOut)
	}
	total := 0
	for _, inst := range list {
		n := requestsServed(t, inst.Metadata[loom.MetadataStatusAddr])
		total += n
		browsertest.WaitDOM(t, ctx, 10*time.Second, fmt.Sprintf("instance %x shows the %d requests its /metrics counts", inst.ID, n),
			fmt.Sprintf(`(document.querySelector('tr.inst[data-instance="%x"]') || {dataset: {}}).dataset.requests === "%d"`, inst.ID, n), "topology")
	}
	if total < 20 {
		t.Errorf("the instances' /metrics count %d requests served, want at least the client's 20", total)
	}

	servers[0].signal(syscall.SIGTERM)
	took := browsertest.WaitDOM(t, ctx, live, "the stopped server leaves",
		fmt.Sprintf(`document.querySelector('tr.inst[data-instance="%s"]') === null && document.querySelector('tr.inst[data-instance="%s"]') !== null`, ids[0], ids[1]), "topology")
	t.Logf("server %s gone %s after SIGTERM", ids[0], took)
	if code := servers[0].wait(20 * time.Second); code != 0 {
		t.Errorf("the stopped server exited %d", code)
	}
	servers[1].signal(syscall.SIGTERM)
	servers[1].wait(20 * time.Second)
	dash.signal(syscall.SIGTERM)
	if code := dash.wait(20 * time.Second); code != 0 {
		_, errOut := dash.output()
		t.Errorf("loom dashboard exited %d; stderr:\n%s", code, errOut)
	}
	c.stop()
}

// requestsServed reads loom_requests_total of hello/greeter/greet, every
// code, from the /metrics of the status server at addr.
func requestsServed(t *testing.T, addr string) int {
	t.Helper()
	if addr == "" {
		t.Fatal("the instance's record has no status address; the servers run with LOOM_STATUS_PORT=-1")
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, "loom_requests_total{") || !strings.Contains(line, `endpoint="greet"`) {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			t.Fatalf("/metrics line %q: %v", line, err)
		}
		n += int(v)
	}
	return n
}

// waitStderr waits for a line of p's standard error matching re and
// returns its first group.
func waitStderr(t *testing.T, p *proc, re *regexp.Regexp) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		_, errOut := p.output()
		if m := re.FindStringSubmatch(errOut); m != nil {
			return m[1]
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited (%v) before printing %s; stderr:\n%s", p.name, p.err, re, errOut)
		case <-time.After(10 * time.Millisecond):
		}
	}
	_, errOut := p.output()
	t.Fatalf("%s did not print %s within 30s; stderr:\n%s", p.name, re, errOut)
	return ""
}
