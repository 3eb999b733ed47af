package mocker

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/loomrt/loom/llm"
)

// replay applies events to a block set, checking their ids follow on.
func replay(t *testing.T, set map[uint64]bool, last *uint64, evs []llm.KvEvent) {
	t.Helper()
	for _, ev := range evs {
		if ev.EventID != *last+1 {
			t.Fatalf("event id %d follows %d", ev.EventID, *last)
		}
		*last = ev.EventID
		switch {
		case ev.Stored != nil:
			for _, h := range ev.Stored.BlockHashes {
				set[h] = true
			}
		case ev.Removed != nil:
			for _, h := range ev.Removed.BlockHashes {
				if !set[h] {
					t.Fatalf("event %d removes block %x that was never stored", ev.EventID, h)
				}
				delete(set, h)
			}
		case ev.Cleared:
			clear(set)
		}
	}
}

// hold takes the chain of blocks hs for a request and announces them, as
// a finished prefill does; free releases them, as the request's end does.
func hold(c *kvCache, hs ...uint64) {
	acquireChain(c, hs)
	c.announce(0, hs)
}

// acquireChain takes a reference on each block of the chain hs.
func acquireChain(c *kvCache, hs []uint64) {
	var p uint64
	for _, h := range hs {
		c.acquire(h, p)
		p = h
	}
}

func free(c *kvCache, hs ...uint64) {
	for _, h := range slices.Backward(hs) {
		c.release(h)
	}
}

func TestCacheEvictsLeastRecentlyUsedUnreferencedBlocks(t *testing.T) {
	c := newKvCache(4)
	hold(c, 1, 2)
	hold(c, 1, 3) // shares block 1
	if c.used() != 3 || c.activeBlocks() != 3 {
		t.Fatalf("after two requests sharing a block: used %d active %d, want 3 and 3", c.used(), c.activeBlocks())
	}
	free(c, 1, 2)
	if c.free != 1 {
		t.Fatalf("block 1 is still held by the second request, but %d blocks are free", c.free)
	}
	free(c, 1, 3)
	// Free order, oldest first: 2, then 3, then 1 (a tail before its prefix).
	hold(c, 10, 11)
	c.takePrivate() // 5 slots wanted: two evictions
	set, last := map[uint64]bool{}, uint64(0)
	replay(t, set, &last, c.takeEvents())
	if set[2] || set[3] || !set[1] || !set[10] || !set[11] {
		t.Fatalf("after evictions the announced set is %v; want blocks 2 and 3 evicted first, 1 kept", set)
	}
	if c.used() != 4 {
		t.Fatalf("used %d slots, capacity 4", c.used())
	}
}

func TestCacheUnannouncedBlocksLeaveSilently(t *testing.T) {
	c := newKvCache(8)
	c.acquire(5, 0)
	c.release(5) // a request cancelled during its prefill
	if len(c.blocks) != 0 || len(c.takeEvents()) != 0 {
		t.Fatalf("a block never announced stayed (%d blocks) or made events", len(c.blocks))
	}
}

// TestCacheEventsReplayToSnapshot drives the cache with random requests
// and checks that replaying its events always gives its snapshot.
func TestCacheEventsReplayToSnapshot(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 9))
	c := newKvCache(64)
	set, last := map[uint64]bool{}, uint64(0)
	var held [][]uint64
	for step := range 3000 {
		switch op := r.IntN(10); {
		case op < 5: // a request with a prefix from a small family
			n := 1 + r.IntN(12)
			fam := uint64(r.IntN(5))
			hs := make([]uint64, n)
			for i := range hs {
				hs[i] = fam<<32 | uint64(i+1)
				if i > 2 && r.IntN(3) == 0 {
					hs[i] |= uint64(r.IntN(4)) << 16
				}
			}
			if !c.fits(hs) {
				continue
			}
			acquireChain(c, hs)
			c.takePrivate()
			if r.IntN(4) > 0 {
				c.announce(0, hs)
			}
			held = append(held, hs)
		case op < 9 && len(held) > 0:
			i := r.IntN(len(held))
			hs := held[i]
			held = slices.Delete(held, i, i+1)
			for j := len(hs) - 1; j >= 0; j-- {
				c.release(hs[j])
			}
			c.dropPrivate()
		case op == 9 && step%50 == 0:
			c.clear()
		}
		replay(t, set, &last, c.takeEvents())
		snap := c.snapshot()
		if snap.EventID != last {
			t.Fatalf("step %d: snapshot at event %d, events up to %d", step, snap.EventID, last)
		}
		if len(snap.Blocks) != len(set) {
			t.Fatalf("step %d: snapshot has %d blocks, the events say %d", step, len(snap.Blocks), len(set))
		}
		for _, b := range snap.Blocks {
			if !set[b.Hash] {
				t.Fatalf("step %d: snapshot block %x not in the replayed set", step, b.Hash)
			}
		}
		if c.used() > c.capacity {
			t.Fatalf("step %d: %d slots used of %d", step, c.used(), c.capacity)
		}
	}
}

func TestCacheMergesPendingEvictions(t *testing.T) {
	c := newKvCache(4)
	hold(c, 1, 2, 3, 4)
	free(c, 1, 2, 3, 4)
	c.takeEvents()
	hold(c, 5, 6, 7) // three evictions, one block each
	free(c, 5, 6, 7)
	evs := c.takeEvents()
	if len(evs) != 2 || evs[0].Removed == nil || len(evs[0].Removed.BlockHashes) != 3 || evs[1].Stored == nil {
		t.Fatalf("three evictions then a store made %+v; want one Removed of 3 blocks, then the Stored", evs)
	}
	if evs[0].EventID != 2 || evs[1].EventID != 3 {
		t.Fatalf("event ids %d, %d; want 2, 3", evs[0].EventID, evs[1].EventID)
	}

	// A snapshot between two evictions: the second must not join the
	// first, whose id the snapshot covers.
	c.acquire(8, 0)
	snap := c.snapshot()
	c.acquire(9, 8)
	evs = c.takeEvents()
	if len(evs) != 2 || evs[0].EventID != snap.EventID || evs[1].EventID != snap.EventID+1 {
		t.Fatalf("evictions around a snapshot at event %d made %+v; want two Removed events, the second after it", snap.EventID, evs)
	}
}

// TestCacheEventsFollowSnapshots replays events the way a router does: it
// starts from a snapshot taken at any moment and applies the events with
// later ids. Whatever the interleaving of evictions, publishing and
// snapshots, the result is the cache's block set.
func TestCacheEventsFollowSnapshots(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 5))
	c := newKvCache(16)
	view, applied := map[uint64]bool{}, uint64(0)
	var held [][]uint64
	for step := range 5000 {
		switch op := r.IntN(12); {
		case op < 6:
			hs := make([]uint64, 1+r.IntN(6))
			for i := range hs {
				hs[i] = uint64(r.IntN(64) + 1)
			}
			hs = slices.Compact(hs)
			if !c.fits(hs) {
				continue
			}
			acquireChain(c, hs)
			c.takePrivate()
			held = append(held, hs)
		case op < 8 && len(held) > 0: // a prefill finishes
			c.announce(0, held[r.IntN(len(held))])
		case op < 10 && len(held) > 0:
			i := r.IntN(len(held))
			for _, h := range slices.Backward(held[i]) {
				c.release(h)
			}
			c.dropPrivate()
			held = slices.Delete(held, i, i+1)
		case op == 10:
			snap := c.snapshot()
			clear(view)
			for _, b := range snap.Blocks {
				view[b.Hash] = true
			}
			applied = snap.EventID
		}
		if r.IntN(3) > 0 {
			continue // the publisher has not taken the events yet
		}
		for _, ev := range c.takeEvents() {
			if ev.EventID <= applied {
				continue // the snapshot covered it
			}
			applied = ev.EventID
			switch {
			case ev.Stored != nil:
				for _, h := range ev.Stored.BlockHashes {
					view[h] = true
				}
			case ev.Removed != nil:
				for _, h := range ev.Removed.BlockHashes {
					delete(view, h)
				}
			}
		}
		want := 0
		for h, b := range c.blocks {
			if b.announced {
				want++
				if !view[h] {
					t.Fatalf("step %d: block %x is cached and announced, missing from the view", step, h)
				}
			}
		}
		if len(view) != want {
			t.Fatalf("step %d: the view holds %d blocks, the cache %d announced", step, len(view), want)
		}
	}
}
