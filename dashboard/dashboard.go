package dashboard

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/llm"
	"github.com/loomrt/loom/workqueue"
)

// Config tunes a Dashboard. The zero value works.
type Config struct {
	// Interval is how often load, queues and NATS are read (default 1s).
	// Discovery changes are shown as they happen, not on this clock.
	Interval time.Duration
	// Window is how far back p50 / p99 look (default 10s), at least one
	// Interval.
	Window time.Duration
	// NATSMonitorURL is the NATS server's monitoring endpoint
	// (http://host:8222). Empty: the NATS server's host on port 8222, as
	// `loom up` serves it, tried and skipped if unreachable. "off": none.
	NATSMonitorURL string
	// Scrape lists more Prometheus /metrics URLs to read, for processes
	// whose metrics are not on a status server named in an instance
	// record (an HTTP frontend's own /metrics, say). Their event, queue
	// and serving metrics are shown; they have no instances.
	Scrape []string
	// ServingPrefixes name the metric families of the serving view
	// (default: DefaultServingPrefixes).
	ServingPrefixes []string
	// NoEvents turns off the dashboard's own subscription to every event
	// (the per-publisher view); the processes' counters are still shown.
	NoEvents bool
	// HTTPClient scrapes status servers and the NATS monitoring endpoint
	// (default: one with a timeout of Interval, at least 2s).
	HTTPClient *http.Client
	// WriteTimeout bounds each write to a page's /api/stream, and the
	// writing of each other answer (default 30s). A page that reads
	// nothing for that long, or whose browser vanished without closing
	// the connection, has its stream or answer ended, rather than
	// holding it until TCP gives up, about 15 minutes with Linux's
	// defaults. A browser's EventSource reconnects by itself.
	WriteTimeout time.Duration
}

// The defaults of Config.
const (
	DefaultInterval     = time.Second
	DefaultWindow       = 10 * time.Second
	DefaultWriteTimeout = 30 * time.Second
)

// DefaultServingPrefixes are the metric name prefixes of the serving view:
// the LLM frontend's and its KV router's.
var DefaultServingPrefixes = []string{"loom_llm_", "loom_kvrouter_"}

// scrapeTimeout bounds a round of reads when Interval is shorter: a busy
// machine answers slowly, and a scrape that times out shows no load.
const scrapeTimeout = 2 * time.Second

// historyLen is how many points the charts keep.
const historyLen = 120

// Dashboard watches a Loom system and serves the page that shows it. It
// is an http.Handler: the page at /, its assets, /api/state (State as
// JSON) and /api/stream (State as server-sent events).
type Dashboard struct {
	rt     *loom.Runtime
	cfg    Config
	log    *slog.Logger
	scrape scraper

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	kick   chan struct{} // asks the publisher to send a new state
	mux    *http.ServeMux

	mu             sync.Mutex
	instances      map[string]discovery.Instance // by record key
	synced         bool
	discoveryError string
	samples        map[string][]*sample // by scrape target, oldest first, within Window
	history        []Point
	rateHistory    map[string][]Num // by instance key
	queues         Queues
	nats           NATS
	natsPrev       *varz
	events         *eventWatch

	bmu     sync.Mutex
	clients map[chan []byte]struct{}
	latest  []byte
}

// New starts watching the system rt is connected to: its discovery, its
// NATS server (queues, JetStream, events) and the status servers the
// instance records name. rt should serve nothing itself. It watches until
// ctx ends or Close is called; Close waits for its goroutines.
func New(ctx context.Context, rt *loom.Runtime, cfg Config) (*Dashboard, error) {
	cfg = cfg.withDefaults()
	d := &Dashboard{
		rt:          rt,
		cfg:         cfg,
		log:         rt.Logger().With("component", "dashboard"),
		scrape:      scraper{client: cfg.HTTPClient, servingPrefixes: cfg.ServingPrefixes},
		kick:        make(chan struct{}, 1),
		instances:   map[string]discovery.Instance{},
		samples:     map[string][]*sample{},
		rateHistory: map[string][]Num{},
		clients:     map[chan []byte]struct{}{},
	}
	d.ctx, d.cancel = context.WithCancel(ctx)
	events, err := rt.Discovery().Watch(d.ctx, discovery.Query{})
	if err != nil {
		d.cancel()
		return nil, fmt.Errorf("dashboard: watch discovery (%s): %w", rt.Config().Discovery.Backend, err)
	}
	d.nats = unknownNATS(rt.Config().NATS.URL)
	d.events = newEventWatch(d.ctx, cfg.NoEvents)
	d.latest = d.build()
	d.routes()
	d.wg.Add(3)
	go d.watch(events)
	go d.collect()
	go d.publish()
	return d, nil
}

// withDefaults fills in what cfg leaves zero, and lengthens a Window
// shorter than Interval to one Interval.
func (cfg Config) withDefaults() Config {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Window <= 0 {
		cfg.Window = DefaultWindow
	}
	cfg.Window = max(cfg.Window, cfg.Interval)
	if cfg.ServingPrefixes == nil {
		cfg.ServingPrefixes = DefaultServingPrefixes
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: max(cfg.Interval, scrapeTimeout)}
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	return cfg
}

// Close stops watching and ends the page's streams. It waits for the
// dashboard's goroutines.
func (d *Dashboard) Close() error {
	d.cancel()
	d.wg.Wait()
	d.events.close()
	return nil
}

// State returns the current state, as /api/state does.
func (d *Dashboard) State() State {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stateLocked()
}

// watch keeps the instance records from discovery and asks for a new state
// at every change.
func (d *Dashboard) watch(events <-chan discovery.Event) {
	defer d.wg.Done()
	for ev := range events {
		d.mu.Lock()
		switch ev.Kind {
		case discovery.Added:
			d.instances[ev.Instance.Key()] = ev.Instance
		case discovery.Removed:
			delete(d.instances, ev.Instance.Key())
			delete(d.rateHistory, ev.Instance.Key())
		case discovery.Synced:
			d.synced = true
		}
		d.mu.Unlock()
		if ev.Kind != discovery.Added || d.isSynced() {
			d.poke()
		}
	}
	if d.ctx.Err() == nil {
		d.mu.Lock()
		d.discoveryError = "discovery watch ended; restart the dashboard"
		d.mu.Unlock()
		d.log.Error("dashboard: discovery watch ended")
		d.poke()
	}
}

func (d *Dashboard) isSynced() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.synced
}

func (d *Dashboard) poke() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// collect reads load, events, queues and NATS every interval.
func (d *Dashboard) collect() {
	defer d.wg.Done()
	t := time.NewTicker(d.cfg.Interval)
	defer t.Stop()
	for {
		d.collectOnce()
		select {
		case <-d.ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (d *Dashboard) collectOnce() {
	ctx, cancel := context.WithTimeout(d.ctx, max(d.cfg.Interval, scrapeTimeout))
	defer cancel()
	d.mu.Lock()
	targets := map[string]bool{}
	for _, inst := range d.instances {
		if a := inst.Metadata[loom.MetadataStatusAddr]; a != "" {
			targets[a] = true
		}
	}
	d.mu.Unlock()
	for _, u := range d.cfg.Scrape {
		targets[u] = false
	}
	var wg sync.WaitGroup
	var smu sync.Mutex
	got := map[string]*sample{}
	sem := make(chan struct{}, 16)
	for target, isStatus := range targets {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			s := d.scrape.scrape(ctx, target, isStatus)
			smu.Lock()
			got[target] = s
			smu.Unlock()
		})
	}
	var queues Queues
	var nats NATS
	var vz *varz
	wg.Go(func() { queues = d.readQueues(ctx) })
	wg.Go(func() { nats, vz = d.readNATS(ctx) })
	wg.Wait()
	d.events.ensure(ctx, d.rt, d.log)

	now := time.Now()
	d.mu.Lock()
	for target, s := range got {
		if s.at.IsZero() {
			s.at = now
		}
		ring := append(d.samples[target], s)
		for len(ring) > 1 && now.Sub(ring[0].at) > d.cfg.Window+d.cfg.Interval/2 {
			ring = ring[1:]
		}
		d.samples[target] = ring
	}
	for target := range d.samples {
		if _, ok := got[target]; !ok {
			delete(d.samples, target)
		}
	}
	d.queues = queues
	d.natsRates(&nats, vz, now)
	d.nats = nats
	d.events.tick(now)
	st := d.stateLocked()
	for _, inst := range st.Instances {
		key := discovery.Instance{Namespace: inst.Namespace, Component: inst.Component, Endpoint: inst.Endpoint, ID: inst.InstanceID}.Key()
		r := unknown
		if inst.Load != nil {
			r = inst.Load.RequestsPerSec
		}
		d.rateHistory[key] = appendBounded(d.rateHistory[key], r, 60)
	}
	d.history = appendBounded(d.history, Point{
		T: now.UnixMilli(), RequestsPerSec: st.Totals.RequestsPerSec, ErrorsPerSec: st.Totals.ErrorsPerSec,
		InFlight: st.Totals.InFlight, P99: st.Totals.P99, EventsPerSec: st.Totals.EventsPerSec,
	}, historyLen)
	d.mu.Unlock()
	d.poke()
}

func appendBounded[T any](s []T, v T, n int) []T {
	s = append(s, v)
	if len(s) > n {
		s = slices.Delete(s, 0, len(s)-n)
	}
	return s
}

// publish sends a new state to every page when asked.
func (d *Dashboard) publish() {
	defer d.wg.Done()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-d.kick:
		}
		b := d.build()
		d.bmu.Lock()
		d.latest = b
		for c := range d.clients {
			select {
			case <-c: // a slow page skips to the newest state
			default:
			}
			c <- b
		}
		d.bmu.Unlock()
	}
}

func (d *Dashboard) build() []byte {
	d.mu.Lock()
	st := d.stateLocked()
	d.mu.Unlock()
	b, err := json.Marshal(st)
	if err != nil {
		// Every field marshals; this is a programming error.
		d.log.Error("dashboard: encoding state", "err", err)
		return []byte("{}")
	}
	return b
}

// stateLocked builds the state from what was collected; d.mu is held.
func (d *Dashboard) stateLocked() State {
	now := time.Now()
	st := State{
		Time: now, Interval: d.cfg.Interval.Seconds(), Discovery: d.rt.Config().Discovery.Backend,
		Synced: d.synced, DiscoveryError: d.discoveryError,
		History: slices.Clone(d.history), Queues: d.queues, NATS: d.nats,
		Instances: []Instance{},
	}
	if st.History == nil {
		st.History = []Point{}
	}
	if st.Queues.Queues == nil {
		st.Queues.Queues = []workqueue.Info{}
	}
	keys := slices.Sorted(maps.Keys(d.instances))
	byTarget := map[string][]string{}
	var total endpointWindow
	endpoints := map[string]bool{}
	for _, k := range keys {
		rec := d.instances[k]
		inst := Instance{
			Namespace: rec.Namespace, Component: rec.Component, Endpoint: rec.Endpoint,
			InstanceID: rec.ID, ID: strconv.FormatUint(rec.ID, 16), Transport: rec.Transport,
			Address: rec.Address, TLS: rec.TLS, Codec: rec.Codec, Metadata: rec.Metadata,
			Age: unknown, State: "unknown", StatusAddr: rec.Metadata[loom.MetadataStatusAddr],
		}
		endpoints[rec.Path()] = true
		if t, err := time.Parse(time.RFC3339Nano, rec.Metadata[loom.MetadataRegisteredAt]); err == nil {
			inst.RegisteredAt = &t
			inst.Age = Num(max(0, now.Sub(t).Seconds()))
		}
		if inst.StatusAddr == "" {
			inst.LoadError = "no status server in its record (LOOM_STATUS_PORT=-1 turns one on)"
		} else {
			byTarget[inst.StatusAddr] = append(byTarget[inst.StatusAddr], inst.ID)
			ring := d.samples[inst.StatusAddr]
			switch {
			case len(ring) == 0:
				inst.LoadError = "not scraped yet"
			case ring[len(ring)-1].err != "":
				inst.LoadError = ring[len(ring)-1].err
			default:
				last := ring[len(ring)-1]
				if last.ready != nil {
					inst.State = "draining"
					if *last.ready {
						inst.State = "ready"
					}
				}
				b := last.build
				inst.Build = &b
				w := window(ring, rec.Path())
				inst.Load = w.load()
				inst.Load.RateHistory = slices.Clone(d.rateHistory[k])
				total.merge(w)
			}
		}
		st.Instances = append(st.Instances, inst)
	}
	tl := total.load()
	st.Totals = Totals{
		Instances: len(st.Instances), Endpoints: len(endpoints), Processes: len(byTarget),
		RequestsPerSec: tl.RequestsPerSec, ErrorsPerSec: tl.ErrorsPerSec, InFlight: tl.InFlight,
		P50: tl.P50, P99: tl.P99, EventsPerSec: unknown, QueueJobs: unknown, DeadLetters: unknown,
	}
	if total.n == 0 {
		st.Totals.RequestsPerSec, st.Totals.ErrorsPerSec, st.Totals.InFlight = unknown, unknown, unknown
	}
	for _, target := range slices.Sorted(maps.Keys(d.samples)) {
		ring := d.samples[target]
		last := ring[len(ring)-1]
		ids := byTarget[target]
		if ids == nil {
			ids = []string{} // a --scrape target: no instance names it
		}
		p := Process{Target: target, Instances: ids, Ready: last.ready, Scraped: last.at, Error: last.err}
		if last.err == "" {
			b := last.build
			p.Build = &b
		}
		st.Processes = append(st.Processes, p)
	}
	st.Builds = builds(st.Instances)
	if st.Processes == nil {
		st.Processes = []Process{}
	}
	st.Events = d.events.state(d.samples)
	if st.Events.Transport != "" || len(st.Events.Published) > 0 {
		st.Totals.EventsPerSec = st.Events.RatePerSec
		if !st.Events.RatePerSec.Known() {
			sum := Num(0)
			for _, p := range st.Events.Published {
				if p.RatePerSec.Known() {
					sum += p.RatePerSec
				}
			}
			st.Totals.EventsPerSec = sum
		}
	}
	if d.queues.Error == "" {
		var jobs, dead uint64
		for _, q := range d.queues.Queues {
			jobs += q.Jobs
			dead += q.DeadLetters
		}
		st.Totals.QueueJobs, st.Totals.DeadLetters = Num(jobs), Num(dead)
	}
	st.Serving = serving(d.samples, d.cfg.ServingPrefixes)
	for _, inst := range st.Instances {
		if inst.Component == llm.WorkerComponent && inst.Endpoint == llm.GenerateEndpoint {
			st.Serving.Summary.Workers++
		}
	}
	if hit, usage, waiting, n := d.events.loadSummary(now); n > 0 {
		sm := &st.Serving.Summary
		sm.KVHitRate, sm.KVUsage, sm.Waiting, sm.Reporting = hit, usage, waiting, n
	}
	return st
}

// builds counts the instances (and their processes) on each build, most
// instances first, then by version and revision.
func builds(instances []Instance) []BuildCount {
	type key struct{ version, revision string }
	count := map[key]*BuildCount{}
	procs := map[key]map[string]bool{}
	for _, inst := range instances {
		if inst.Build == nil {
			continue
		}
		k := key{inst.Build.Version, inst.Build.Revision}
		c := count[k]
		if c == nil {
			c = &BuildCount{Version: k.version, Revision: k.revision}
			count[k] = c
			procs[k] = map[string]bool{}
		}
		c.Instances++
		procs[k][inst.StatusAddr] = true
	}
	out := make([]BuildCount, 0, len(count))
	for k, c := range count {
		c.Processes = len(procs[k])
		out = append(out, *c)
	}
	slices.SortFunc(out, func(a, b BuildCount) int {
		if a.Instances != b.Instances {
			return b.Instances - a.Instances
		}
		if c := strings.Compare(a.Version, b.Version); c != 0 {
			return c
		}
		return strings.Compare(a.Revision, b.Revision)
	})
	return out
}

// endpointWindow is an endpoint's counters at the newest scrape and their
// change over the last interval and over the window.
type endpointWindow struct {
	n            int // endpoints merged
	last         endpointCounts
	interval     float64 // seconds between the last two scrapes
	dTotal, dErr float64 // over the last interval
	rateKnown    bool
	durations    histogram // over the window
	first        histogram
	windowSecs   float64
}

func window(ring []*sample, path string) endpointWindow {
	w := endpointWindow{n: 1}
	last := ring[len(ring)-1]
	cur := last.endpoints[path]
	if cur == nil {
		cur = &endpointCounts{}
	}
	w.last = *cur
	// The rate is over the interval since the last scrape that worked.
	var prevS *sample
	for i := len(ring) - 2; i >= 0; i-- {
		if ring[i].err == "" {
			prevS = ring[i]
			break
		}
	}
	if prevS != nil {
		prev := prevS.endpoints[path]
		if prev == nil {
			prev = &endpointCounts{}
		}
		w.interval = last.at.Sub(prevS.at).Seconds()
		w.dTotal, w.dErr = cur.total()-prev.total(), cur.failed()-prev.failed()
		if w.dTotal < 0 { // the process restarted
			w.dTotal, w.dErr = cur.total(), cur.failed()
		}
		w.rateKnown = w.interval > 0
	}
	var first *sample
	for _, s := range ring {
		if s.err == "" {
			first = s
			break
		}
	}
	if first != nil && first != last {
		old := first.endpoints[path]
		if old == nil {
			old = &endpointCounts{}
		}
		w.durations = cur.duration.sub(old.duration)
		w.first = cur.firstResponse.sub(old.firstResponse)
		w.windowSecs = last.at.Sub(first.at).Seconds()
	}
	return w
}

func (w *endpointWindow) merge(o endpointWindow) {
	w.n++
	w.last.ok += o.last.ok
	w.last.errors += o.last.errors
	w.last.panics += o.last.panics
	w.last.cancelled += o.last.cancelled
	w.last.refused += o.last.refused
	w.last.inFlight += o.last.inFlight
	if o.rateKnown {
		w.dTotal += o.dTotal / o.interval
		w.dErr += o.dErr / o.interval
		w.rateKnown = true
		w.interval = 1 // merged deltas are already rates
	}
	w.durations = w.durations.add(o.durations)
	w.first = w.first.add(o.first)
	w.windowSecs = max(w.windowSecs, o.windowSecs)
}

func (w endpointWindow) load() *Load {
	l := &Load{
		RequestsPerSec: unknown, ErrorsPerSec: unknown,
		InFlight: Num(w.last.inFlight),
		P50:      ms(w.durations.quantile(0.5)), P99: ms(w.durations.quantile(0.99)),
		FirstP50: ms(w.first.quantile(0.5)), Window: Num(w.windowSecs),
		Requests: Num(w.last.total()), Errors: Num(w.last.failed()),
		Cancelled: Num(w.last.cancelled), Refused: Num(w.last.refused),
		RateHistory: []Num{},
	}
	if w.rateKnown && w.interval > 0 {
		l.RequestsPerSec = Num(w.dTotal / w.interval)
		l.ErrorsPerSec = Num(w.dErr / w.interval)
	}
	return l
}

func ms(seconds float64) Num {
	if math.IsNaN(seconds) {
		return unknown
	}
	return Num(seconds * 1000)
}
