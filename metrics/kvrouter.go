package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// The KV router's metrics (package llm/kvrouter). A router keeps its own
// counters (its Stats needs them) and registers a function that reads
// them; a collector reads every live router when the registry is
// scraped, so routing a request costs no metric update. Routers are
// labelled by name (kv, kv_approx); two with one name are summed. A
// closed router leaves its last counts in the totals, so the counters
// never go down; its gauges go. The collector is registered with the
// first router, so a process without one exports none.

var kvDescs = struct {
	decisions, promptBlocks, overlapBlocks                         *prometheus.Desc
	applied, stale, discarded, gaps, resyncs, resyncFails, dropped *prometheus.Desc
	indexBlocks, workers                                           *prometheus.Desc
}{
	decisions:     kvDesc("decisions_total", "Requests the router routed; a request routed again after a failed attempt counts again."),
	promptBlocks:  kvDesc("prompt_blocks_total", "Full KV blocks of the prompts routed."),
	overlapBlocks: kvDesc("overlap_blocks_total", "Prompt blocks the chosen workers were expected to hold: over loom_kvrouter_prompt_blocks_total, the hit rate the router expected."),
	applied:       kvDesc("events_applied_total", "kv_events applied to the index."),
	stale:         kvDesc("events_stale_total", "kv_events ignored as already applied or covered by a fetched block set."),
	discarded:     kvDesc("events_discarded_total", "kv_events inconsistent with the worker's block set when it was fetched, dropped."),
	gaps:          kvDesc("gaps_total", "Gaps seen in the workers' kv_event ids or event sequences; each makes the router fetch that worker's block set."),
	resyncs:       kvDesc("resyncs_total", "Worker block sets fetched to replace the router's view: one per worker as it appears, one per gap."),
	resyncFails:   kvDesc("resync_failures_total", "Block set fetches that failed (retried)."),
	dropped:       kvDesc("events_dropped_total", "kv_events the router's subscription lost before the router read them (on core NATS, the NATS client's buffer was full)."),
	indexBlocks:   kvDesc("index_blocks", "Distinct KV blocks in the router's index."),
	workers:       kvDesc("workers", "Workers the router knows."),
}

func kvDesc(name, help string) *prometheus.Desc {
	return prometheus.NewDesc("loom_kvrouter_"+name, help, []string{"router"}, nil)
}

// KVRouterCounts are one KV router's counters and gauges.
type KVRouterCounts struct {
	Decisions, PromptBlocks, OverlapBlocks                     uint64
	EventsApplied, EventsStale, EventsDiscarded, EventsDropped uint64
	Gaps, Resyncs, ResyncFailures                              uint64
	IndexBlocks, Workers                                       int // gauges
}

func (a KVRouterCounts) add(b KVRouterCounts) KVRouterCounts {
	return KVRouterCounts{
		a.Decisions + b.Decisions, a.PromptBlocks + b.PromptBlocks, a.OverlapBlocks + b.OverlapBlocks,
		a.EventsApplied + b.EventsApplied, a.EventsStale + b.EventsStale, a.EventsDiscarded + b.EventsDiscarded, a.EventsDropped + b.EventsDropped,
		a.Gaps + b.Gaps, a.Resyncs + b.Resyncs, a.ResyncFailures + b.ResyncFailures,
		a.IndexBlocks + b.IndexBlocks, a.Workers + b.Workers,
	}
}

type kvRouterMetrics struct {
	once    sync.Once
	mu      sync.Mutex
	live    map[*KVRouterSource]struct{}
	retired map[string]KVRouterCounts // counters only
}

// KVRouterSource is a registered router.
type KVRouterSource struct {
	m      *Metrics
	router string
	read   func() KVRouterCounts
}

// KVRouter registers the KV router named router, whose counts read
// returns at each scrape. Unregister it when the router closes.
func (m *Metrics) KVRouter(router string, read func() KVRouterCounts) *KVRouterSource {
	k := &m.kvRouters
	k.once.Do(func() {
		k.live = make(map[*KVRouterSource]struct{})
		k.retired = make(map[string]KVRouterCounts)
		m.reg.MustRegister(kvRouterCollector{k})
	})
	s := &KVRouterSource{m: m, router: router, read: read}
	k.mu.Lock()
	k.live[s] = struct{}{}
	k.mu.Unlock()
	return s
}

// Unregister keeps the router's last counters in the totals and stops
// reading it. Calling it again does nothing.
func (s *KVRouterSource) Unregister() {
	k := &s.m.kvRouters
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.live[s]; !ok {
		return
	}
	delete(k.live, s)
	last := s.read()
	last.IndexBlocks, last.Workers = 0, 0
	k.retired[s.router] = k.retired[s.router].add(last)
}

type kvRouterCollector struct{ k *kvRouterMetrics }

// Describe sends the descriptions of the router metrics.
func (c kvRouterCollector) Describe(ch chan<- *prometheus.Desc) {
	d := kvDescs
	for _, x := range []*prometheus.Desc{d.decisions, d.promptBlocks, d.overlapBlocks, d.applied, d.stale,
		d.discarded, d.gaps, d.resyncs, d.resyncFails, d.dropped, d.indexBlocks, d.workers} {
		ch <- x
	}
}

// Collect sums the live and retired routers by name.
func (c kvRouterCollector) Collect(ch chan<- prometheus.Metric) {
	k := c.k
	k.mu.Lock()
	byName := make(map[string]KVRouterCounts, len(k.retired)+len(k.live))
	for name, v := range k.retired {
		byName[name] = v
	}
	for s := range k.live {
		byName[s.router] = byName[s.router].add(s.read())
	}
	k.mu.Unlock()
	d := kvDescs
	for name, v := range byName {
		counter := func(desc *prometheus.Desc, x uint64) {
			ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(x), name)
		}
		counter(d.decisions, v.Decisions)
		counter(d.promptBlocks, v.PromptBlocks)
		counter(d.overlapBlocks, v.OverlapBlocks)
		counter(d.applied, v.EventsApplied)
		counter(d.stale, v.EventsStale)
		counter(d.discarded, v.EventsDiscarded)
		counter(d.dropped, v.EventsDropped)
		counter(d.gaps, v.Gaps)
		counter(d.resyncs, v.Resyncs)
		counter(d.resyncFails, v.ResyncFailures)
		ch <- prometheus.MustNewConstMetric(d.indexBlocks, prometheus.GaugeValue, float64(v.IndexBlocks), name)
		ch <- prometheus.MustNewConstMetric(d.workers, prometheus.GaugeValue, float64(v.Workers), name)
	}
}
