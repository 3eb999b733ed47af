package kvrouter

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/llm"
	"github.com/loomrt/loom/llm/frontend"
	"github.com/loomrt/loom/llm/mocker"
)

// perWorker is what a KV router keeps that grows with the workers it has
// known: each count must come back to what the workers running now need.
type perWorker struct {
	workers, resyncQ, gone           int
	inflight                         int
	held, slots, usedSlots, ids      int
	indexBlocks, entries, heldBlocks int
	blocksClient                     int // instances the kv_blocks client knows
	kvPublishers, loadPublishers     int // publishers the subscriptions follow
}

func (r *KVRouter) perWorker() perWorker {
	var p perWorker
	r.mu.RLock()
	p.workers, p.resyncQ, p.gone = len(r.workers), len(r.resyncQ), len(r.gone)
	p.held, p.slots, p.ids = len(r.idx.held), len(r.idx.slots), len(r.idx.ids)
	p.usedSlots = len(r.idx.ids) - len(r.idx.free)
	p.indexBlocks, p.entries = len(r.idx.blocks), r.idx.entries
	for _, set := range r.idx.held {
		p.heldBlocks += len(set)
	}
	r.mu.RUnlock()
	r.bk.Lock()
	p.inflight = len(r.inflight)
	r.bk.Unlock()
	if r.blocks != nil {
		p.blocksClient = len(r.blocks.Instances())
	}
	if r.events {
		p.kvPublishers, p.loadPublishers = r.kvEvents.Stats().Publishers, r.loadEvents.Stats().Publishers
	}
	return p
}

// series returns every series on reg, one string a series.
func series(t *testing.T, reg *prometheus.Registry) []string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var b strings.Builder
			b.WriteString(mf.GetName())
			for _, l := range m.GetLabel() {
				fmt.Fprintf(&b, " %s=%q", l.GetName(), l.GetValue())
			}
			out = append(out, b.String())
		}
	}
	slices.Sort(out)
	return out
}

// TestWorkerChurnLeavesNoState runs a frontend and a KV router through
// many workers that come, take requests, hold KV blocks and go (half
// stopped, half killed), as a long-running deployment sees for days, and
// checks that what the router, its clients and the frontend's runtime
// keep per worker comes back to what the workers still running need.
func TestWorkerChurnLeavesNoState(t *testing.T) {
	const cycles = 40
	s := newSystem(t, 2, warmCfg())
	r, err := NewKV(t.Context(), s.fe, Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	fe, err := frontend.New(t.Context(), s.fe, frontend.Config{Router: r})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fe.Close)
	ctx := testutil.Timeout(t, 60*time.Second)
	if err := fe.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
	h := fe.Handler()
	seq := 0
	chat := func() {
		t.Helper()
		seq++
		words := make([]string, 0, 80)
		for i := range 80 {
			words = append(words, fmt.Sprintf("w%d_%d", seq, i))
		}
		body := fmt.Sprintf(`{"model":%q,"max_tokens":2,"messages":[{"role":"user","content":%q}]}`, mocker.DefaultModel, strings.Join(words, " "))
		req := httptest.NewRequestWithContext(ctx, http.MethodPost, "/v1/chat/completions", strings.NewReader(body))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			t.Fatalf("request %d: %d %s", seq, rec.Code, rec.Body)
		}
	}
	for range 6 {
		chat()
	}
	synced(t, r, s.cluster)
	reg := s.fe.Metrics().Registry()
	baseSeries := series(t, reg)
	base := r.perWorker()
	baseG := runtime.NumGoroutine()
	t.Logf("baseline: %+v, %d goroutines, %d series", base, baseG, len(baseSeries))

	for i := range cycles {
		w, err := s.cluster.Add(ctx, warmCfg())
		if err != nil {
			t.Fatal(err)
		}
		id := w.ID()
		// Requests until the new worker has taken one and the router
		// holds its blocks.
		for tries := 0; ; tries++ {
			if tries == 200 {
				t.Fatalf("cycle %d: worker %x never took a request", i, id)
			}
			chat()
			r.mu.RLock()
			blocks := r.idx.workerBlocks(id)
			ws := r.workers[id]
			r.mu.RUnlock()
			var decided uint64
			if ws != nil {
				r.bk.Lock()
				decided = ws.decided
				r.bk.Unlock()
			}
			if blocks > 0 && decided > 0 {
				break
			}
		}
		if i%2 == 0 {
			err = s.cluster.Stop(ctx, id)
		} else {
			err = s.cluster.Kill(id)
		}
		if err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, 10*time.Second, fmt.Sprintf("cycle %d: the router to drop worker %x", i, id), func() bool {
			r.mu.RLock()
			defer r.mu.RUnlock()
			_, known := r.workers[id]
			_, slot := r.idx.slots[id]
			return !known && !slot
		})
		// A caller whose client has not seen the worker go yet routes
		// one more request to it, which ends.
		ri := &llm.RouteInfo{RequestID: fmt.Sprintf("late-%d", i), TokenIDs: prompt(uint32(i), 64)}
		if _, err := r.Pick(llm.WithRoute(ctx, ri), []*loom.Candidate{{Instance: discovery.Instance{ID: id}}}); err != nil {
			t.Fatal(err)
		}
		r.Done(ri.RequestID)
	}
	for range 6 {
		chat()
	}

	var last perWorker
	lastG := -1
	defer func() {
		if t.Failed() {
			t.Logf("after %d departures: %+v, %d goroutines; at the baseline: %+v, %d goroutines", cycles, last, lastG, base, baseG)
		}
	}()
	testutil.Eventually(t, 10*time.Second, "the router's per-worker state to come back to the baseline", func() bool {
		p := r.perWorker()
		last = p
		return p.workers == 2 && p.resyncQ == 0 && p.inflight == 0 &&
			p.held == 2 && p.slots == 2 && p.usedSlots == 2 && p.ids <= 3 &&
			p.entries == p.heldBlocks && p.blocksClient == 2 && p.kvPublishers == 2 && p.loadPublishers == 2
	})
	got := r.perWorker()
	t.Logf("after %d departures: %+v", cycles, got)
	// The departed workers are remembered for goneFor, then forgotten.
	if got.gone != cycles {
		t.Errorf("%d workers remembered as gone, want the %d that left", got.gone, cycles)
	}
	r.tidy(time.Now().Add(goneFor + time.Second).UnixNano())
	if n := r.perWorker().gone; n != 0 {
		t.Errorf("%d workers remembered as gone %v after they left, want 0", n, goneFor)
	}
	testutil.Eventually(t, 10*time.Second, "the goroutines to come back to the baseline", func() bool {
		lastG = runtime.NumGoroutine()
		return lastG <= baseG+5
	})
	after := series(t, reg)
	if len(after) > len(baseSeries) {
		var added []string
		for _, x := range after {
			if !slices.Contains(baseSeries, x) {
				added = append(added, x)
			}
		}
		t.Errorf("%d series before the churn, %d after; new:\n%s", len(baseSeries), len(after), strings.Join(added, "\n"))
	}
}
