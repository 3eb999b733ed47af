package kvrouter

import (
	"context"
	"maps"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/llm"
)

func testRouter(cfg Config) *KVRouter {
	cfg, err := cfg.withDefaults()
	if err != nil {
		panic(err)
	}
	return &KVRouter{cfg: cfg, events: true, idx: newIndex(), workers: map[uint64]*workerState{},
		inflight: map[string]*sent{}}
}

func cands(ids ...uint64) []candidate {
	out := make([]candidate, len(ids))
	for i, id := range ids {
		out[i].c = &loom.Candidate{Instance: discovery.Instance{ID: id}}
	}
	return out
}

func TestCostFunction(t *testing.T) {
	r := testRouter(Config{})
	// A 10-block prompt; worker 1 holds 8 leading blocks, worker 2 none,
	// equal loads: worker 1 wins, with the costs the formula says.
	cs := cands(1, 2)
	cs[0].overlap = 8
	for i := range cs {
		cs[i].loadAt = 1
		cs[i].load = llm.LoadMetrics{ActiveBlocks: 20, PrefillTokens: 32}
	}
	if got := r.choose(cs, 10, 16); got != 0 {
		t.Fatalf("chose %d, want the worker holding the prefix", got)
	}
	// prefill = (10-8) + ceil(32/16) = 4, decode = 20+10 = 30, cost 34;
	// worker 2: prefill 10+2 = 12, decode 30, cost 42.
	if cs[0].cost != 34 || cs[1].cost != 42 {
		t.Fatalf("costs %v and %v, want 34 and 42", cs[0].cost, cs[1].cost)
	}
	// A heavily loaded holder loses to an idle worker.
	cs[0].load.ActiveBlocks = 500
	if got := r.choose(cs, 10, 16); got != 1 {
		t.Fatalf("chose %d, want the idle worker over the overloaded holder", got)
	}
	// Waiting requests count as prefills of this prompt's size.
	cs[0].load.ActiveBlocks, cs[1].load.Waiting = 20, 1
	r.choose(cs, 10, 16)
	if cs[1].prefill != 22 {
		t.Fatalf("a worker with one request waiting has prefill %d, want 10+2+10", cs[1].prefill)
	}
	// The overlap weight scales the prefill term.
	r2 := testRouter(Config{OverlapWeight: 2})
	cs[1].load.Waiting = 0
	r2.choose(cs, 10, 16)
	if cs[0].cost != 2*4+30 {
		t.Fatalf("weight 2: cost %v, want 38", cs[0].cost)
	}
}

func TestCostCountsRequestsRoutedSinceTheLastLoadReport(t *testing.T) {
	r := testRouter(Config{})
	r.account(1).open.add(&sent{id: "old", worker: 1, blocks: 7, uncach: 7, at: 5})  // before the report: in it
	r.account(1).open.add(&sent{id: "new", worker: 1, blocks: 9, uncach: 4, at: 15}) // after: not yet in it
	cs := cands(1)
	cs[0].w = r.worker(1)
	cs[0].loadAt = 10
	cs[0].load = llm.LoadMetrics{ActiveBlocks: 100}
	r.choose(cs, 2, 16)
	if cs[0].decode != 100+9+2 || cs[0].prefill != 2+4 {
		t.Fatalf("decode %d prefill %d; want 111 and 6", cs[0].decode, cs[0].prefill)
	}
	// With no report at all, every open request counts.
	cs[0].loadAt, cs[0].load = 0, llm.LoadMetrics{}
	r.choose(cs, 2, 16)
	if cs[0].decode != 7+9+2 || cs[0].prefill != 2+7+4 {
		t.Fatalf("without load metrics: decode %d prefill %d; want 18 and 13", cs[0].decode, cs[0].prefill)
	}
}

func TestCostTiesAreBrokenFairly(t *testing.T) {
	r := testRouter(Config{})
	counts := map[int]int{}
	const n = 3000
	for range n {
		counts[r.choose(cands(1, 2, 3), 4, 16)]++
	}
	for i := range 3 {
		// Expected 1000 each; 800 is more than 7 standard deviations off.
		if counts[i] < 800 {
			t.Fatalf("three tied workers were chosen %v times in %d picks; want about a third each", counts, n)
		}
	}
}

func TestTemperatureSamplesByCost(t *testing.T) {
	cs := cands(1, 2, 3)
	cs[0].overlap = 10 // cheapest
	cs[1].overlap = 5
	cold := testRouter(Config{})
	for range 100 {
		if cold.choose(cs, 10, 16) != 0 {
			t.Fatal("temperature 0 did not take the cheapest worker")
		}
	}
	hot := testRouter(Config{Temperature: 1})
	counts := map[int]int{}
	for range 3000 {
		counts[hot.choose(cs, 10, 16)]++
	}
	// Normalised costs 0, 0.5, 1: weights 1, e^-0.5, e^-1 (0.52, 0.32, 0.19).
	if !(counts[0] > counts[1] && counts[1] > counts[2] && counts[2] > 300) {
		t.Fatalf("temperature 1 chose %v; want every worker sometimes, cheaper ones more often", counts)
	}
}

func TestConfigRejectsBadValues(t *testing.T) {
	for _, c := range []Config{{BlockSize: -1}, {OverlapWeight: -1}, {Temperature: -0.5}, {Namespace: "Bad Name"}} {
		if _, err := c.withDefaults(); err == nil {
			t.Errorf("config %+v was accepted", c)
		}
	}
}

func TestCostTakesDoneRequestsOffTheLastReport(t *testing.T) {
	r := testRouter(Config{})
	r.account(1).done = doneSince{loadAt: 10, blocks: 30, uncach: 5}
	cs := cands(1)
	cs[0].w = r.worker(1)
	cs[0].loadAt = 10
	cs[0].load = llm.LoadMetrics{ActiveBlocks: 40, PrefillTokens: 3 * 16}
	r.choose(cs, 2, 16)
	if cs[0].decode != 40-30+2 || cs[0].prefill != 2+0 {
		t.Fatalf("decode %d prefill %d; want 12 and 2 (pending floored at zero)", cs[0].decode, cs[0].prefill)
	}
	// A newer report already leaves them out.
	cs[0].loadAt = 11
	r.choose(cs, 2, 16)
	if cs[0].decode != 42 {
		t.Fatalf("decode %d after a newer report, want 42", cs[0].decode)
	}
	// A request Done after the newer report, which counted it, starts the
	// sums afresh: the 30 blocks Done since the older report are gone.
	r.worker(1).loadAt = 11
	s := &sent{id: "x", worker: 1, w: r.worker(1), blocks: 4, uncach: 1, at: 9}
	r.inflight["x"] = s
	r.account(1).open.add(s)
	r.Done("x")
	r.choose(cs, 2, 16)
	if cs[0].decode != 40-4+2 {
		t.Fatalf("decode %d after a request Done that the newer report counted, want 38", cs[0].decode)
	}
}

// A worker's open requests keep their sums as requests open and close
// and as load reports come: the sums after any time are those of the
// requests routed after it, counted one by one.
func TestOpenSetSumsMatchACount(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	o := &openSet{reqs: map[string]*sent{}}
	var all []*sent
	for i := range 20000 {
		switch op := rng.IntN(10); {
		case op < 4 || len(all) == 0:
			s := &sent{id: strconv.Itoa(i), blocks: rng.IntN(50), uncach: rng.IntN(50), at: int64(rng.IntN(1000))}
			o.add(s)
			all = append(all, s)
		case op < 7:
			k := rng.IntN(len(all))
			o.remove(all[k])
			o.remove(all[k]) // twice: the second does nothing
			all = slices.Delete(all, k, k+1)
		default:
			// A report: usually the last one again, sometimes a new one.
			at := o.since
			if op == 9 {
				at = int64(rng.IntN(1000))
			}
			var blocks, uncach int
			for _, s := range all {
				if s.at > at {
					blocks += s.blocks
					uncach += s.uncach
				}
			}
			if b, u := o.after(at); b != blocks || u != uncach {
				t.Fatalf("step %d: after(%d) = %d, %d; counting gives %d, %d", i, at, b, u, blocks, uncach)
			}
		}
	}
	// A request routed again replaces its first routing: closing the
	// first does not close the second.
	first := &sent{id: "again", blocks: 3, uncach: 3, at: 2000}
	o.add(first)
	second := &sent{id: "again", blocks: 5, uncach: 1, at: 2001}
	o.remove(first)
	o.add(second)
	o.remove(first)
	if o.reqs["again"] != second {
		t.Fatal("closing a request's first routing closed its second")
	}
}

// The memory a pick allocates does not grow with the workers it chooses
// among: its working memory is kept from one pick to the next.
func TestPickMemoryDoesNotGrowWithTheWorkers(t *testing.T) {
	perPick := func(workers int) float64 {
		r := testRouter(Config{})
		all := make([]*loom.Candidate, workers)
		for i := range all {
			id := uint64(i + 1)
			all[i] = &loom.Candidate{Instance: discovery.Instance{ID: id, Metadata: map[string]string{llm.MetaModel: "m"}}}
			r.account(id)
		}
		toks := make([]uint32, 270)
		ctx := llm.WithRoute(context.Background(), &llm.RouteInfo{RequestID: "r", Model: "m", TokenIDs: toks})
		pick := func() {
			if _, err := r.Pick(ctx, all); err != nil {
				t.Fatal(err)
			}
			r.Done("r")
		}
		for range 100 {
			pick()
		}
		// The counts are the process's: the least of three rounds leaves
		// out what another goroutine happened to allocate meanwhile.
		const picks = 2000
		least := math.Inf(1)
		for range 3 {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			for range picks {
				pick()
			}
			runtime.ReadMemStats(&after)
			least = min(least, float64(after.TotalAlloc-before.TotalAlloc)/picks)
		}
		return least
	}
	few, many := perPick(8), perPick(64)
	t.Logf("bytes allocated per pick: %.0f among 8 workers, %.0f among 64", few, many)
	// Under the race detector sync.Pool drops a share of what it is given
	// on purpose, so only the plain run counts.
	if !raceEnabled && many > few+64 {
		t.Fatalf("a pick among 64 workers allocates %.0f bytes, among 8 %.0f: its memory grows with the workers", many, few)
	}
}

// BenchmarkPick is one pick and its Done among workers workers that
// all report load, a 270-token prompt: held by none of them, or its
// first 16 blocks held by every worker (a system prompt every worker has
// cached).
func BenchmarkPick(b *testing.B) {
	for _, workers := range []int{8, 64, 256, 1024} {
		for _, held := range []bool{false, true} {
			name := "workers=" + strconv.Itoa(workers) + "/held=none"
			if held {
				name = "workers=" + strconv.Itoa(workers) + "/held=all"
			}
			b.Run(name, func(b *testing.B) {
				r := testRouter(Config{})
				toks := prompt(0, 270)
				hashes := llm.BlockHashes(toks, llm.DefaultBlockSize)
				all := make([]*loom.Candidate, workers)
				for i := range all {
					id := uint64(i + 1)
					all[i] = &loom.Candidate{Instance: discovery.Instance{ID: id, Metadata: map[string]string{llm.MetaModel: "m"}}}
					w := r.worker(id)
					w.load, w.loadAt = llm.LoadMetrics{ActiveBlocks: i % 7, PrefillTokens: 16 * (i % 3)}, 1
					if held {
						r.idx.store(id, hashes[:16], 0)
					}
				}
				ctx := llm.WithRoute(context.Background(), &llm.RouteInfo{RequestID: "r", Model: "m", TokenIDs: toks})
				b.ReportAllocs()
				for b.Loop() {
					if _, err := r.Pick(ctx, all); err != nil {
						b.Fatal(err)
					}
					r.Done("r")
				}
			})
		}
	}
}

// TestPickAmongManyHolders routes among more workers holding a prompt's
// prefix than the pick compares one by one: each worker holds a longer
// prefix than the one before, at equal loads, so the deepest wins, with
// its overlap; then the counts of the first pick do not leak into a
// second.
func TestPickAmongManyHolders(t *testing.T) {
	const workers = 3 * askSets
	r := testRouter(Config{})
	toks := prompt(0, 16*(workers+2))
	hashes := llm.BlockHashes(toks, llm.DefaultBlockSize)
	all := make([]*loom.Candidate, workers)
	for i := range all {
		id := uint64(i + 1)
		all[i] = &loom.Candidate{Instance: discovery.Instance{ID: id}}
		r.worker(id).loadAt = 1
		r.idx.store(id, hashes[:(i*7)%workers+1], 0) // depths 1..workers, in no order
	}
	ri := &llm.RouteInfo{RequestID: "a", TokenIDs: toks}
	c, err := r.Pick(llm.WithRoute(context.Background(), ri), all)
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(slices.IndexFunc(all, func(c *loom.Candidate) bool {
		return r.idx.workerBlocks(c.ID) == workers
	}) + 1); c.ID != want || ri.OverlapBlocks != workers {
		t.Fatalf("picked worker %d with %d blocks of overlap, want worker %d, which holds %d", c.ID, ri.OverlapBlocks, want, workers)
	}
	// A second prompt, whose first block only the workers 1 to askSets+1
	// hold: one of them wins, with one block, whatever the first pick
	// counted for the others.
	other := prompt(1, len(toks))
	for id := range uint64(askSets + 1) {
		r.idx.store(id+1, llm.BlockHashes(other, llm.DefaultBlockSize)[:1], 0)
	}
	ri = &llm.RouteInfo{RequestID: "b", TokenIDs: other}
	if c, err = r.Pick(llm.WithRoute(context.Background(), ri), all); err != nil {
		t.Fatal(err)
	}
	if c.ID > askSets+1 || ri.OverlapBlocks != 1 {
		t.Fatalf("the second prompt went to worker %d with %d blocks of overlap, want one of the first %d with 1", c.ID, ri.OverlapBlocks, askSets+1)
	}
}

// TestPickTakesFilteredCandidatesAsGiven: without RouteInfo.Filtered the
// router keeps to the workers whose card names the model; with it, it
// takes the candidates it is given as serving the model, without reading
// their cards.
func TestPickTakesFilteredCandidatesAsGiven(t *testing.T) {
	r := testRouter(Config{})
	all := []*loom.Candidate{
		{Instance: discovery.Instance{ID: 1, Metadata: map[string]string{llm.MetaModel: "a"}}},
		{Instance: discovery.Instance{ID: 2, Metadata: map[string]string{llm.MetaModel: "b"}}},
	}
	for i := range 4 {
		ri := &llm.RouteInfo{RequestID: "b" + strconv.Itoa(i), Model: "b", TokenIDs: prompt(uint32(i), 32)}
		if c, err := r.Pick(llm.WithRoute(context.Background(), ri), all); err != nil || c.ID != 2 || ri.Worker != 2 {
			t.Fatalf("a pick for model b = %v, %v (route worker %d); want worker 2", c, err, ri.Worker)
		}
	}
	ri := &llm.RouteInfo{RequestID: "f", Model: "c", TokenIDs: prompt(9, 32), Filtered: true}
	if c, err := r.Pick(llm.WithRoute(context.Background(), ri), all[:1]); err != nil || c.ID != 1 || ri.Worker != 1 {
		t.Fatalf("a filtered pick for model c among worker 1 = %v, %v (route worker %d); want worker 1", c, err, ri.Worker)
	}
}

// TestAPickAdoptsAWorkerTheRouterHasNotHeardOf: the client can list a
// worker before the router's own view of discovery has it. A pick that
// chooses such a worker keeps its request on account there, so the next
// pick weighs it; a worker that has left gets no state; and a worker
// discovery never confirms is forgotten a minute on, while one it has is
// kept.
func TestAPickAdoptsAWorkerTheRouterHasNotHeardOf(t *testing.T) {
	r := testRouter(Config{})
	r.gone = map[uint64]int64{}
	all := []*loom.Candidate{{Instance: discovery.Instance{ID: 1}}, {Instance: discovery.Instance{ID: 2}}}
	toks := prompt(0, 64)
	var got []uint64
	for _, id := range []string{"a", "b"} {
		c, err := r.Pick(llm.WithRoute(context.Background(), &llm.RouteInfo{RequestID: id, TokenIDs: toks}), all)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, c.ID)
	}
	if got[0] == got[1] {
		t.Fatalf("two picks among two workers new to the router both went to worker %d: the first request was not counted", got[0])
	}
	st := r.Stats()
	if len(st.Workers) != 2 || st.Workers[0].Open != 1 || st.Workers[1].Open != 1 || st.Workers[0].Decisions != 1 {
		t.Fatalf("after a pick on each new worker the router has %+v, want both with 1 request open and 1 decision", st.Workers)
	}
	r.Done("a")
	r.Done("b")

	r.gone[3] = time.Now().UnixNano()
	if c, err := r.Pick(llm.WithRoute(context.Background(), &llm.RouteInfo{RequestID: "c", TokenIDs: toks}), []*loom.Candidate{{Instance: discovery.Instance{ID: 3}}}); err != nil || c.ID != 3 {
		t.Fatalf("a pick among a departed worker = %v, %v", c, err)
	}
	r.Done("c")
	if _, ok := r.workers[3]; ok {
		t.Fatal("a pick made state for a worker that had left")
	}
	// kv_approx predicts nothing in the cache of a worker that has left.
	r.events = false
	if _, err := r.Pick(llm.WithRoute(context.Background(), &llm.RouteInfo{RequestID: "d", TokenIDs: toks}), []*loom.Candidate{{Instance: discovery.Instance{ID: 3}}}); err != nil {
		t.Fatal(err)
	}
	r.Done("d")
	if _, ok := r.idx.slots[3]; ok {
		t.Fatal("kv_approx stored a prediction for a worker that had left")
	}
	r.events = true

	r.worker(4).inDisc = true
	r.tidy(time.Now().Add(2 * time.Minute).UnixNano())
	if _, ok := r.workers[4]; !ok || len(r.workers) != 1 {
		t.Fatalf("a minute on, the router keeps workers %v, want only worker 4, which discovery has", slices.Collect(maps.Keys(r.workers)))
	}
	if _, ok := r.gone[1]; !ok {
		t.Fatal("a worker forgotten for want of discovery is not marked gone: its late events would bring it back")
	}
}

// TestALoadReportOutOfRangeIsIgnored: a load report comes off the
// network. One with a negative count, or one so large that the cost
// overflows below zero, would make its worker the cheapest for every
// request; the router ignores it, keeps weighing the worker's last sound
// report, and says so once.
func TestALoadReportOutOfRangeIsIgnored(t *testing.T) {
	r := testRouter(Config{})
	none := func() int { return 0 }
	sound := llm.LoadMetrics{TotalSlots: 8, ActiveBlocks: 10}
	for _, id := range []uint64{1, 2} {
		if _, err := r.onLoad(id, sound, 1, none); err != nil {
			t.Fatal(err)
		}
	}
	for i, bad := range []llm.LoadMetrics{
		{Waiting: math.MaxInt64/10 + 1}, // times the prompt's 10 blocks: below zero
		{ActiveBlocks: -1 << 62},
		{PrefillTokens: math.MaxInt64},
		{ActiveSlots: -1},
	} {
		_, refused := r.onLoad(2, bad, int64(2+i), none)
		if (refused != nil) != (i == 0) {
			t.Errorf("report %+v: refused %v; want an error the first time only", bad, refused)
		}
		// Worker 1 holds 4 of the prompt's 10 blocks: cheaper than
		// worker 2 as its sound report has it.
		cs := cands(1, 2)
		cs[0].overlap = 4
		for j := range cs {
			w := r.workers[cs[j].c.ID]
			cs[j].w, cs[j].load, cs[j].loadAt = w, w.load, w.loadAt
		}
		if got := r.choose(cs, 10, 16); got != 0 || cs[1].load != sound {
			t.Errorf("after worker 2 reported %+v: chose worker %d (costs %v, %v), weighing %+v; want worker 1, and worker 2's last sound report",
				bad, cs[got].c.ID, cs[0].cost, cs[1].cost, cs[1].load)
		}
	}
}
