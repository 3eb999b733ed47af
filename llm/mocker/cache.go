package mocker

import (
	"github.com/loomrt/loom/llm"
)

// kvBlock is one block of the cache, identified by its chained hash.
// Blocks with no reference sit on the LRU list, oldest first, and are
// evicted from its head.
type kvBlock struct {
	hash, parent uint64
	refs         int
	// announced: a Stored event went out for it (its prefill finished).
	// A block dropped before that leaves without a Removed event.
	announced  bool
	prev, next *kvBlock // LRU list links, while refs == 0
}

// kvCache is a worker's KV cache: a fixed number of block slots, blocks
// shared by every request whose prefix hashes to them, reference-counted
// while in use, and evicted least recently used first once free. It
// records the kv_events its changes make, numbered from 1 without gaps.
// It is not safe for concurrent use; the engine holds its lock.
type kvCache struct {
	capacity int
	blocks   map[uint64]*kvBlock
	// private counts slots held by requests for the partial block they are
	// filling: used, but not shareable, so not in the index.
	private    int
	head, tail *kvBlock // LRU list
	free       int      // blocks on the LRU list
	active     int      // blocks with refs > 0

	lastEvent uint64
	pending   []llm.KvEvent // not yet handed to the publisher
	// snapshotAt is the last event id a snapshot covered: a pending event
	// with that id must not change, or a router starting from the
	// snapshot would skip what was added to it.
	snapshotAt uint64
}

// maxMergedRemoved bounds the blocks one Removed event carries when
// evictions are merged (see event): about 4.6 KB of MessagePack.
const maxMergedRemoved = 512

func newKvCache(capacity int) *kvCache {
	return &kvCache{capacity: capacity, blocks: make(map[uint64]*kvBlock)}
}

// used counts the slots in use or holding a cached block.
func (c *kvCache) used() int { return len(c.blocks) + c.private }

// activeBlocks counts the slots requests are using.
func (c *kvCache) activeBlocks() int { return c.active + c.private }

// match returns how many leading hashes are in the cache.
func (c *kvCache) match(hashes []uint64) int {
	for i, h := range hashes {
		if b, ok := c.blocks[h]; !ok || (!b.announced && b.refs == 0) {
			return i
		}
	}
	return len(hashes)
}

// fits reports whether a request holding hashes (the first cached of them
// already in the cache) plus one partial block can be admitted: its new
// blocks must fit in the free slots plus the evictable ones it does not
// itself reuse.
func (c *kvCache) fits(hashes []uint64) bool {
	need := 1 // the partial block
	evictable := c.free
	for _, h := range hashes {
		b, ok := c.blocks[h]
		switch {
		case !ok:
			need++
		case b.refs == 0:
			evictable--
		}
	}
	return c.capacity-c.used()+evictable >= need
}

// acquire takes a reference on the block hash (chained to parent),
// inserting it if it is not cached, evicting to make room. It reports
// whether the block was inserted (so still has to be computed).
func (c *kvCache) acquire(hash, parent uint64) bool {
	if b, ok := c.blocks[hash]; ok {
		if b.refs == 0 {
			c.unlink(b)
			c.active++
		}
		b.refs++
		return false
	}
	c.makeRoom(1)
	c.blocks[hash] = &kvBlock{hash: hash, parent: parent, refs: 1}
	c.active++
	return true
}

// release drops a reference on hash. A block left unreferenced stays
// cached (on the LRU list) if it was announced, and goes at once if not.
func (c *kvCache) release(hash uint64) {
	b, ok := c.blocks[hash]
	if !ok || b.refs == 0 {
		return
	}
	b.refs--
	if b.refs > 0 {
		return
	}
	c.active--
	if !b.announced {
		delete(c.blocks, hash)
		return
	}
	c.pushBack(b)
}

// takePrivate takes a slot for a partial block, evicting to make room
// (a mock does not preempt: with nothing to evict the cache runs over
// capacity until requests finish).
func (c *kvCache) takePrivate() {
	c.makeRoom(1)
	c.private++
}

func (c *kvCache) dropPrivate() {
	if c.private > 0 {
		c.private--
	}
	c.trim()
}

// announce records a Stored event for the blocks of hashes (a chain whose
// first block follows parent, 0 for none) not announced yet.
func (c *kvCache) announce(parent uint64, hashes []uint64) {
	var run []uint64
	runParent := parent
	flush := func() {
		if len(run) == 0 {
			return
		}
		st := &llm.KvStored{BlockHashes: run}
		if runParent != 0 {
			p := runParent
			st.ParentHash = &p
		}
		c.event(llm.KvEvent{Stored: st})
		run = nil
	}
	prev := parent
	for _, h := range hashes {
		b, ok := c.blocks[h]
		if ok && !b.announced {
			if len(run) == 0 {
				runParent = prev
			}
			b.announced = true
			run = append(run, h)
		} else {
			flush()
		}
		prev = h
	}
	flush()
}

// clear drops every unreferenced block and records a Cleared event.
// Blocks in use stay for their requests, no longer announced: nobody can
// reuse them, and they leave without an event when released.
func (c *kvCache) clear() {
	for c.head != nil {
		b := c.head
		c.unlink(b)
		delete(c.blocks, b.hash)
	}
	for _, b := range c.blocks {
		b.announced = false
	}
	c.event(llm.KvEvent{Cleared: true})
}

func (c *kvCache) makeRoom(n int) {
	var removed []uint64
	for c.used()+n > c.capacity && c.head != nil {
		b := c.head
		c.unlink(b)
		delete(c.blocks, b.hash)
		removed = append(removed, b.hash)
	}
	if len(removed) > 0 {
		c.event(llm.KvEvent{Removed: &llm.KvRemoved{BlockHashes: removed}})
	}
}

// trim evicts while the cache is over capacity (after running over).
func (c *kvCache) trim() { c.makeRoom(0) }

// event records ev under the next event id, for the publisher to take.
//
// Evictions come one block at a time (each block a request takes may
// evict one), so a Removed event that follows another still pending
// joins it instead of taking an id of its own: the evictions made before
// the publisher next takes its events go out as one message, not one per
// block. In the 64-worker scale run of docs/llm.md that is 2.2-2.5
// kv_events per request instead of about 8. It does not join an event a
// snapshot already covered.
func (c *kvCache) event(ev llm.KvEvent) {
	if ev.Removed != nil && len(c.pending) > 0 && c.snapshotAt < c.lastEvent {
		last := c.pending[len(c.pending)-1].Removed
		if last != nil && len(last.BlockHashes)+len(ev.Removed.BlockHashes) <= maxMergedRemoved {
			last.BlockHashes = append(last.BlockHashes, ev.Removed.BlockHashes...)
			return
		}
	}
	c.lastEvent++
	ev.EventID = c.lastEvent
	c.pending = append(c.pending, ev)
}

// takeEvents returns the events recorded since the last call.
func (c *kvCache) takeEvents() []llm.KvEvent {
	p := c.pending
	c.pending = nil
	return p
}

// snapshot returns the announced blocks, as of the last event recorded.
func (c *kvCache) snapshot() llm.KvSnapshot {
	c.snapshotAt = c.lastEvent
	s := llm.KvSnapshot{EventID: c.lastEvent, Blocks: make([]llm.KvBlock, 0, len(c.blocks))}
	for _, b := range c.blocks {
		if b.announced {
			s.Blocks = append(s.Blocks, llm.KvBlock{Hash: b.hash, Parent: b.parent})
		}
	}
	return s
}

func (c *kvCache) pushBack(b *kvBlock) {
	b.prev, b.next = c.tail, nil
	if c.tail != nil {
		c.tail.next = b
	} else {
		c.head = b
	}
	c.tail = b
	c.free++
}

func (c *kvCache) unlink(b *kvBlock) {
	if b.prev != nil {
		b.prev.next = b.next
	} else {
		c.head = b.next
	}
	if b.next != nil {
		b.next.prev = b.prev
	} else {
		c.tail = b.prev
	}
	b.prev, b.next = nil, nil
	c.free--
}
