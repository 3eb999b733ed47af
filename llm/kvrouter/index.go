package kvrouter

// index is the global view of which worker holds which KV blocks: for
// each block hash, the workers holding it (every worker, for a system
// prompt they all serve), and for each worker the set of its blocks, so
// a worker can be dropped or replaced. Because block hashes chain their
// parents, the leading blocks of a prompt that a worker holds are found
// by walking the prompt's hashes, in time proportional to the prompt and
// the workers holding its first block, never to the size of the caches.
//
// In the mode without events, entries carry an expiry (Unix nanoseconds,
// 0 for none) and are ignored once expired.
//
// An index is not safe for concurrent use; the router holds a lock.
type index struct {
	blocks  map[uint64]holder           // each block's first holder
	more    map[uint64][]holder         // the others, for a block several workers hold
	held    map[uint64]map[uint64]int64 // worker -> hash -> expiry
	entries int

	// Each worker holding blocks has a slot, a small number that lets a
	// routing question keep its per-worker counts in a slice (see
	// overlaps); freed slots are used again.
	slots map[uint64]int32
	ids   []uint64 // slot -> worker
	free  []int32
}

// holder is a worker holding a block. Most blocks have one, kept in the
// blocks map itself: a list of holders, made for every block, would
// double the index's memory.
type holder struct {
	exp  int64
	slot int32
	many bool // a block's first holder: more holds the others
}

// scored is a worker's overlap with a prompt: its leading blocks held.
type scored struct {
	worker  uint64
	slot    int32
	overlap int
}

func newIndex() *index {
	return &index{blocks: make(map[uint64]holder), more: make(map[uint64][]holder), held: make(map[uint64]map[uint64]int64), slots: make(map[uint64]int32)}
}

// slot returns worker's slot, giving it one if it has none.
func (x *index) slot(worker uint64) int32 {
	if s, ok := x.slots[worker]; ok {
		return s
	}
	var s int32
	if n := len(x.free); n > 0 {
		s, x.free = x.free[n-1], x.free[:n-1]
		x.ids[s] = worker
	} else {
		s = int32(len(x.ids))
		x.ids = append(x.ids, worker)
	}
	x.slots[worker] = s
	return s
}

// forget deletes worker's (now empty) set and frees its slot.
func (x *index) forget(worker uint64) {
	delete(x.held, worker)
	if s, ok := x.slots[worker]; ok {
		delete(x.slots, worker)
		x.free = append(x.free, s)
	}
}

// numSlots is the length a run passed to overlaps needs.
func (x *index) numSlots() int { return len(x.ids) }

// store records that worker holds hashes, until exp (0: until removed).
func (x *index) store(worker uint64, hashes []uint64, exp int64) {
	set := x.held[worker]
	if set == nil {
		set = make(map[uint64]int64)
		x.held[worker] = set
	}
	slot := x.slot(worker)
	for _, h := range hashes {
		if _, ok := set[h]; ok {
			set[h] = exp
			x.renew(slot, h, exp)
			continue
		}
		set[h] = exp
		if first, ok := x.blocks[h]; !ok {
			x.blocks[h] = holder{exp: exp, slot: slot}
		} else {
			if !first.many {
				first.many = true
				x.blocks[h] = first
			}
			x.more[h] = append(x.more[h], holder{exp: exp, slot: slot})
		}
		x.entries++
	}
}

// remove records that worker no longer holds hashes.
func (x *index) remove(worker uint64, hashes []uint64) {
	set := x.held[worker]
	if set == nil {
		return
	}
	slot := x.slots[worker]
	for _, h := range hashes {
		if _, ok := set[h]; !ok {
			continue
		}
		delete(set, h)
		x.unlink(slot, h)
	}
}

// holders returns block h's first holder, its others, and how many hold
// it in all.
func (x *index) holders(h uint64) (first holder, rest []holder, n int) {
	first, ok := x.blocks[h]
	if !ok {
		return first, nil, 0
	}
	if first.many {
		rest = x.more[h]
	}
	return first, rest, 1 + len(rest)
}

// renew sets the expiry of the worker in slot as block h's holder.
func (x *index) renew(slot int32, h uint64, exp int64) {
	first, rest, _ := x.holders(h)
	if first.slot == slot {
		first.exp = exp
		x.blocks[h] = first
		return
	}
	for i := range rest {
		if rest[i].slot == slot {
			rest[i].exp = exp
		}
	}
}

// unlink removes the worker in slot from block h's holders.
func (x *index) unlink(slot int32, h uint64) {
	x.entries--
	first, rest, n := x.holders(h)
	switch {
	case n == 1:
		delete(x.blocks, h)
		return
	case first.slot == slot:
		first = rest[len(rest)-1]
		rest = rest[:len(rest)-1]
	default:
		for i := range rest {
			if rest[i].slot == slot {
				rest[i] = rest[len(rest)-1]
				rest = rest[:len(rest)-1]
				break
			}
		}
	}
	first.many = len(rest) > 0
	x.blocks[h] = first
	if first.many {
		x.more[h] = rest
	} else {
		delete(x.more, h)
	}
}

// drop forgets everything worker holds.
func (x *index) drop(worker uint64) {
	slot, ok := x.slots[worker]
	if !ok {
		return
	}
	for h := range x.held[worker] {
		x.unlink(slot, h)
	}
	x.forget(worker)
}

// replace makes hashes the whole of worker's blocks.
func (x *index) replace(worker uint64, hashes []uint64) {
	x.drop(worker)
	x.store(worker, hashes, 0)
}

// workerBlocks returns how many blocks worker holds.
func (x *index) workerBlocks(worker uint64) int { return len(x.held[worker]) }

// overlaps appends to dst, for every worker holding the prompt's first
// block, how many of its leading blocks (hashes) the worker holds, as of
// now (Unix nanoseconds, for expiring entries).
//
// run is the caller's scratch, numSlots long and all zero. overlaps
// leaves each scored worker's overlap at its slot (run[s.slot] ==
// s.overlap) and zero elsewhere; the caller zeroes it again.
//
// Block by block, the workers that held every block so far are counted
// on: through the block's holders (one step a holder, never one a holder
// for each worker) while those workers are many, through their own sets
// once few remain among many holders. The cost is at most
// proportional to the prompt's blocks times the workers holding its
// first block, whatever the size of the caches.
func (x *index) overlaps(dst []scored, run []int32, hashes []uint64, now int64) []scored {
	if len(hashes) == 0 {
		return dst
	}
	start := len(dst)
	first, rest, holding := x.holders(hashes[0])
	if holding == 0 {
		return dst
	}
	for k := -1; k < len(rest); k++ {
		h := first
		if k >= 0 {
			h = rest[k]
		}
		if unexpired(h.exp, now) {
			run[h.slot] = 1
			dst = append(dst, scored{worker: x.ids[h.slot], slot: h.slot, overlap: 1})
		}
	}
	alive := dst[start:]
	n := len(alive)
	for i := 1; i < len(hashes) && n > 0; i++ {
		first, rest, holding := x.holders(hashes[i])
		if n*askSets < holding {
			for j := range alive[:n] {
				w := &alive[j]
				if exp, ok := x.held[w.worker][hashes[i]]; ok && unexpired(exp, now) {
					run[w.slot]++
				}
			}
		} else if holding > 0 {
			for k := -1; k < len(rest); k++ {
				h := first
				if k >= 0 {
					h = rest[k]
				}
				if run[h.slot] == int32(i) && unexpired(h.exp, now) {
					run[h.slot]++
				}
			}
		}
		for j := 0; j < n; {
			if run[alive[j].slot] > int32(i) {
				alive[j].overlap = i + 1
				j++
				continue
			}
			alive[j], alive[n-1] = alive[n-1], alive[j]
			n--
		}
	}
	return dst
}

// unexpired reports whether an entry expiring at exp (0: never) holds at
// now.
func unexpired(exp, now int64) bool { return exp == 0 || exp > now }

// askSets: a block's holders are gone through while there are at most
// this many of them for each worker still counted on; past that, each of
// those workers' sets is asked (a map lookup costs several comparisons).
const askSets = 8

// expire removes the entries expired by now and returns how many.
func (x *index) expire(now int64) int {
	n := 0
	for w, set := range x.held {
		for h, exp := range set {
			if !unexpired(exp, now) {
				delete(set, h)
				x.unlink(x.slots[w], h)
				n++
			}
		}
		if len(set) == 0 {
			x.forget(w)
		}
	}
	return n
}
