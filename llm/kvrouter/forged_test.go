package kvrouter

import (
	"context"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/llm"
)

// TestKVRouterRecoversFromForgedEvents publishes, as a worker (a
// runtime with its instance id, so another event-plane publisher), what
// the worker's own sequence does not hold: an event id it already used,
// an event id as far ahead as ids go, the id it will use next, and a
// load report naming the far id as published. None may leave the
// router's view of the worker wrong for good: each ends in a fetch of the
// worker's block set, which replaces what the forged events said, and
// afterwards the worker's own events and reports apply as before.
func TestKVRouterRecoversFromForgedEvents(t *testing.T) {
	s := newSystem(t, 1, warmCfg())
	r := s.router(KV, Config{LostAfter: 100 * time.Millisecond}).(*KVRouter)
	c := s.client(r, 1)
	ctx := testutil.Timeout(t, 30*time.Second)
	for i := range 3 {
		if res := send(ctx, c, r, "fill", prompt(uint32(i), 64), 2); res.err != nil {
			t.Fatal(res.err)
		}
	}
	synced(t, r, s.cluster)
	w := s.cluster.Workers()[0]
	kv := s.kvPublisher(ctx, w.ID())
	const bogus1, bogus2, bogus3 = 0xdead0001, 0xdead0002, 0xdead0003

	// An id the worker already used, with a block it does not hold.
	before := r.Stats()
	if err := kv.Publish(ctx, llm.KvEvent{EventID: w.Stats().KvEvents, Stored: &llm.KvStored{BlockHashes: []uint64{bogus1}}}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the used id to be ignored and the block set fetched", func() bool {
		st := r.Stats()
		return st.EventsStale > before.EventsStale && st.Resyncs > before.Resyncs
	})
	s.viewIsWorkers(ctx, r, w.ID())

	// The last id there is.
	before = r.Stats()
	if err := kv.Publish(ctx, llm.KvEvent{EventID: math.MaxUint64, Stored: &llm.KvStored{BlockHashes: []uint64{bogus2}}}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "a fetch of the block set that discards the far event", func() bool {
		st := r.Stats()
		return st.Resyncs > before.Resyncs && st.EventsDiscarded > before.EventsDiscarded
	})
	s.viewIsWorkers(ctx, r, w.ID())

	// The id the worker will use next, before the worker uses it: the
	// router cannot tell it from the worker's own until that comes too.
	next := w.Stats().KvEvents + 1
	if err := kv.Publish(ctx, llm.KvEvent{EventID: next, Stored: &llm.KvStored{BlockHashes: []uint64{bogus3}}}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the forged next event to apply", func() bool { return r.holds(w.ID(), bogus3) })
	before = r.Stats()
	if res := send(ctx, c, r, "own", prompt(7, 64), 2); res.err != nil {
		t.Fatal(res.err)
	}
	testutil.Eventually(t, 10*time.Second, "the worker's own event of that id to fetch its block set", func() bool {
		return r.Stats().Resyncs > before.Resyncs
	})
	synced(t, r, s.cluster)
	s.viewIsWorkers(ctx, r, w.ID())

	// A load report naming the far id as the last event published.
	load := publishAs[llm.LoadMetrics](ctx, s, w.ID(), llm.TopicLoadMetrics)
	before = r.Stats()
	if err := load.Publish(ctx, llm.LoadMetrics{TotalSlots: 32, KvEventID: math.MaxUint64}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the far report to cost one fetch", func() bool {
		st := r.Stats()
		return st.Resyncs > before.Resyncs && st.Gaps > before.Gaps
	})
	// The worker's next report, which names its real last event, waits
	// for nothing.
	testutil.Eventually(t, 10*time.Second, "a report of the worker's own after the fetch", func() bool {
		r.mu.RLock()
		defer r.mu.RUnlock()
		ws := r.workers[w.ID()]
		return ws != nil && !ws.resyncing && ws.load.KvEventID != math.MaxUint64 && ws.loadAt != 0
	})
	r.mu.RLock()
	awaited, last := r.workers[w.ID()].awaited, r.workers[w.ID()].lastEvent
	r.mu.RUnlock()
	if awaited != 0 || last != w.Stats().KvEvents {
		t.Fatalf("after the worker's own report: awaiting event %d, last applied %d; want none awaited and the worker's %d", awaited, last, w.Stats().KvEvents)
	}

	// The worker's own events apply again, in sequence, with no fetch.
	before = r.Stats()
	for i := range 3 {
		if res := send(ctx, c, r, "after", prompt(uint32(10+i), 64), 2); res.err != nil {
			t.Fatal(res.err)
		}
	}
	synced(t, r, s.cluster)
	if st := r.Stats(); st.EventsApplied == before.EventsApplied || st.Resyncs != before.Resyncs {
		t.Fatalf("the worker's own events after the forged ones: applied %d -> %d, resyncs %d -> %d; want them applied with no fetch",
			before.EventsApplied, st.EventsApplied, before.Resyncs, st.Resyncs)
	}
	s.viewIsWorkers(ctx, r, w.ID())
}

// holds reports whether the index has worker id holding block h.
func (r *KVRouter) holds(id, h uint64) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	_, ok := r.idx.held[id][h]
	return ok
}

// blocksOf returns how many blocks the index has worker id holding.
func (r *KVRouter) blocksOf(id uint64) int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.idx.workerBlocks(id)
}

// viewIsWorkers fails the test unless the router's blocks for worker id
// are the worker's block set, as its kv_blocks endpoint gives it.
func (s *system) viewIsWorkers(ctx context.Context, r *KVRouter, id uint64) {
	s.t.Helper()
	ep, err := s.fe.Endpoint(llm.DefaultNamespace + "/backend/" + llm.KvBlocksEndpoint)
	if err != nil {
		s.t.Fatal(err)
	}
	bc, err := loom.NewClient[llm.KvBlocksRequest, llm.KvSnapshot](ctx, ep)
	if err != nil {
		s.t.Fatal(err)
	}
	defer bc.Close()
	var want []uint64
	for snap, err := range bc.Direct(id).Generate(ctx, llm.KvBlocksRequest{}) {
		if err != nil {
			s.t.Fatal(err)
		}
		for _, b := range snap.Blocks {
			want = append(want, b.Hash)
		}
	}
	r.mu.RLock()
	var got []uint64
	for h := range r.idx.held[id] {
		got = append(got, h)
	}
	r.mu.RUnlock()
	slices.Sort(got)
	slices.Sort(want)
	if len(want) == 0 || !slices.Equal(got, want) {
		s.t.Fatalf("the router holds %d blocks for worker %x, the worker %d (or they differ)", len(got), id, len(want))
	}
}

// TestADepartedWorkersLateEventsAreIgnoredForAMinute: a worker that left
// discovery is dropped with its blocks, and its events and load reports
// that arrive later (still in flight, or from a process that does not
// know it is gone) bring back nothing for a minute; after that its id is
// forgotten too.
func TestADepartedWorkersLateEventsAreIgnoredForAMinute(t *testing.T) {
	r := testRouter(Config{})
	r.gone, r.resyncQ, r.wakeRes = map[uint64]int64{}, map[uint64]bool{}, make(chan struct{}, 1)
	const id = 7
	if left := r.apply(id, kvEvent{llm.KvEvent{EventID: 1, Stored: &llm.KvStored{BlockHashes: []uint64{1, 2}}}, 9}); left {
		t.Fatal("a worker's first event read as a departed worker's")
	}
	if !r.holds(id, 2) {
		t.Fatal("the worker's first event did not apply")
	}
	left := time.Now().UnixNano()
	r.mu.Lock()
	r.leave(id, left)
	r.mu.Unlock()
	if r.holds(id, 1) || r.idx.entries != 0 {
		t.Fatalf("the departed worker's blocks are still in the index (%d entries)", r.idx.entries)
	}
	late := kvEvent{llm.KvEvent{EventID: 2, Stored: &llm.KvStored{BlockHashes: []uint64{3}}}, 9}
	if gone := r.apply(id, late); !gone {
		t.Error("a departed worker's late event was not reported as a departed worker's")
	}
	if gone, _ := r.onLoad(id, llm.LoadMetrics{ActiveBlocks: 5}, left+1, func() int { return 0 }); !gone {
		t.Error("a departed worker's late load report was not reported as a departed worker's")
	}
	r.tidy(left + int64(goneFor) - 1)
	if len(r.workers) != 0 || r.holds(id, 3) || len(r.gone) != 1 {
		t.Fatalf("within the minute: %d workers, late block held %v, %d gone; want none, false and 1", len(r.workers), r.holds(id, 3), len(r.gone))
	}
	r.tidy(left + int64(goneFor) + 1)
	if len(r.gone) != 0 {
		t.Fatalf("a minute after it left, %d departed workers are remembered; want none", len(r.gone))
	}
}

// TestTwoPublishersOfOneIDDuringAFetchMakeTheRouterFetchAgain: events
// buffered while a worker's block set was fetched are applied after it;
// if two publishers sent the same id among them (the worker and a process
// speaking as it), the router cannot tell which it should have applied,
// and fetches again rather than keep the first.
func TestTwoPublishersOfOneIDDuringAFetchMakeTheRouterFetchAgain(t *testing.T) {
	const id, own, other = 7, 1, 2
	stored := func(eid, h, pub uint64) kvEvent {
		return kvEvent{llm.KvEvent{EventID: eid, Stored: &llm.KvStored{BlockHashes: []uint64{h}}}, pub}
	}
	for _, tc := range []struct {
		name     string
		buffered []kvEvent
		refetch  bool
	}{
		{"one publisher", []kvEvent{stored(6, 60, own), stored(7, 70, own)}, false},
		{"the other first", []kvEvent{stored(6, 66, other), stored(6, 60, own), stored(7, 70, own)}, true},
		{"the worker first", []kvEvent{stored(6, 60, own), stored(6, 66, other), stored(7, 70, own)}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := testRouter(Config{})
			r.gone, r.resyncQ, r.wakeRes = map[uint64]int64{}, map[uint64]bool{}, make(chan struct{}, 1)
			r.mu.Lock()
			w := r.worker(id)
			w.resyncing, w.buffered = true, tc.buffered
			r.replaceView(w, []uint64{50}, 5, 0)
			refetch := w.resyncing && r.resyncQ[id]
			r.mu.Unlock()
			if refetch != tc.refetch {
				t.Fatalf("after the fetch: fetching again %v, want %v (last event %d, gaps %d)", refetch, tc.refetch, w.lastEvent, r.gaps.Load())
			}
			if !tc.refetch && (w.lastEvent != 7 || !r.holds(id, 60) || !r.holds(id, 70)) {
				t.Fatalf("one publisher's events after the fetch: last event %d; want both applied", w.lastEvent)
			}
		})
	}
}

// TestKVRouterIgnoresMalformedEvents: a kv_event that is not one change
// (stored and removed at once, or an id of 0) is dropped as if lost,
// never half applied; the worker's own events go on applying.
func TestKVRouterIgnoresMalformedEvents(t *testing.T) {
	s := newSystem(t, 1, warmCfg())
	r := s.router(KV, Config{}).(*KVRouter)
	c := s.client(r, 1)
	ctx := testutil.Timeout(t, 30*time.Second)
	if res := send(ctx, c, r, "fill", prompt(1, 64), 2); res.err != nil {
		t.Fatal(res.err)
	}
	synced(t, r, s.cluster)
	w := s.cluster.Workers()[0]
	kv := s.kvPublisher(ctx, w.ID())
	const bogus1, bogus2 = 0xbad0001, 0xbad0002
	before := r.Stats()
	held := r.blocksOf(w.ID())
	for _, ev := range []llm.KvEvent{
		{EventID: w.Stats().KvEvents + 1, Stored: &llm.KvStored{BlockHashes: []uint64{bogus1}}, Removed: &llm.KvRemoved{BlockHashes: []uint64{1}}},
		{EventID: 0, Stored: &llm.KvStored{BlockHashes: []uint64{bogus2}}},
	} {
		if err := kv.Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, 10*time.Second, "both malformed events to be counted", func() bool {
		return r.Stats().EventsMalformed == before.EventsMalformed+2
	})
	if st := r.Stats(); r.holds(w.ID(), bogus1) || r.holds(w.ID(), bogus2) || st.EventsApplied != before.EventsApplied || st.Resyncs != before.Resyncs {
		t.Fatalf("after two malformed events: bogus blocks held %v %v, applied %d -> %d, resyncs %d -> %d; want neither applied and no fetch",
			r.holds(w.ID(), bogus1), r.holds(w.ID(), bogus2), before.EventsApplied, st.EventsApplied, before.Resyncs, st.Resyncs)
	}
	if n := r.blocksOf(w.ID()); n != held {
		t.Fatalf("the worker's blocks went from %d to %d", held, n)
	}
	if res := send(ctx, c, r, "after", prompt(2, 64), 2); res.err != nil {
		t.Fatal(res.err)
	}
	synced(t, r, s.cluster)
	if st := r.Stats(); st.Resyncs != before.Resyncs {
		t.Fatalf("resyncs %d -> %d; the worker's own events after malformed ones needed no fetch", before.Resyncs, st.Resyncs)
	}
	s.viewIsWorkers(ctx, r, w.ID())
}
