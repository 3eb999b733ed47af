package dashboard_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"iter"
	"maps"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/dashboard"
	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/events"
	"github.com/loomrt/loom/llm"
	"github.com/loomrt/loom/workqueue"
)

// The page lists what discovery lists, field for field, and follows
// instances as they come and go.
func TestInstancesFollowDiscovery(t *testing.T) {
	s := newSystem(t)
	srv := s.dashboard(dashboard.Config{})
	waitState(t, srv, 10*time.Second, "the first snapshot", func(st dashboard.State) bool { return st.Synced })

	a := s.serveHello(nil)
	b := s.serveHello(nil)
	st := waitState(t, srv, 5*time.Second, "two instances", func(st dashboard.State) bool { return len(st.Instances) == 2 })

	// What `loom ls --json` prints is the discovery List.
	list, err := a.Discovery().List(context.Background(), discovery.Query{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 {
		t.Fatalf("discovery lists %d instances, want 2", len(list))
	}
	for _, rec := range list {
		got := instance(st, rec.ID)
		if got == nil {
			t.Fatalf("instance %x is in discovery, not on the page", rec.ID)
		}
		if got.Namespace != rec.Namespace || got.Component != rec.Component || got.Endpoint != rec.Endpoint ||
			got.Transport != rec.Transport || got.Address != rec.Address || got.Codec != rec.Codec || got.TLS != rec.TLS ||
			!maps.Equal(got.Metadata, rec.Metadata) {
			t.Errorf("page shows %+v; discovery has %+v", *got, rec)
		}
		if got.ID != strconv.FormatUint(rec.ID, 16) {
			t.Errorf("hex id %q, key %s", got.ID, rec.Key())
		}
		if got.StatusAddr == "" || got.StatusAddr != rec.Metadata[loom.MetadataStatusAddr] {
			t.Errorf("status_addr %q, record metadata %v", got.StatusAddr, rec.Metadata)
		}
		if !got.Age.Known() || got.Age < 0 || got.Age > 60 || got.RegisteredAt == nil {
			t.Errorf("age %v registered_at %v", got.Age, got.RegisteredAt)
		}
	}
	for _, rt := range []*loom.Runtime{a, b} {
		if want := rt.StatusAddr(); instance(st, rt.ID()).StatusAddr != want {
			t.Errorf("instance %x: status_addr %q, its runtime's status server is %s", rt.ID(), instance(st, rt.ID()).StatusAddr, want)
		}
	}
	st = waitState(t, srv, 5*time.Second, "both ready", func(st dashboard.State) bool {
		return len(st.Instances) == 2 && st.Instances[0].State == "ready" && st.Instances[1].State == "ready"
	})
	if st.Totals.Instances != 2 || st.Totals.Endpoints != 1 || st.Totals.Processes != 2 {
		t.Errorf("totals %+v, want 2 instances of 1 endpoint in 2 processes", st.Totals)
	}

	shutdown(a)
	st = waitState(t, srv, 5*time.Second, "the stopped instance to leave", func(st dashboard.State) bool { return len(st.Instances) == 1 })
	if st.Instances[0].InstanceID != b.ID() {
		t.Errorf("left %x, want %x", st.Instances[0].InstanceID, b.ID())
	}
}

// The load the page shows is what the instances' /metrics say.
func TestLoadAgreesWithMetrics(t *testing.T) {
	s := newSystem(t)
	release := make(chan struct{})
	a := s.serveHello(release)
	b := s.serveHello(release)
	srv := s.dashboard(dashboard.Config{Interval: 100 * time.Millisecond})
	client := s.greeter(2)

	// Six held requests, three on each instance (round robin): in flight.
	var wg sync.WaitGroup
	for range 6 {
		wg.Go(func() {
			for _, err := range client.Generate(context.Background(), Greeting{Name: "you"}) {
				if err != nil {
					t.Error(err)
				}
			}
		})
	}
	waitState(t, srv, 5*time.Second, "6 requests in flight", func(st dashboard.State) bool {
		return st.Totals.InFlight == 6 && len(st.Instances) == 2 && st.Instances[0].Load != nil && st.Instances[0].Load.InFlight == 3
	})
	close(release)
	wg.Wait()
	for range 4 {
		for _, err := range client.Generate(context.Background(), Greeting{Name: "fail"}) {
			if err == nil {
				t.Fatal("a failing request did not fail")
			}
		}
	}

	st := waitState(t, srv, 5*time.Second, "10 requests done, 4 failed", func(st dashboard.State) bool {
		return st.Totals.InFlight == 0 && sum(st, func(l *dashboard.Load) dashboard.Num { return l.Requests }) == 10 &&
			sum(st, func(l *dashboard.Load) dashboard.Num { return l.Errors }) == 4
	})
	for _, rt := range []*loom.Runtime{a, b} {
		m := scrape(t, rt.StatusAddr())
		l := instance(st, rt.ID()).Load
		total := m["ok"] + m["error"] + m["panic"] + m["cancelled"] + m["refused"]
		if float64(l.Requests) != total || float64(l.Errors) != m["error"]+m["panic"] {
			t.Errorf("instance %x: page says %v requests, %v errors; its /metrics %v", rt.ID(), l.Requests, l.Errors, m)
		}
		if !l.P50.Known() || !l.P99.Known() || l.P50 > l.P99 {
			t.Errorf("instance %x: p50 %v p99 %v", rt.ID(), l.P50, l.P99)
		}
	}
	// The rates fall back to zero once nothing happens, and the history
	// has seen them above zero.
	st = waitState(t, srv, 5*time.Second, "the rate to fall to 0", func(st dashboard.State) bool {
		return st.Totals.RequestsPerSec == 0
	})
	peak := dashboard.Num(0)
	for _, p := range st.History {
		if p.RequestsPerSec.Known() {
			peak = max(peak, p.RequestsPerSec)
		}
	}
	if peak <= 0 {
		t.Errorf("history never shows a request rate above 0: %+v", st.History)
	}
}

func sum(st dashboard.State, f func(*dashboard.Load) dashboard.Num) dashboard.Num {
	var n dashboard.Num
	for _, i := range st.Instances {
		if i.Load != nil {
			n += f(i.Load)
		}
	}
	return n
}

// scrape reads loom_requests_total by code from a status server.
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, m := range fams["loom_requests_total"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "code" {
				out[l.GetValue()] += m.GetCounter().GetValue()
			}
		}
	}
	return out
}

// /api/stream sends the state at once, then a new one within moments of
// a change.
func TestStreamSendsChanges(t *testing.T) {
	s := newSystem(t)
	srv := s.dashboard(dashboard.Config{Interval: time.Hour}) // only discovery changes send
	waitState(t, srv, 10*time.Second, "the first snapshot", func(st dashboard.State) bool { return st.Synced })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL()+"/api/stream", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q", ct)
	}
	states := make(chan dashboard.State, 16)
	go func() {
		defer close(states)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		event := ""
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "event: "):
				event = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				var st dashboard.State
				if event != "state" || json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &st) != nil {
					t.Errorf("bad event %q: %.200s", event, line)
					return
				}
				states <- st
			}
		}
	}()
	next := func(what string, cond func(dashboard.State) bool) {
		t.Helper()
		timeout := time.After(5 * time.Second)
		for {
			select {
			case st, ok := <-states:
				if !ok {
					t.Fatalf("stream ended waiting for %s", what)
				}
				if cond(st) {
					return
				}
			case <-timeout:
				t.Fatalf("no event with %s", what)
			}
		}
	}
	next("the current state", func(st dashboard.State) bool { return st.Synced && len(st.Instances) == 0 })
	rt := s.serveHello(nil)
	next("the new instance", func(st dashboard.State) bool { return len(st.Instances) == 1 && st.Instances[0].InstanceID == rt.ID() })
	shutdown(rt)
	next("the instance gone", func(st dashboard.State) bool { return len(st.Instances) == 0 })
}

// The event view follows each publisher's sequence and shows its gaps.
func TestEventsPerPublisher(t *testing.T) {
	s := newSystem(t)
	pubRT := s.serveHello(nil) // it serves, so its status server is in discovery
	srv := s.dashboard(dashboard.Config{Interval: 100 * time.Millisecond})
	waitState(t, srv, 10*time.Second, "the event subscription", func(st dashboard.State) bool { return st.Events.Pattern != "" })

	pub, err := events.NewPublisher[map[string]int](context.Background(), pubRT, events.Scope{Namespace: "dynamo", Component: "backend"}, "kv_events")
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Shutdown(context.Background())
	for i := range 5 {
		if err := pub.Publish(context.Background(), map[string]int{"stored": i}); err != nil {
			t.Fatal(err)
		}
	}
	// A publisher whose sequence skips 3..6: four events lost.
	nc, err := nats.Connect(s.nats.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	subject, _ := events.Subject(events.Scope{Namespace: "dynamo", Component: "router"}, "load_metrics")
	for _, seq := range []uint64{0, 1, 2, 7} {
		env := events.Envelope{PublisherID: 0xabc, InstanceID: 0x123, Sequence: seq, PublishedAt: time.Now().UnixNano(), Topic: "load_metrics", Payload: []byte(`{"load": 1}`)}
		if err := nc.Publish(subject, env.AppendJSON(nil)); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	st := waitState(t, srv, 5*time.Second, "both publishers", func(st dashboard.State) bool {
		if len(st.Events.Publishers) != 2 {
			return false
		}
		return st.Events.Publishers[0].Events == 5 && st.Events.Publishers[1].Events == 4
	})
	kv, lm := st.Events.Publishers[0], st.Events.Publishers[1]
	if kv.Subject != "namespace.dynamo.component.backend.kv_events" || kv.Topic != "kv_events" || kv.Sequence != 4 || kv.Gaps != 0 || kv.Lost != 0 {
		t.Errorf("kv_events publisher: %+v", kv)
	}
	if kv.InstanceID != strconv.FormatUint(pubRT.ID(), 16) {
		t.Errorf("kv_events publisher has no instance id: %+v", kv)
	}
	if lm.ID != "abc" || lm.InstanceID != "123" || lm.Codec != "json" || lm.Sequence != 7 || lm.Gaps != 1 || lm.Lost != 4 {
		t.Errorf("load_metrics publisher: %+v, want id abc, instance 123, 1 gap of 4", lm)
	}
	if st.Events.Received != 9 || st.Events.Lost != 4 {
		t.Errorf("subscription received %d lost %d, want 9 and 4", st.Events.Received, st.Events.Lost)
	}
	// The publishing runtime's own counters, scraped from its /metrics.
	st = waitState(t, srv, 5*time.Second, "the publisher's counters", func(st dashboard.State) bool {
		return len(st.Events.Published) == 1 && st.Events.Published[0].Published == 5
	})
	if p := st.Events.Published[0]; p.Subject != kv.Subject || p.Transport != "nats" {
		t.Errorf("published: %+v", p)
	}
}

// The queue view is what workqueue.Admin reports.
func TestQueues(t *testing.T) {
	s := newSystem(t)
	nc, err := nats.Connect(s.nats.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	q, err := workqueue.New[string](context.Background(), nc, workqueue.ConfigFrom(s.cfg.Queue, "dash_jobs"))
	if err != nil {
		t.Fatal(err)
	}
	for _, j := range []string{"a", "b", "c"} {
		if err := q.Enqueue(context.Background(), j); err != nil {
			t.Fatal(err)
		}
	}
	srv := s.dashboard(dashboard.Config{Interval: 100 * time.Millisecond})
	st := waitState(t, srv, 5*time.Second, "the queue", func(st dashboard.State) bool {
		return len(st.Queues.Queues) == 1 && st.Queues.Queues[0].Jobs == 3
	})
	qi := st.Queues.Queues[0]
	if qi.Name != "dash_jobs" || qi.Pending != 3 || qi.DeadLetters != 0 || st.Totals.QueueJobs != 3 || st.Totals.DeadLetters != 0 {
		t.Errorf("queue %+v totals %+v", qi, st.Totals)
	}
	// Looking at a queue that no worker consumes yet costs the server no
	// API error: the count stays put over several looks.
	// (The count is taken after a few looks, once the system's start-up
	// calls are done.)
	apiTotal := func(st dashboard.State) uint64 {
		if st.NATS.JetStream == nil {
			return 0
		}
		return st.NATS.JetStream.APITotal
	}
	st = waitState(t, srv, 5*time.Second, "JetStream's API counts", func(st dashboard.State) bool { return apiTotal(st) > 0 })
	first := apiTotal(st)
	st = waitState(t, srv, 5*time.Second, "a few looks", func(st dashboard.State) bool { return apiTotal(st) > first+10 })
	errs, total := st.NATS.JetStream.APIErrors, st.NATS.JetStream.APITotal
	waitState(t, srv, 5*time.Second, "more looks", func(st dashboard.State) bool { return apiTotal(st) > total+10 })
	if st = getState(t, srv); st.NATS.JetStream.APIErrors != errs {
		t.Errorf("JetStream API errors went from %d to %d while the dashboard looked at the queue", errs, st.NATS.JetStream.APIErrors)
	}
}

// The NATS view reads the monitoring endpoint and JetStream.
func TestNATSHealth(t *testing.T) {
	s := newSystem(t)
	srv := s.dashboard(dashboard.Config{Interval: 100 * time.Millisecond})
	st := waitState(t, srv, 5*time.Second, "NATS rates", func(st dashboard.State) bool { return st.NATS.InMsgsPerSec.Known() })
	n := st.NATS
	if !n.Connected || n.Monitor != s.nats.MonitorURL() || n.ServerID != s.nats.Server().ID() || !n.RTT.Known() ||
		n.Connections < 1 || n.JetStream == nil || n.JetStream.Streams < 1 {
		t.Errorf("nats: %+v (JetStream %+v)", n, n.JetStream)
	}

	// Without the monitoring endpoint, JetStream's account info remains.
	srv2 := s.dashboard(dashboard.Config{Interval: 100 * time.Millisecond, NATSMonitorURL: "off"})
	st = waitState(t, srv2, 5*time.Second, "JetStream info", func(st dashboard.State) bool { return st.NATS.JetStream != nil })
	if st.NATS.Monitor != "" || st.NATS.MonitorError == "" || st.NATS.Connections.Known() {
		t.Errorf("nats without monitoring: %+v", st.NATS)
	}
}

// The serving view shows the families with a serving prefix, from the
// status servers and from extra metrics URLs (a frontend that serves no
// endpoint), the LLM frontend's and its KV router's by default, and sums
// the frontend's into its headline.
func TestServingFamilies(t *testing.T) {
	s := newSystem(t)
	rt := s.serveHello(nil)
	promCounter(t, rt.Metrics().Registry(), "loom_llm_output_tokens_total").Add(7)

	// The frontend's own /metrics, as llm/frontend serves it.
	reg := prometheus.NewRegistry()
	reqs := promCounter(t, reg, "loom_llm_requests_total")
	promCounter(t, reg, "loom_kvrouter_resyncs_total").Add(64) // its KV router's
	ttft := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "loom_llm_time_to_first_token_seconds", Help: "TTFT.", Buckets: []float64{0.01, 0.02, 0.04}})
	reg.MustRegister(ttft)
	front := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer front.Close()

	worker := s.runtime()
	ep, err := worker.Endpoint("dynamo/backend/generate")
	if err != nil {
		t.Fatal(err)
	}
	if err := loom.Serve(context.Background(), ep, loom.EngineFunc[Greeting, Word](func(ctx context.Context, g Greeting) iter.Seq2[Word, error] {
		return func(yield func(Word, error) bool) {}
	})); err != nil {
		t.Fatal(err)
	}

	srv := s.dashboard(dashboard.Config{Interval: 100 * time.Millisecond, Scrape: []string{front.URL + "/metrics"}})
	waitState(t, srv, 5*time.Second, "the serving families", func(st dashboard.State) bool {
		return len(st.Serving.Families) == 4 && st.Serving.Summary.RequestsPerSec.Known()
	})
	// Ten requests, each with a first token between 10 and 20 ms.
	for range 10 {
		reqs.Inc()
		ttft.Observe(0.015)
	}
	st := waitState(t, srv, 5*time.Second, "the TTFT of the new requests", func(st dashboard.State) bool {
		return st.Serving.Summary.TTFTP50.Known()
	})
	found := false
	for _, p := range st.Processes {
		if p.Target == front.URL+"/metrics" {
			found = true
			if p.Instances == nil || len(p.Instances) != 0 || p.Error != "" {
				t.Errorf("the --scrape target: %+v, want no instances (an empty list) and no error", p)
			}
		}
	}
	if !found {
		t.Errorf("the --scrape target is not among the processes: %+v", st.Processes)
	}
	m := st.Serving.Summary
	if m.Workers != 1 || m.TTFTP50 < 10 || m.TTFTP50 > 20 || m.TTFTP99 < 10 || m.TTFTP99 > 20 || m.KVHitRate.Known() {
		t.Errorf("summary %+v", m)
	}
	for _, f := range st.Serving.Families {
		want := map[string]dashboard.Num{"loom_llm_output_tokens_total": 7, "loom_llm_requests_total": 10, "loom_llm_time_to_first_token_seconds": 10, "loom_kvrouter_resyncs_total": 64}[f.Name]
		if f.Value != want || f.Processes != 1 {
			t.Errorf("family %+v, want value %v", f, want)
		}
	}
}

func promCounter(t *testing.T, reg *prometheus.Registry, name string) prometheus.Counter {
	t.Helper()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: "A serving counter."})
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	return c
}

// The page mounts under a path of another server: its URLs are relative.
func TestMountedUnderAPath(t *testing.T) {
	s := newSystem(t)
	srv := s.dashboard(dashboard.Config{})
	mux := http.NewServeMux()
	mux.Handle("/ops/dashboard/", http.StripPrefix("/ops/dashboard", srv.Dashboard))
	hs := httptest.NewServer(mux)
	defer hs.Close()
	for path, want := range map[string]string{
		"/ops/dashboard/":          `src="app.js"`,
		"/ops/dashboard/app.js":    `new EventSource("api/stream")`,
		"/ops/dashboard/api/state": `"instances":[]`,
	} {
		resp, err := http.Get(hs.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), want) {
			t.Errorf("GET %s: %s, lacking %s", path, resp.Status, want)
		}
	}
}

// The dashboard stops watching when its context ends: the pages' streams
// end.
func TestStopsWithItsContext(t *testing.T) {
	s := newSystem(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d, err := dashboard.New(ctx, s.runtime(), dashboard.Config{NATSMonitorURL: "off"})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := dashboard.Listen(d, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	resp, err := http.Get(srv.URL() + "/api/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	ended := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, resp.Body)
		ended <- err
	}()
	cancel()
	select {
	case err := <-ended:
		if err != nil {
			t.Errorf("stream ended with %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the stream did not end within 5s of the context")
	}
}

// The serving headline's KV figures come from the workers' load_metrics
// events, as a KV-aware router reads them.
func TestServingLoadMetrics(t *testing.T) {
	s := newSystem(t)
	srv := s.dashboard(dashboard.Config{Interval: 100 * time.Millisecond})
	waitState(t, srv, 10*time.Second, "the event subscription", func(st dashboard.State) bool { return st.Events.Pattern != "" })
	for i, lm := range []llm.LoadMetrics{
		{PrefixHitRate: 0.5, CacheUsage: 0.25, Waiting: 3},
		{PrefixHitRate: 0.25, CacheUsage: 0.75, Waiting: 1},
	} {
		rt := s.runtime()
		opts := []events.Option{}
		if i == 1 {
			opts = append(opts, events.WithCodec("json"))
		}
		pub, err := events.NewPublisher[llm.LoadMetrics](context.Background(), rt, events.Scope{Namespace: "dynamo", Component: llm.WorkerComponent}, llm.TopicLoadMetrics, opts...)
		if err != nil {
			t.Fatal(err)
		}
		defer pub.Shutdown(context.Background())
		if err := pub.Publish(context.Background(), lm); err != nil {
			t.Fatal(err)
		}
	}
	st := waitState(t, srv, 5*time.Second, "two workers' load", func(st dashboard.State) bool {
		return st.Serving.Summary.Reporting == 2
	})
	m := st.Serving.Summary
	if m.KVHitRate != 0.375 || m.KVUsage != 0.5 || m.Waiting != 4 {
		t.Errorf("summary %+v, want hit rate 0.375, usage 0.5, waiting 4", m)
	}
}
