package kvrouter

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/loomrt/loom/llm"
)

// brute answers the index's question by scanning every worker's set.
func brute(sets map[uint64]map[uint64]bool, hashes []uint64) map[uint64]int {
	out := map[uint64]int{}
	for w, set := range sets {
		n := 0
		for n < len(hashes) && set[hashes[n]] {
			n++
		}
		if n > 0 {
			out[w] = n
		}
	}
	return out
}

// ask puts the routing question to x and returns its answer by worker,
// checking that the scratch holds each answer at its worker's slot.
func ask(x *index, hashes []uint64, now int64) map[uint64]int {
	run := make([]int32, x.numSlots())
	sc := x.overlaps(nil, run, hashes, now)
	for _, s := range sc {
		if x.ids[s.slot] != s.worker || int(run[s.slot]) != s.overlap {
			panic(fmt.Sprintf("worker %x: slot %d holds %x, count %d, scored %d", s.worker, s.slot, x.ids[s.slot], run[s.slot], s.overlap))
		}
		run[s.slot] = 0
	}
	if slices.ContainsFunc(run, func(v int32) bool { return v != 0 }) {
		panic(fmt.Sprintf("counts left in the scratch: %v", run))
	}
	return asMap(sc)
}

func asMap(sc []scored) map[uint64]int {
	out := map[uint64]int{}
	for _, s := range sc {
		if _, dup := out[s.worker]; dup {
			panic(fmt.Sprintf("worker %x scored twice", s.worker))
		}
		out[s.worker] = s.overlap
	}
	return out
}

// TestIndexMatchesBruteForce applies random sequences of stored, removed,
// cleared and replaced block sets for several workers, with prompts from
// a few shared families so that prefixes overlap, and compares every
// answer with a scan of each worker's set.
func TestIndexMatchesBruteForce(t *testing.T) {
	for seed := range uint64(20) {
		r := rand.New(rand.NewPCG(seed, 99))
		const bs = 4
		families := make([][]uint32, 6)
		for i := range families {
			families[i] = make([]uint32, 40*bs)
			for j := range families[i] {
				families[i][j] = uint32(r.IntN(50)) // a small alphabet: shared prefixes
			}
			if i > 0 && r.IntN(2) == 0 { // some families share a prefix
				copy(families[i], families[i-1][:bs*(1+r.IntN(20))])
			}
		}
		chain := func() []uint64 {
			f := families[r.IntN(len(families))]
			return llm.BlockHashes(f[:bs*(1+r.IntN(40))], bs)
		}
		x := newIndex()
		sets := map[uint64]map[uint64]bool{}
		workers := []uint64{11, 22, 33, 44, 55}
		if seed%2 == 1 {
			// Many workers: a block's holders outnumber, by more than
			// askSets to one, the workers still counted on.
			for w := range uint64(40) {
				workers = append(workers, 100+w)
			}
		}
		for step := range 2000 {
			w := workers[r.IntN(len(workers))]
			if sets[w] == nil {
				sets[w] = map[uint64]bool{}
			}
			switch op := r.IntN(20); {
			case op < 10: // stored: a chain, possibly a suffix of it
				c := chain()
				from := r.IntN(len(c))
				x.store(w, c[from:], 0)
				for _, h := range c[from:] {
					sets[w][h] = true
				}
			case op < 17: // removed: some of its blocks, in any order
				var held []uint64
				for h := range sets[w] {
					held = append(held, h)
				}
				slices.Sort(held)
				r.Shuffle(len(held), func(i, j int) { held[i], held[j] = held[j], held[i] })
				rm := held[:r.IntN(len(held)+1)]
				rm = append(rm, 12345) // unknown to the worker: ignored
				x.remove(w, rm)
				for _, h := range rm {
					delete(sets[w], h)
				}
			case op < 18:
				x.drop(w)
				delete(sets, w)
			default: // a resync replaces the whole set
				c := chain()
				x.replace(w, c)
				sets[w] = map[uint64]bool{}
				for _, h := range c {
					sets[w][h] = true
				}
			}
			for range 3 {
				q := chain()
				got := ask(x, q, 0)
				want := brute(sets, q)
				if len(got) != len(want) {
					t.Fatalf("seed %d step %d: index scored %v, brute force %v", seed, step, got, want)
				}
				for k, v := range want {
					if got[k] != v {
						t.Fatalf("seed %d step %d: worker %d overlap %d, brute force %d", seed, step, k, got[k], v)
					}
				}
			}
			entries := 0
			for _, set := range sets {
				entries += len(set)
			}
			if x.entries != entries {
				t.Fatalf("seed %d step %d: index counts %d entries, the sets hold %d", seed, step, x.entries, entries)
			}
		}
	}
}

func TestIndexExpiresPredictions(t *testing.T) {
	x := newIndex()
	h := llm.BlockHashes([]uint32{1, 2, 3, 4, 5, 6, 7, 8}, 4)
	x.store(1, h, 100)
	x.store(2, h[:1], 0)
	if got := ask(x, h, 50); got[1] != 2 || got[2] != 1 {
		t.Fatalf("before expiry: %v, want worker 1: 2 blocks, worker 2: 1", got)
	}
	if got := ask(x, h, 100); got[1] != 0 || got[2] != 1 {
		t.Fatalf("at expiry: %v, want worker 1 gone", got)
	}
	if n := x.expire(100); n != 2 || x.entries != 1 {
		t.Fatalf("expire removed %d entries leaving %d, want 2 removed and 1 left", n, x.entries)
	}
}

// TestIndexRenewsPredictions: storing blocks a worker already holds
// moves their expiry, whether the worker was the block's first holder or
// a later one.
func TestIndexRenewsPredictions(t *testing.T) {
	x := newIndex()
	h := llm.BlockHashes([]uint32{1, 2, 3, 4, 5, 6, 7, 8}, 4)
	for w := range uint64(3) {
		x.store(w+1, h, 100)
	}
	for w := range uint64(3) {
		x.store(w+1, h, 300)
	}
	if got := ask(x, h, 200); len(got) != 3 || got[1] != 2 || got[2] != 2 || got[3] != 2 {
		t.Fatalf("after renewing to 300, at 200: %v, want workers 1, 2 and 3 with 2 blocks each", got)
	}
	if n := x.expire(200); n != 0 {
		t.Fatalf("expire at 200 removed %d renewed entries", n)
	}
	if got := ask(x, h, 300); len(got) != 0 {
		t.Fatalf("at 300: %v, want every prediction expired", got)
	}
}

// BenchmarkIndexOverlaps measures one routing question (the overlaps of
// a 64-block prompt over 8 workers) against caches of growing size: the
// cost does not grow with the cache.
func BenchmarkIndexOverlaps(b *testing.B) {
	for _, total := range []int{1 << 10, 1 << 14, 1 << 18, 1 << 20} {
		b.Run(fmt.Sprintf("blocks=%d", total), func(b *testing.B) {
			r := rand.New(rand.NewPCG(1, 2))
			x := newIndex()
			const workers = 8
			// Fill with random chains of 64 blocks.
			toks := make([]uint32, 64*16)
			var prompts [][]uint64
			for x.entries < total {
				for i := range toks {
					toks[i] = r.Uint32()
				}
				c := llm.BlockHashes(toks, 16)
				x.store(uint64(1+r.IntN(workers)), c, 0)
				if len(prompts) < 100 {
					prompts = append(prompts, c)
				}
			}
			var dst []scored
			run := make([]int32, x.numSlots())
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				dst = x.overlaps(dst[:0], run, prompts[i%len(prompts)], 0)
				for _, s := range dst {
					run[s.slot] = 0
				}
			}
		})
	}
}

// TestConfigDefaultsAreTheDocumented holds the defaults docs/llm.md
// gives the router's bookkeeping.
func TestConfigDefaultsAreTheDocumented(t *testing.T) {
	c, err := Config{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.RequestTTL != 10*time.Minute || c.ApproxTTL != 2*time.Minute || c.OverlapWeight != 1 || c.Temperature != 0 {
		t.Errorf("defaults %+v differ from docs/llm.md's: RequestTTL 10m, ApproxTTL 2m, overlap weight 1, temperature 0", c)
	}
}

// BenchmarkIndexMemory reports the heap an index holds per entry (one
// block one worker holds), B/entry, for 64 workers of 20,000 blocks each:
// every worker with blocks of its own, or all holding the same blocks.
func BenchmarkIndexMemory(b *testing.B) {
	for _, shared := range []bool{false, true} {
		b.Run(fmt.Sprintf("shared=%v", shared), func(b *testing.B) {
			const workers, blocks = 64, 20000
			chains := make([][]uint64, workers)
			for w := range chains {
				toks := prompt(uint32(w+1), 16*blocks)
				if shared {
					toks = prompt(0, 16*blocks)
				}
				chains[w] = llm.BlockHashes(toks, 16)
			}
			var perEntry float64
			for b.Loop() {
				runtime.GC()
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				x := newIndex()
				for w, c := range chains {
					x.store(uint64(w+1), c, 0)
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
				perEntry = float64(after.HeapAlloc-before.HeapAlloc) / float64(x.entries)
				runtime.KeepAlive(x)
			}
			b.ReportMetric(perEntry, "B/entry")
		})
	}
}
