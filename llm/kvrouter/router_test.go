package kvrouter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"slices"
	"testing"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/events"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/llm"
	"github.com/loomrt/loom/llm/mocker"
	"github.com/loomrt/loom/loomtest"
)

// synced waits until the router's view of every worker has caught up
// with the worker's last kv_event and, for an idle worker, with its last
// load report.
//
// An idle report alone does not show the router has the last one: the
// report from before a request is idle too, and those the worker sent
// while serving it (busy) may still be on their way, to land just before
// the next pick. So the report must also name the worker's last kv_event
// (llm.LoadMetrics.KvEventID): one sent after that event, and idle, was
// sent after the request that stored it ended, and the router reads one
// worker's reports in order, so it has had every earlier one. A request
// is known to be out of the router's load view only if it stored a block.
func synced(t tb, r Router, c *mocker.Cluster) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, "the router to catch up with every worker's kv_events and load_metrics", func() bool {
		st := r.Stats()
		for _, w := range c.Workers() {
			i := slices.IndexFunc(st.Workers, func(ws WorkerStats) bool { return ws.ID == w.ID() })
			ws := w.Stats()
			if i < 0 || st.Workers[i].LastEventID != ws.KvEvents {
				return false
			}
			// And its load as reported is the worker's now, when idle.
			if l := st.Workers[i].Load; ws.Running+ws.Waiting == 0 && (l == nil || l.ActiveSlots+l.Waiting+l.PrefillTokens != 0 || l.KvEventID != ws.KvEvents) {
				return false
			}
		}
		return true
	})
}

func warmCfg() mocker.Config {
	return mocker.Config{PrefillPerToken: 20 * time.Microsecond, DecodeStep: time.Millisecond, MetricsMinInterval: 5 * time.Millisecond}
}

func TestKVRouterSendsAWarmPrefixToTheWorkerHoldingIt(t *testing.T) {
	s := newSystem(t, 4, warmCfg())
	r := s.router(KV, Config{})
	c := s.client(r, 4)
	synced(t, r, s.cluster)
	ctx := testutil.Timeout(t, 20*time.Second)
	system := prompt(1, 1024) // a long shared system prompt
	first := send(ctx, c, r, "cold-1", system, 4)
	if first.err != nil || first.cached != 0 {
		t.Fatalf("first request: %+v", first)
	}
	synced(t, r, s.cluster)
	for i := range 8 {
		q := append(slices.Clone(system), prompt(uint32(100+i), 40)...)
		warm := send(ctx, c, r, "warm", q, 4)
		if warm.err != nil {
			t.Fatal(warm.err)
		}
		if warm.worker != first.worker || warm.cached < 1024 || warm.overlap != 64 {
			t.Fatalf("request %d sharing a 1024-token prefix went to worker %x with %d tokens cached (router expected %d blocks); the prefix is on worker %x", i, warm.worker, warm.cached, warm.overlap, first.worker)
		}
		synced(t, r, s.cluster)
	}
	st := r.Stats()
	// Resyncs: each worker's block set was fetched as it appeared.
	// 64 blocks, then 8 of 66 (1,064 tokens: 66 full blocks of 16).
	if st.Decisions != 9 || st.OverlapBlocks < 8*64 || st.PromptBlocks != 64+8*66 || st.IndexEntries == 0 || st.Resyncs < 4 {
		t.Errorf("stats after 9 requests: %+v", st)
	}

	// Cold prompts go to the cheapest worker, at random among equals. Sent
	// one at a time, each once the router's view of every worker is idle
	// again, they have no overlap and equal loads everywhere: the holder
	// of the system prompt is no cheaper, and each goes to any of the 4
	// workers with probability 1/4, independently. So every worker gets
	// at least 1 and at most 40 of 64. A router that sends them all to
	// one worker (the first or last in order, the holder, where the last
	// went) fails this always; the real one fails it with a chance of
	// 4.04e-8 (some worker gets none, inclusion-exclusion over
	// (3/4)^64) + 2.0e-10 (some worker gets over 40, binomial tail):
	// about 1 in 25 million runs.
	workers := s.cluster.Workers()
	const cold, most = 64, 40
	got := map[uint64]int{}
	for i := range cold {
		res := send(ctx, c, r, fmt.Sprintf("cold-%d", i), prompt(uint32(200+i), 256), 2)
		if res.err != nil || res.cached != 0 || res.overlap != 0 {
			t.Fatalf("cold request %d: %+v", i, res)
		}
		got[res.worker]++
		synced(t, r, s.cluster)
	}
	for _, w := range workers {
		if n := got[w.ID()]; n < 1 || n > most {
			t.Errorf("worker %x got %d of %d cold requests sent while all were idle; want 1 to %d for each of the %d workers", w.ID(), n, cold, most, len(workers))
		}
	}

	// Against load: while one worker runs a long request (64 blocks of
	// prompt and thousands of tokens to go), no cold prompt goes there.
	// Its cost carries those 64+ active blocks, more than any other
	// worker's can, even by a load report sent during its last request
	// (17 blocks active, 16 pending), so the real router never does. A
	// router ignoring load would send each there with probability 1/4:
	// all 64 missing it has a chance of (3/4)^64 = 1.0e-8.
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	long := make(chan result, 1)
	go func() { long <- send(lctx, c, r, "long", prompt(400, 1024), 7000) }()
	var busy uint64
	testutil.Eventually(t, 10*time.Second, "the router to route the long request", func() bool {
		for _, ws := range r.Stats().Workers {
			if ws.Open == 1 {
				busy = ws.ID
				return true
			}
		}
		return false
	})
	for i := range cold {
		res := send(ctx, c, r, fmt.Sprintf("loaded-%d", i), prompt(uint32(500+i), 256), 2)
		if res.err != nil || res.cached != 0 {
			t.Fatalf("cold request %d beside a long one: %+v", i, res)
		}
		if res.worker == busy {
			t.Fatalf("cold request %d went to worker %x, busy with a long request, while 3 workers were idle", i, busy)
		}
	}
	stop()
	// At 1 ms a token the long request could not have ended on its own.
	res := <-long
	if res.tokens >= 7000 {
		t.Fatalf("the long request ended by itself (%+v): the cold requests did not all run beside it", res)
	}
	if res.worker != busy {
		t.Fatalf("the long request ran on worker %x; the router's stats had it open on %x", res.worker, busy)
	}
}

func TestKVRouterRefusesAModelNoWorkerServes(t *testing.T) {
	s := newSystem(t, 1, warmCfg())
	r := s.router(KV, Config{})
	c := s.client(r, 1)
	ctx := llm.WithRoute(testutil.Timeout(t, 5*time.Second), &llm.RouteInfo{RequestID: "x", Model: "nope", TokenIDs: prompt(1, 8)})
	for _, err := range c.Generate(ctx, llm.Request{ID: "x", Model: "nope", TokenIDs: prompt(1, 8), MaxTokens: 1}) {
		if !errors.Is(err, llm.ErrNoWorker) {
			t.Fatalf("a request for an unserved model ended with %v, want ErrNoWorker", err)
		}
		return
	}
	t.Fatal("a request for an unserved model streamed nothing and no error")
}

// TestKVRouterResyncsAfterAGapInEventIDs publishes, as the worker, an
// event whose id skips ahead (the events between are lost) and which
// stores a block the worker does not have: the router must notice, fetch
// the worker's block set and replace its view with it.
func TestKVRouterResyncsAfterAGapInEventIDs(t *testing.T) {
	s := newSystem(t, 1, warmCfg())
	rr := s.router(KV, Config{})
	r := rr.(*KVRouter)
	c := s.client(r, 1)
	ctx := testutil.Timeout(t, 20*time.Second)
	for i := range 3 {
		if res := send(ctx, c, r, "fill", prompt(uint32(i), 64), 2); res.err != nil {
			t.Fatal(res.err)
		}
	}
	synced(t, r, s.cluster)
	w := s.cluster.Workers()[0]
	before := r.Stats()

	// A runtime with the worker's instance id publishes the bad event.
	pub := s.kvPublisher(ctx, w.ID())
	const bogus = 0xdeadbeef
	if err := pub.Publish(ctx, llm.KvEvent{EventID: w.Stats().KvEvents + 3, Stored: &llm.KvStored{BlockHashes: []uint64{bogus}}}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "a resync after the gap", func() bool {
		st := r.Stats()
		return st.Resyncs > before.Resyncs && st.Gaps > before.Gaps && st.EventsDiscarded > before.EventsDiscarded
	})
	// The view is the worker's block set, without the bogus block.
	ep, err := s.fe.Endpoint(llm.DefaultNamespace + "/backend/" + llm.KvBlocksEndpoint)
	if err != nil {
		t.Fatal(err)
	}
	bc, err := loom.NewClient[llm.KvBlocksRequest, llm.KvSnapshot](ctx, ep)
	if err != nil {
		t.Fatal(err)
	}
	defer bc.Close()
	want := map[uint64]bool{}
	for snap, err := range bc.Direct(w.ID()).Generate(ctx, llm.KvBlocksRequest{}) {
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range snap.Blocks {
			want[b.Hash] = true
		}
	}
	r.mu.RLock()
	got := r.idx.held[w.ID()]
	_, hasBogus := got[bogus]
	same := len(got) == len(want)
	for h := range got {
		same = same && want[h]
	}
	r.mu.RUnlock()
	if hasBogus || !same || len(want) == 0 {
		t.Fatalf("after the resync the router holds %d blocks for the worker (bogus block: %v); the worker has %d", len(got), hasBogus, len(want))
	}
	// Routing goes on from the new view: the next real events apply.
	if res := send(ctx, c, r, "after", prompt(9, 64), 2); res.err != nil {
		t.Fatal(res.err)
	}
	synced(t, r, s.cluster)
}

// TestKVRouterHoldsEventsBackWhileItFallsBehind stalls the router's
// reader (the test holds the router's lock, which applying an event
// takes) while a worker publishes three times the events the
// subscription's buffer holds. None may be dropped: once the reader goes
// on, every event applies in order, with no gap and no fetch of a block
// set.
func TestKVRouterHoldsEventsBackWhileItFallsBehind(t *testing.T) {
	s := newSystem(t, 1, warmCfg())
	r := s.router(KV, Config{}).(*KVRouter)
	synced(t, r, s.cluster)
	ctx := testutil.Timeout(t, 20*time.Second)

	// A worker known to the router by its events alone.
	const id = 0xfeed
	pub := s.kvPublisher(ctx, id)
	before := r.Stats()
	buf := s.fe.Config().Events.BufferSize
	n := 3 * buf

	r.mu.Lock()
	locked := true
	defer func() {
		if locked {
			r.mu.Unlock()
		}
	}()
	for i := range n {
		if err := pub.Publish(ctx, llm.KvEvent{EventID: uint64(i + 1), Stored: &llm.KvStored{BlockHashes: []uint64{uint64(i+1) << 8}}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := pub.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// The reader holds one event, waiting for the lock; the buffer fills
	// behind it and one more event waits to enter.
	testutil.Eventually(t, 10*time.Second, "the kv_events subscription's buffer to fill", func() bool {
		return r.kvEvents.Stats().Received > uint64(buf)
	})
	r.mu.Unlock()
	locked = false

	testutil.Eventually(t, 10*time.Second, "every event applied, or one dropped", func() bool {
		st := r.Stats()
		i := slices.IndexFunc(st.Workers, func(ws WorkerStats) bool { return ws.ID == id })
		return i >= 0 && st.Workers[i].LastEventID == uint64(n) || r.kvEvents.Stats().Dropped > 0
	})
	st := r.Stats()
	if st.EventsDropped != 0 || st.EventsReceived-before.EventsReceived != uint64(n) || st.Gaps != before.Gaps || st.Resyncs != before.Resyncs || st.EventsApplied-before.EventsApplied != uint64(n) {
		t.Fatalf("after a stall over %d events: received %d, dropped %d, applied %d, gaps %d -> %d, resyncs %d -> %d; want every event received and applied, none dropped, no gap, no resync",
			n, st.EventsReceived-before.EventsReceived, st.EventsDropped, st.EventsApplied-before.EventsApplied, before.Gaps, st.Gaps, before.Resyncs, st.Resyncs)
	}
	r.mu.RLock()
	held := len(r.idx.held[id])
	r.mu.RUnlock()
	if held != n {
		t.Fatalf("the index holds %d blocks of the worker, want %d", held, n)
	}
}

func TestKVRouterDropsWorkersThatLeave(t *testing.T) {
	s := newSystem(t, 3, warmCfg())
	rr := s.router(KV, Config{})
	r := rr.(*KVRouter)
	c := s.client(r, 3)
	ctx := testutil.Timeout(t, 20*time.Second)
	for i := range 9 {
		if res := send(ctx, c, r, "fill", prompt(uint32(i), 64), 2); res.err != nil {
			t.Fatal(res.err)
		}
	}
	synced(t, r, s.cluster)
	ws := s.cluster.Workers()
	stopped, killed := ws[0].ID(), ws[1].ID()
	if err := s.cluster.Stop(ctx, stopped); err != nil {
		t.Fatal(err)
	}
	if err := s.cluster.Kill(killed); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the stopped and the killed worker to leave the router's view", func() bool {
		st := r.Stats()
		return len(st.Workers) == 1 && st.Workers[0].ID == ws[2].ID()
	})
	r.mu.RLock()
	left := len(r.idx.held[stopped]) + len(r.idx.held[killed])
	entries, own := r.idx.entries, len(r.idx.held[ws[2].ID()])
	r.mu.RUnlock()
	if left != 0 || entries != own {
		t.Fatalf("the index keeps %d blocks of workers that left (%d entries, %d of the last worker)", left, entries, own)
	}
	if res := send(ctx, c, r, "last", prompt(1, 64), 2); res.err != nil || res.worker != ws[2].ID() {
		t.Fatalf("after two workers left: %+v", res)
	}
}

func TestKVApproxPredictsFromItsOwnDecisions(t *testing.T) {
	s := newSystem(t, 3, warmCfg())
	// A TTL no request outlasts, however loaded the host: expiry is
	// checked below by running the router's sweep as if it had passed.
	const ttl = 10 * time.Minute
	rr := s.router(KVApprox, Config{ApproxTTL: ttl})
	r := rr.(*KVRouter)
	c := s.client(r, 3)
	ctx := testutil.Timeout(t, 20*time.Second)
	sys := prompt(1, 512)
	first := send(ctx, c, r, "a", sys, 2)
	if first.err != nil {
		t.Fatal(first.err)
	}
	for i := range 4 {
		res := send(ctx, c, r, "b", append(slices.Clone(sys), prompt(uint32(50+i), 32)...), 2)
		if res.err != nil || res.worker != first.worker || res.overlap != 32 || res.cached < 512 {
			t.Fatalf("request %d with the same prefix: %+v; want worker %x, 32 blocks predicted, 512+ tokens cached", i, res, first.worker)
		}
	}
	if st := r.Stats(); st.EventsApplied != 0 || st.IndexEntries == 0 {
		t.Fatalf("kv_approx applied %d events and predicts %d entries; want none and some", st.EventsApplied, st.IndexEntries)
	}
	// Just short of the TTL after the last pick the predictions hold;
	// past it, the sweep drops them all.
	r.tidy(time.Now().Add(ttl - time.Minute).UnixNano())
	if st := r.Stats(); st.IndexEntries == 0 {
		t.Fatal("the predictions expired before their TTL")
	}
	r.tidy(time.Now().Add(ttl + time.Second).UnixNano())
	if st := r.Stats(); st.IndexEntries != 0 {
		t.Fatalf("%d predictions left after their TTL, want none", st.IndexEntries)
	}
}

func TestNewByName(t *testing.T) {
	s := newSystem(t, 2, warmCfg())
	for _, name := range Names {
		t.Run(name, func(t *testing.T) {
			r := s.router(name, Config{})
			c := s.client(r, 2)
			ctx := testutil.Timeout(t, 10*time.Second)
			seen := map[uint64]int{}
			for i := range 6 {
				res := send(ctx, c, r, "n", prompt(uint32(300+i), 32), 1)
				if res.err != nil {
					t.Fatal(res.err)
				}
				seen[res.worker]++
			}
			st := r.Stats()
			if st.Name != name || st.Decisions != 6 {
				t.Fatalf("stats %+v; want name %s and 6 decisions", st, name)
			}
			if name == RoundRobin && (seen[s.cluster.Workers()[0].ID()] != 3 || len(seen) != 2) {
				t.Fatalf("round robin over 2 workers sent %v", seen)
			}
		})
	}
	if _, err := New(t.Context(), s.fe, "nearest", Config{}); !errors.Is(err, ErrUnknownRouter) {
		t.Fatalf("an unknown router name gave %v", err)
	}
}

func TestKVRouterForgetsRequestsNeverReportedDone(t *testing.T) {
	s := newSystem(t, 1, warmCfg())
	// The default TTL (10 minutes) outlasts the request, whose context
	// ends within 10 s, and the check after it; a TTL short enough to
	// wait out could pass before a slow host sees the request open.
	r := s.router(KV, Config{}).(*KVRouter)
	c := s.client(r, 1)
	ctx := llm.WithRoute(testutil.Timeout(t, 10*time.Second), &llm.RouteInfo{RequestID: "lost", Model: mocker.DefaultModel, TokenIDs: prompt(1, 32)})
	for _, err := range c.Generate(ctx, llm.Request{ID: "lost", TokenIDs: prompt(1, 32), MaxTokens: 1}) {
		if err != nil {
			t.Fatal(err)
		}
	}
	if st := r.Stats(); len(st.Workers) != 1 || st.Workers[0].Open != 1 {
		t.Fatalf("a routed request without Done: stats %+v, want 1 open", st.Workers)
	}
	// Seen open, the request is made older than the TTL by shortening
	// the TTL (maintain reads it under r.bk): the router's own sweep must
	// now forget it.
	r.bk.Lock()
	r.cfg.RequestTTL = time.Nanosecond
	r.bk.Unlock()
	testutil.Eventually(t, 10*time.Second, "the request to be forgotten after RequestTTL", func() bool { return r.Stats().Workers[0].Open == 0 })
}

// TestKVRouterResyncsAfterLostEventPlaneMessages makes the router's view
// of a worker drift (as lost events would), then delivers an event whose
// envelope sequence skips one, as NATS does when it drops a message: the
// event plane reports the gap and the router replaces its view with the
// worker's block set.
func TestKVRouterResyncsAfterLostEventPlaneMessages(t *testing.T) {
	s := newSystem(t, 1, warmCfg())
	rr := s.router(KV, Config{})
	r := rr.(*KVRouter)
	c := s.client(r, 1)
	ctx := testutil.Timeout(t, 20*time.Second)
	scope := events.Scope{Namespace: llm.DefaultNamespace, Component: llm.WorkerComponent}
	watch, err := events.Subscribe[llm.KvEvent](ctx, s.fe, scope, llm.TopicKvEvents)
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Close()
	if res := send(ctx, c, r, "fill", prompt(1, 64), 2); res.err != nil {
		t.Fatal(res.err)
	}
	synced(t, r, s.cluster)
	w := s.cluster.Workers()[0]
	var last events.Event[llm.KvEvent]
	for ev, err := range watch.Events(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		if last = ev; ev.Value.EventID == w.Stats().KvEvents {
			break
		}
	}
	const bogus = 0xfeedface
	r.mu.Lock()
	r.idx.store(w.ID(), []uint64{bogus}, 0) // the drift
	r.mu.Unlock()
	before := r.Stats()

	// The worker's publisher, one sequence number further than it is: the
	// event plane sees sequence last+1 lost. The event itself is one the
	// router has applied already.
	payload, err := json.Marshal(last.Value)
	if err != nil {
		t.Fatal(err)
	}
	env := events.Envelope{PublisherID: last.PublisherID, InstanceID: w.ID(), Sequence: last.Sequence + 2, PublishedAt: time.Now().UnixNano(), Topic: llm.TopicKvEvents, Payload: payload}
	nc, err := s.fe.NATS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish(last.Subject, env.AppendJSON(nil)); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "a resync after the lost message", func() bool {
		st := r.Stats()
		return st.Gaps > before.Gaps && st.Resyncs > before.Resyncs
	})
	r.mu.RLock()
	_, drifted := r.idx.held[w.ID()][bogus]
	n := len(r.idx.held[w.ID()])
	r.mu.RUnlock()
	if drifted || n == 0 {
		t.Fatalf("after the resync the view has %d blocks, drifted block still there: %v", n, drifted)
	}
	if st := r.Stats(); st.EventsStale == before.EventsStale {
		t.Errorf("the repeated event was not counted as stale: %+v", st)
	}
}

// TestKVRouterLearnsOfEventsLostAtTheEndOfASequence: events lost at the
// end of an idle worker's sequence (published while the event plane was
// down) leave no gap for a later event to show. The worker's load reports
// name its last event, and the router fetches its block set.
func TestKVRouterLearnsOfEventsLostAtTheEndOfASequence(t *testing.T) {
	s := newSystem(t, 1, warmCfg())
	r := s.router(KV, Config{LostAfter: 200 * time.Millisecond}).(*KVRouter)
	c := s.client(r, 1)
	ctx := testutil.Timeout(t, 20*time.Second)
	if res := send(ctx, c, r, "fill", prompt(1, 64), 2); res.err != nil {
		t.Fatal(res.err)
	}
	synced(t, r, s.cluster)
	w := s.cluster.Workers()[0]
	ws := w.Stats()

	// The router missed the worker's last event, and has no view of it.
	r.mu.Lock()
	r.workers[w.ID()].lastEvent = ws.KvEvents - 1
	r.idx.drop(w.ID())
	r.mu.Unlock()
	before := r.Stats()

	synced(t, r, s.cluster)
	st := r.Stats()
	if st.Gaps == before.Gaps || st.Resyncs == before.Resyncs {
		t.Errorf("gaps %d -> %d, resyncs %d -> %d; want the lost event counted as a gap and the block set fetched", before.Gaps, st.Gaps, before.Resyncs, st.Resyncs)
	}
	i := slices.IndexFunc(st.Workers, func(s WorkerStats) bool { return s.ID == w.ID() })
	if i < 0 || st.Workers[i].Blocks != ws.KvBlocks {
		t.Fatalf("the router's view of the worker after the fetch: %+v; want its %d blocks", st.Workers, ws.KvBlocks)
	}
}

// TestAnAwaitedEventIsLostOnlyAfterLostAfter: a load report's event id
// makes the router wait for that event; it counts it lost only once it
// has waited lostAfter, and never while a fetch is under way.
func TestAnAwaitedEventIsLostOnlyAfterLostAfter(t *testing.T) {
	const after = 100
	w := newWorkerState(1)
	w.lastEvent = 5
	steps := []struct {
		what      string
		resyncing bool
		applied   uint64
		reported  uint64
		now       int64
		lost      bool
	}{
		{what: "a report that does not say", reported: 0, now: 1000},
		{what: "a report of an event applied already", reported: 5, now: 1010},
		{what: "a report of an event not yet applied", reported: 7, now: 1020},
		{what: "a later report before lostAfter", reported: 8, now: 1020 + after - 1},
		{what: "a report lostAfter later", reported: 8, now: 1020 + after, lost: true},
		{what: "the awaited event applied", applied: 7, reported: 8, now: 1200},
		{what: "lostAfter after the next report", applied: 7, reported: 8, now: 1200 + after, lost: true},
		{what: "a fetch under way", resyncing: true, applied: 7, reported: 9, now: 1400},
		{what: "the fetch done, past what was awaited", applied: 9, reported: 9, now: 2000},
		{what: "a report that stops saying", applied: 9, reported: 0, now: 3000},
	}
	for _, s := range steps {
		w.resyncing = s.resyncing
		if s.applied != 0 {
			w.lastEvent = s.applied
		}
		if lost := w.await(s.reported, s.now, after); lost != s.lost {
			t.Fatalf("%s (report %d at %d, applied %d): lost %v, want %v", s.what, s.reported, s.now, w.lastEvent, lost, s.lost)
		}
	}
}

// TestALoadReportFindsEventsLostOnlyWhenNoneWait: an event a load report
// named, missing for LostAfter, is counted lost and the worker's block
// set fetched, unless kv_events wait to be read: a router that falls
// behind holds its events back, and is not missing them.
func TestALoadReportFindsEventsLostOnlyWhenNoneWait(t *testing.T) {
	sys := loomtest.New(t, loomtest.Options{})
	const lostAfter = 100
	r, err := NewApprox(t.Context(), sys.Runtime(), Config{LostAfter: lostAfter})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	const id = 0xfeed
	waiting := 0
	report := func(at int64) Stats {
		t.Helper()
		if left, _ := r.onLoad(id, llm.LoadMetrics{KvEventID: 3}, at, func() int { return waiting }); left {
			t.Fatal("a worker that never left counted as gone")
		}
		return r.Stats()
	}
	queued := func() (queued, resyncing bool) {
		r.mu.RLock()
		defer r.mu.RUnlock()
		_, queued = r.resyncQ[id]
		return queued, r.workers[id].resyncing
	}
	if st := report(1000); st.Gaps != 0 {
		t.Fatalf("the first report of an event not applied: gaps %d; want it awaited, not lost", st.Gaps)
	}
	waiting = 5
	if st := report(1000 + lostAfter); st.Gaps != 0 {
		t.Fatalf("a report lostAfter later, with kv_events waiting to be read: gaps %d; want none", st.Gaps)
	}
	waiting = 0
	if st := report(1000 + lostAfter + 1); st.Gaps != 1 {
		t.Fatalf("a report lostAfter later, with no kv_event waiting: gaps %d; want 1", st.Gaps)
	}
	if q, resyncing := queued(); !q || !resyncing {
		t.Fatalf("after the loss: fetch queued %v, resyncing %v; want the block set fetched", q, resyncing)
	}
	if st := report(1000 + 3*lostAfter); st.Gaps != 1 {
		t.Fatalf("a report while the block set is fetched: gaps %d; want still 1", st.Gaps)
	}
}

// TestAStalledBlockSetHoldsUpNoOtherFetch: a worker whose kv_blocks
// endpoint answers nothing (its host gone, its engine stalled) holds up
// its own fetch for ResyncTimeout, not the fetch of another worker that
// needs one meanwhile.
func TestAStalledBlockSetHoldsUpNoOtherFetch(t *testing.T) {
	s := newSystem(t, 1, warmCfg())
	r := s.router(KV, Config{LostAfter: 200 * time.Millisecond, ResyncTimeout: time.Minute}).(*KVRouter)
	c := s.client(r, 1)
	ctx := testutil.Timeout(t, 30*time.Second)
	if res := send(ctx, c, r, "fill", prompt(1, 64), 2); res.err != nil {
		t.Fatal(res.err)
	}
	synced(t, r, s.cluster)

	// A worker whose block set never comes: the router fetches it as the
	// worker appears, and the fetch waits.
	stalled := s.Runtime()
	fetching, fetchEnded, release := make(chan struct{}), make(chan struct{}), make(chan struct{})
	t.Cleanup(func() { close(release) }) // before the runtime's shutdown waits for the fetch
	serve := func(endpoint string, eng any) {
		ep, err := stalled.Endpoint(llm.DefaultNamespace + "/" + llm.WorkerComponent + "/" + endpoint)
		if err != nil {
			t.Fatal(err)
		}
		switch eng := eng.(type) {
		case loom.Engine[llm.KvBlocksRequest, llm.KvSnapshot]:
			err = loom.Serve(ctx, ep, eng)
		case loom.Engine[llm.Request, llm.Response]:
			err = loom.Serve(ctx, ep, eng)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	serve(llm.KvBlocksEndpoint, loom.EngineFunc[llm.KvBlocksRequest, llm.KvSnapshot](func(ctx context.Context, _ llm.KvBlocksRequest) iter.Seq2[llm.KvSnapshot, error] {
		return func(func(llm.KvSnapshot, error) bool) {
			close(fetching) // fetched once: the test ends before a retry
			select {
			case <-ctx.Done():
			case <-release:
			}
			close(fetchEnded)
		}
	}))
	serve(llm.GenerateEndpoint, loom.EngineFunc[llm.Request, llm.Response](func(context.Context, llm.Request) iter.Seq2[llm.Response, error] {
		return func(func(llm.Response, error) bool) {}
	}))
	select {
	case <-fetching:
	case <-ctx.Done():
		t.Fatal("the router never fetched the new worker's block set")
	}

	// Meanwhile the router loses the mock worker's last event, and its
	// view of the worker: it fetches the worker's block set again.
	w := s.cluster.Workers()[0]
	ws := w.Stats()
	r.mu.Lock()
	r.workers[w.ID()].lastEvent = ws.KvEvents - 1
	r.idx.drop(w.ID())
	r.mu.Unlock()
	testutil.Eventually(t, 10*time.Second, "the mock worker's block set to be fetched while the other fetch waits", func() bool {
		st := r.Stats()
		i := slices.IndexFunc(st.Workers, func(s WorkerStats) bool { return s.ID == w.ID() })
		return i >= 0 && st.Workers[i].LastEventID == ws.KvEvents && st.Workers[i].Blocks == ws.KvBlocks
	})
	select {
	case <-fetchEnded:
		t.Fatal("the stalled fetch ended before the test let it; the test proves nothing")
	default:
	}
}
