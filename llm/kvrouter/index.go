package kvrouter

// index is the global view of which worker holds which KV blocks: for
// each block hash, the workers holding it (a short list: a block is held
// by few workers), and for each worker the set of its blocks, so a worker
// can be dropped or replaced. Because block hashes chain their parents,
// the leading blocks of a prompt that a worker holds are found by walking
// the prompt's hashes, in time proportional to the prompt and the number
// of workers, never to the size of the caches.
//
// In the mode without events, entries carry an expiry (Unix nanoseconds,
// 0 for none) and are ignored once expired.
//
// An index is not safe for concurrent use; the router holds a lock.
type index struct {
	blocks  map[uint64][]holder
	held    map[uint64]map[uint64]int64 // worker -> hash -> expiry
	entries int
}

type holder struct {
	worker uint64
	exp    int64
}

// scored is a worker's overlap with a prompt: its leading blocks held.
type scored struct {
	worker  uint64
	overlap int
}

func newIndex() *index {
	return &index{blocks: make(map[uint64][]holder), held: make(map[uint64]map[uint64]int64)}
}

// store records that worker holds hashes, until exp (0: until removed).
func (x *index) store(worker uint64, hashes []uint64, exp int64) {
	set := x.held[worker]
	if set == nil {
		set = make(map[uint64]int64)
		x.held[worker] = set
	}
	for _, h := range hashes {
		if _, ok := set[h]; ok {
			set[h] = exp
			hs := x.blocks[h]
			for i := range hs {
				if hs[i].worker == worker {
					hs[i].exp = exp
				}
			}
			continue
		}
		set[h] = exp
		x.blocks[h] = append(x.blocks[h], holder{worker, exp})
		x.entries++
	}
}

// remove records that worker no longer holds hashes.
func (x *index) remove(worker uint64, hashes []uint64) {
	set := x.held[worker]
	if set == nil {
		return
	}
	for _, h := range hashes {
		if _, ok := set[h]; !ok {
			continue
		}
		delete(set, h)
		x.unlink(worker, h)
	}
}

func (x *index) unlink(worker, h uint64) {
	hs := x.blocks[h]
	for i := range hs {
		if hs[i].worker == worker {
			hs[i] = hs[len(hs)-1]
			hs = hs[:len(hs)-1]
			break
		}
	}
	if len(hs) == 0 {
		delete(x.blocks, h)
	} else {
		x.blocks[h] = hs
	}
	x.entries--
}

// drop forgets everything worker holds.
func (x *index) drop(worker uint64) {
	for h := range x.held[worker] {
		x.unlink(worker, h)
	}
	delete(x.held, worker)
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
func (x *index) overlaps(dst []scored, hashes []uint64, now int64) []scored {
	if len(hashes) == 0 {
		return dst
	}
	start := len(dst)
	for _, h := range x.blocks[hashes[0]] {
		if h.exp == 0 || h.exp > now {
			dst = append(dst, scored{worker: h.worker})
		}
	}
	alive := dst[start:]
	n := len(alive)
	for i := 1; i < len(hashes) && n > 0; i++ {
		hs := x.blocks[hashes[i]]
		for j := 0; j < n; {
			if holds(hs, alive[j].worker, now) {
				j++
				continue
			}
			alive[j].overlap = i
			alive[j], alive[n-1] = alive[n-1], alive[j]
			n--
		}
	}
	for j := range n {
		alive[j].overlap = len(hashes)
	}
	return dst
}

func holds(hs []holder, worker uint64, now int64) bool {
	for _, h := range hs {
		if h.worker == worker {
			return h.exp == 0 || h.exp > now
		}
	}
	return false
}

// expire removes the entries expired by now and returns how many.
func (x *index) expire(now int64) int {
	n := 0
	for w, set := range x.held {
		for h, exp := range set {
			if exp != 0 && exp <= now {
				delete(set, h)
				x.unlink(w, h)
				n++
			}
		}
		if len(set) == 0 {
			delete(x.held, w)
		}
	}
	return n
}
