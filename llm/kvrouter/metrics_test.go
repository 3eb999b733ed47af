package kvrouter

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/loomrt/loom/internal/testutil"
)

// scrape returns the value of every loom_kvrouter_* metric of router on
// reg, by name.
func scrape(t *testing.T, reg *prometheus.Registry, router string) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			mine := false
			for _, l := range m.GetLabel() {
				mine = mine || l.GetName() == "router" && l.GetValue() == router
			}
			if !mine {
				continue
			}
			switch {
			case m.Counter != nil:
				out[mf.GetName()] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				out[mf.GetName()] = m.GetGauge().GetValue()
			}
		}
	}
	return out
}

func TestKVRouterMetricsReadItsStats(t *testing.T) {
	s := newSystem(t, 2, warmCfg())
	r := s.router(KV, Config{})
	c := s.client(r, 2)
	synced(t, r, s.cluster)
	ctx := testutil.Timeout(t, 20*time.Second)
	for i := range 3 {
		if res := send(ctx, c, r, "m", prompt(7, 64+16*i), 2); res.err != nil {
			t.Fatal(res.err)
		}
	}
	synced(t, r, s.cluster)
	reg := s.fe.Metrics().Registry()
	st := r.Stats()
	got := scrape(t, reg, KV)
	want := map[string]float64{
		"loom_kvrouter_decisions_total":        float64(st.Decisions),
		"loom_kvrouter_prompt_blocks_total":    float64(st.PromptBlocks),
		"loom_kvrouter_overlap_blocks_total":   float64(st.OverlapBlocks),
		"loom_kvrouter_events_applied_total":   float64(st.EventsApplied),
		"loom_kvrouter_events_stale_total":     float64(st.EventsStale),
		"loom_kvrouter_events_discarded_total": float64(st.EventsDiscarded),
		"loom_kvrouter_events_dropped_total":   float64(st.EventsDropped),
		"loom_kvrouter_gaps_total":             float64(st.Gaps),
		"loom_kvrouter_resyncs_total":          float64(st.Resyncs),
		"loom_kvrouter_resync_failures_total":  float64(st.ResyncFailures),
		"loom_kvrouter_index_blocks":           float64(st.IndexBlocks),
		"loom_kvrouter_workers":                float64(len(st.Workers)),
	}
	for name, w := range want {
		if v, ok := got[name]; !ok || v != w {
			t.Errorf("%s{router=%q} = %v (present %v), want %v as Stats says", name, KV, v, ok, w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("scraped %d loom_kvrouter metrics, want %d: %v", len(got), len(want), got)
	}
	if st.Decisions != 3 || st.PromptBlocks != 4+5+6 || st.EventsApplied == 0 || st.IndexBlocks == 0 || len(st.Workers) != 2 {
		t.Errorf("stats after 3 requests of 4, 5 and 6 blocks: %+v", st)
	}

	// A closed router's counters stay in the totals; its gauges go.
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	after := scrape(t, reg, KV)
	for name, w := range want {
		if name == "loom_kvrouter_index_blocks" || name == "loom_kvrouter_workers" {
			w = 0
		}
		if after[name] != w {
			t.Errorf("after Close %s = %v, want %v", name, after[name], w)
		}
	}
}
