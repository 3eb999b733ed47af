package events

import "sync"

// The tracker follows each publisher's sequence as a subscription hears
// it, to tell in-order events from gaps, late arrivals and duplicates.
//
// Per publisher it keeps the next expected sequence and a bitmap of the
// last trackWindow sequences below it. The first event heard from a
// publisher sets the baseline, whatever its sequence: events published
// before the subscription existed are not losses, and a publisher that
// restarts has a new id, so its fresh sequence from 0 is not a gap either.

// trackWindow is how far back duplicates and late arrivals are recognised;
// an event older than that is taken as a duplicate.
const trackWindow = 4096

// maxPublishers bounds the publishers tracked; past it the one heard from
// least recently is forgotten (it would be tracked afresh if heard again).
const maxPublishers = 16384

type verdict uint8

const (
	inOrder   verdict = iota // the next in sequence, or the first heard
	gap                      // later than expected: events were skipped
	late                     // skipped earlier, arrived now
	duplicate                // seen already (or older than the window)
)

type pubState struct {
	inst  uint64 // the publishing runtime's instance id; 0 if unsaid
	next  uint64 // highest sequence seen + 1
	base  uint64 // first sequence seen
	seen  [trackWindow / 64]uint64
	heard uint64 // tracker tick of the last event
}

func (p *pubState) bit(seq uint64) (word int, mask uint64) {
	i := seq % trackWindow
	return int(i / 64), 1 << (i % 64)
}

type tracker struct {
	mu   sync.Mutex
	pubs map[uint64]*pubState
	tick uint64
	// The publisher heard last, to skip the map for a run of its events.
	lastID  uint64
	lastPub *pubState
}

func newTracker() *tracker { return &tracker{pubs: make(map[uint64]*pubState)} }

// observe records seq from publisher pub of runtime instance inst. For a
// gap it also returns the first skipped sequence and how many were
// skipped.
func (t *tracker) observe(pub, inst, seq uint64) (v verdict, from, skipped uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.tick++
	p := t.lastPub
	if t.lastID != pub || p == nil {
		p = t.pubs[pub]
		t.lastID, t.lastPub = pub, p
	}
	if p == nil {
		if len(t.pubs) >= maxPublishers {
			t.evictOldest()
		}
		p = &pubState{inst: inst, next: seq + 1, base: seq}
		w, m := p.bit(seq)
		p.seen[w] |= m
		p.heard = t.tick
		t.pubs[pub] = p
		t.lastPub = p
		return inOrder, 0, 0
	}
	p.heard = t.tick
	switch {
	case seq == p.next:
		p.advance(seq + 1)
		return inOrder, 0, 0
	case seq > p.next:
		from, skipped = p.next, seq-p.next
		p.advance(seq + 1)
		return gap, from, skipped
	case p.next-seq > trackWindow:
		return duplicate, 0, 0
	}
	w, m := p.bit(seq)
	if p.seen[w]&m != 0 {
		return duplicate, 0, 0
	}
	p.seen[w] |= m
	if seq < p.base {
		// From before the baseline: never counted as lost.
		p.base = seq
		return inOrder, 0, 0
	}
	return late, 0, 0
}

// advance moves next to n, clearing the bits of the sequences it passes
// and setting the one of n-1.
func (p *pubState) advance(n uint64) {
	if n-p.next >= trackWindow {
		clear(p.seen[:])
	} else {
		for s := p.next; s < n; s++ {
			w, m := p.bit(s)
			p.seen[w] &^= m
		}
	}
	p.next = n
	w, m := p.bit(n - 1)
	p.seen[w] |= m
}

// unobserve forgets that seq was received (it was not processed after
// all, so a redelivery must not count as a duplicate).
func (t *tracker) unobserve(pub, seq uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p := t.pubs[pub]; p != nil && seq < p.next && p.next-seq <= trackWindow {
		w, m := p.bit(seq)
		p.seen[w] &^= m
	}
}

// forget drops a publisher (it went away).
func (t *tracker) forget(pub uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.pubs, pub)
	t.lastID, t.lastPub = 0, nil
}

// forgetInstance drops the publishers of runtime instance inst (it went
// away).
func (t *tracker) forgetInstance(inst uint64) {
	if inst == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for id, p := range t.pubs {
		if p.inst == inst {
			delete(t.pubs, id)
		}
	}
	t.lastID, t.lastPub = 0, nil
}

func (t *tracker) publishers() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.pubs)
}

func (t *tracker) evictOldest() {
	var oldest uint64
	var at uint64 = ^uint64(0)
	for id, p := range t.pubs {
		if p.heard < at {
			oldest, at = id, p.heard
		}
	}
	delete(t.pubs, oldest)
	t.lastID, t.lastPub = 0, nil
}
