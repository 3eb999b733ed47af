package mocker_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/loomrt/loom/events"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/llm"
	"github.com/loomrt/loom/llm/mocker"
)

// TestLoadMetricsAreRepublishedEveryIntervalWhileIdle holds docs/llm.md's
// "load_metrics ... every MetricsInterval": a worker that does nothing
// still reports its load on that clock, so a router that joins later
// hears of it.
func TestLoadMetricsAreRepublishedEveryIntervalWhileIdle(t *testing.T) {
	cfg := fast()
	cfg.MetricsInterval = 50 * time.Millisecond
	s := newSystem(t, mocker.ClusterConfig{Workers: 1, Worker: cfg})
	w := s.cluster.Workers()[0]
	loads, err := events.Subscribe[llm.LoadMetrics](t.Context(), s.caller, events.Scope{Namespace: llm.DefaultNamespace, Component: llm.WorkerComponent}, llm.TopicLoadMetrics)
	if err != nil {
		t.Fatal(err)
	}
	defer loads.Close()
	heard := 0
	for ev, err := range loads.Events(testutil.Timeout(t, 10*time.Second)) {
		if err != nil {
			t.Fatalf("after %d reports of an idle worker's load: %v", heard, err)
		}
		if ev.InstanceID != w.ID() || ev.Value.ActiveSlots != 0 || ev.Value.Waiting != 0 {
			t.Fatalf("load report %+v from %x, want the idle worker's %x", ev.Value, ev.InstanceID, w.ID())
		}
		if heard++; heard == 3 {
			break
		}
	}
	if heard < 3 {
		t.Fatalf("an idle worker reported its load %d times in 10s, want every %v", heard, cfg.MetricsInterval)
	}
}

// TestLoadMetricsOnChangeComeAtMostEveryMinInterval holds docs/llm.md's
// "load_metrics on change (at most every MetricsMinInterval)": a worker
// whose load changes at every 1 ms decode step reports it at most once
// per MetricsMinInterval.
func TestLoadMetricsOnChangeComeAtMostEveryMinInterval(t *testing.T) {
	cfg := fast()
	cfg.MetricsInterval = time.Hour // only changes publish
	cfg.MetricsMinInterval = 50 * time.Millisecond
	s := newSystem(t, mocker.ClusterConfig{Workers: 1, Worker: cfg})
	start := time.Now()
	loads, err := events.Subscribe[llm.LoadMetrics](t.Context(), s.caller, events.Scope{Namespace: llm.DefaultNamespace, Component: llm.WorkerComponent}, llm.TopicLoadMetrics)
	if err != nil {
		t.Fatal(err)
	}
	defer loads.Close()
	var heard atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, err := range loads.Events(t.Context()) {
			if err != nil {
				return
			}
			heard.Add(1)
		}
	}()
	// About 300 decode steps, each a change of load.
	r := collect(testutil.Timeout(t, 20*time.Second), s.client, llm.Request{ID: "busy", TokenIDs: prompt(7, 20), MaxTokens: 300})
	if r.err != nil || len(r.tokens) != 300 {
		t.Fatalf("the request made %d tokens, err %v", len(r.tokens), r.err)
	}
	n, took := heard.Load(), time.Since(start)
	loads.Close()
	<-done
	if n < 2 {
		t.Errorf("%d load reports in %v of steady change, want them to follow the changes", n, took)
	}
	if limit := int64(took/cfg.MetricsMinInterval) + 1; n > limit {
		t.Errorf("%d load reports in %v, more than one per %v allows (%d)", n, took, cfg.MetricsMinInterval, limit)
	}
}
