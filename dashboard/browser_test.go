//go:build browser

// The page in a real browser: headless Chromium driven with chromedp, run
// by .ci/run with -tags browser after it installs Debian's chromium.

package dashboard_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/loomrt/loom/dashboard"
	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/events"
	"github.com/loomrt/loom/internal/browsertest"
	"github.com/loomrt/loom/internal/buildinfo"
	"github.com/loomrt/loom/workqueue"
)

// live is how soon the page must show a change in discovery: the issue's
// target, measured from the change to the DOM condition holding.
const live = time.Second

func waitDOM(t *testing.T, ctx context.Context, d time.Duration, what, cond string) time.Duration {
	t.Helper()
	return browsertest.WaitDOM(t, ctx, d, what, cond, "topology")
}

func row(id uint64) string {
	return fmt.Sprintf(`document.querySelector('tr.inst[data-instance="%s"]')`, strconv.FormatUint(id, 16))
}

// The page shows instances appear and leave within a second, without a
// reload, and its charts follow the load.
func TestBrowserLive(t *testing.T) {
	s := newSystem(t)
	srv := s.dashboard(dashboard.Config{Interval: 250 * time.Millisecond})
	ctx := browsertest.Start(t)
	// The first action starts the browser; a cold start on a busy machine
	// is slow, and is not what is measured.
	if err := chromedp.Do(ctx, chromedp.Navigate(srv.URL())); err != nil {
		t.Fatal(err)
	}
	waitDOM(t, ctx, 10*time.Second, "the stream connects", `document.getElementById("conn").textContent === "live" && document.body.dataset.updated !== undefined`)
	waitDOM(t, ctx, 10*time.Second, "the empty topology", `document.getElementById("topology").innerText.includes("No instances")`)

	a := s.serveHello(nil)
	took := waitDOM(t, ctx, live, "the first instance appears", row(a.ID())+` !== null`)
	t.Logf("instance %x on the page %s after it registered", a.ID(), took)
	b := s.serveHello(nil)
	took = waitDOM(t, ctx, live, "the second instance appears", row(b.ID())+` !== null && document.querySelectorAll("tr.inst").length === 2`)
	t.Logf("instance %x on the page %s after it registered", b.ID(), took)
	waitDOM(t, ctx, 5*time.Second, "both are ready", `document.querySelectorAll("tr.inst .state.ready").length === 2`)

	// Load: calls move the requests chart and the rows' counters.
	client := s.greeter(0)
	before, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById("chart-rps").dataset.points`))
	if err != nil {
		t.Fatal(err)
	}
	calls, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for calls.Err() == nil {
			for range client.Generate(calls, Greeting{Name: "browser"}) {
			}
		}
	}()
	waitDOM(t, ctx, 10*time.Second, "the requests chart rises",
		`Number(document.getElementById("chart-rps").dataset.last) > 0 && document.querySelector("#chart-rps polyline").getAttribute("points").split(" ").length > 1`)
	stop()
	<-done
	after, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById("chart-rps").dataset.points`))
	if before == after {
		t.Errorf("the chart's points stayed at %s", before)
	}
	waitDOM(t, ctx, 5*time.Second, "the rows count requests", `[...document.querySelectorAll("tr.inst")].every(tr => Number(tr.dataset.requests) > 0)`)

	// Events and queues render too.
	pub, err := events.NewPublisher[map[string]int](context.Background(), b, events.Scope{Namespace: "dynamo", Component: "backend"}, "kv_events")
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Shutdown(context.Background())
	nc, err := nats.Connect(s.nats.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	q, err := workqueue.New[string](context.Background(), nc, workqueue.ConfigFrom(s.cfg.Queue, "prefill_queue"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := pub.Publish(context.Background(), map[string]int{"stored": i}); err != nil {
			t.Fatal(err)
		}
		if err := q.Enqueue(context.Background(), "job"); err != nil {
			t.Fatal(err)
		}
	}
	waitDOM(t, ctx, 5*time.Second, "the publisher's row", fmt.Sprintf(`(() => { const r = document.querySelector('tr[data-publisher="%x"]'); return r !== null && r.innerText.includes("kv_events"); })()`, pub.ID()))
	waitDOM(t, ctx, 5*time.Second, "the queue's row", `(() => { const r = document.querySelector('tr[data-queue="prefill_queue"]'); return r !== null && r.children[3].textContent === "3"; })()`)

	// The serving view appears once a process exports serving metrics.
	hidden, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.getElementById("serving-section").hidden`))
	if err != nil || !hidden {
		t.Errorf("the serving view shows without serving metrics (hidden %v, %v)", hidden, err)
	}
	tokens := prometheus.NewCounter(prometheus.CounterOpts{Name: "loom_llm_output_tokens_total", Help: "Tokens streamed."})
	b.Metrics().Registry().MustRegister(tokens)
	tokens.Add(42)
	waitDOM(t, ctx, 5*time.Second, "the serving view", `!document.getElementById("serving-section").hidden && document.querySelector('tr[data-family="loom_llm_output_tokens_total"]') !== null && document.getElementById("serving-tiles") !== null`)

	// LOOM_DASHBOARD_SCREENSHOT=file.png saves what the page shows now.
	if path := os.Getenv("LOOM_DASHBOARD_SCREENSHOT"); path != "" {
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// SIGTERM's path: Shutdown removes the record first, then drains.
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		shutdown(a)
	}()
	took = waitDOM(t, ctx, live, "the stopped instance leaves", row(a.ID())+` === null && `+row(b.ID())+` !== null`)
	t.Logf("instance %x gone from the page %s after its shutdown began", a.ID(), took)
	<-stopped
}

// The page shows each instance's build, the full revision and Go version
// in its title, "unknown" for a process that does not say, and a note
// while the instances run more than one build.
func TestBrowserBuilds(t *testing.T) {
	s := newSystem(t)
	srv := s.dashboard(dashboard.Config{Interval: 100 * time.Millisecond})
	ctx := browsertest.Start(t)
	if err := chromedp.Do(ctx, chromedp.Navigate(srv.URL())); err != nil {
		t.Fatal(err)
	}
	waitDOM(t, ctx, 10*time.Second, "the stream connects", `document.getElementById("conn").textContent === "live"`)

	// Null until the row is on the page: a condition that throws ends the wait.
	cell := func(id uint64) string { return "(" + row(id) + `?.querySelector(".build") ?? null)` }
	b := buildinfo.Read()
	a := s.serveHello(nil)
	waitDOM(t, ctx, 10*time.Second, "the running build", fmt.Sprintf(`%s !== null && %s !== null && %[2]s.dataset.version === %q && document.getElementById("builds").hidden`, row(a.ID()), cell(a.ID()), b.Version))

	reg := s.runtime()
	oldAddr := metricsServer(t, olderBuild)
	o1 := register(t, reg, "greet", oldAddr)
	o2 := register(t, reg, "wave", oldAddr)
	waitDOM(t, ctx, 10*time.Second, "the older build, its revision short and in full in the title", fmt.Sprintf(
		`(() => { const c = %s; return c !== null && c.textContent === "v0.3.0 · 0123456789ab" && c.title.includes("0123456789abcdef0123456789abcdef01234567") && c.title.includes("go1.25.4"); })()`, cell(o1.ID)))
	note := fmt.Sprintf("2 builds running: v0.3.0 · 0123456789ab on 2 instances, %s on 1 instance", b.Version)
	if b.Revision != "" {
		note = fmt.Sprintf("2 builds running: v0.3.0 · 0123456789ab on 2 instances, %s · %.12s on 1 instance", b.Version, b.Revision)
	}
	waitDOM(t, ctx, 10*time.Second, "the note of two builds", fmt.Sprintf(`(() => { const n = document.getElementById("builds"); return !n.hidden && n.textContent === %q; })()`, note))

	n := register(t, reg, "greet", metricsServer(t, noBuild))
	waitDOM(t, ctx, 10*time.Second, "unknown for a process that does not say", fmt.Sprintf(
		`(() => { const c = %s; return c !== null && c.textContent === "unknown" && %s?.innerText.includes("3") && document.getElementById("builds").dataset.builds === "3"; })()`, cell(n.ID), row(n.ID)))
	waitDOM(t, ctx, 10*time.Second, "the processes' builds", fmt.Sprintf(
		`(() => { const r = document.querySelector('tr[data-process="%s"]'); return r !== null && r.innerText.includes("v0.3.0"); })()`, oldAddr))

	// Many builds: the note names six, and says how many more.
	gone := []discovery.Instance{o1, o2, n}
	for i := range 5 {
		text := fmt.Sprintf("loom_build_info{version=\"v0.2.%d\"} 1\n", i)
		gone = append(gone, register(t, reg, "greet", metricsServer(t, text)))
	}
	waitDOM(t, ctx, 10*time.Second, "the note of eight builds", `(() => { const n = document.getElementById("builds"); return n.textContent.startsWith("8 builds running: v0.3.0 · 0123456789ab on 2 instances, ") && n.textContent.endsWith(", 2 more") && n.querySelectorAll("b").length === 6; })()`)

	for _, inst := range gone {
		if err := reg.Discovery().Unregister(context.Background(), inst); err != nil {
			t.Fatal(err)
		}
	}
	waitDOM(t, ctx, 10*time.Second, "no note with one build", `document.getElementById("builds").hidden && document.querySelectorAll("tr.inst").length === 1`)
}
