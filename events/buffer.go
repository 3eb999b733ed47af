package events

import (
	"context"
	"sync"
)

// item is an event waiting in a subscription's buffer, its envelope
// decoded, its payload not yet; or, with loss set, a loss notice in its
// place in the stream.
type item struct {
	subject     string
	codec       string
	env         Envelope
	loss        *LossError
	traceParent string // the publisher's span, from the message headers
}

// ring is a subscription's bounded buffer between the transport's
// goroutines (push) and the reader (pop). It holds at most max events and
// grows to that as needed; when full it applies the overflow policy. Loss
// notices take their place among the events but do not count against max
// (at most maxNotices of them; more are merged), and are never dropped: a
// notice the drop-oldest policy pushes out is merged into the one the
// reader gets next.
type ring struct {
	mu      sync.Mutex
	buf     []item
	head, n int // items in buf, from head
	events  int // of which events (not notices)
	notices int
	max     int
	policy  Overflow

	readerWaiting bool
	notify        chan struct{} // wakes the reader
	pusherWaiting int
	space         chan struct{} // wakes a blocked pusher

	reportDrops bool       // count drops for a notice
	front       *LossError // merged losses for the reader's next pop
	closed      bool
	err         error
}

// maxNotices bounds the loss notices waiting among the events.
const maxNotices = 256

func newRing(max int, policy Overflow) *ring {
	return &ring{
		buf:    make([]item, min(max, 64)),
		max:    max,
		policy: policy,
		notify: make(chan struct{}, 1),
		space:  make(chan struct{}, 1),
	}
}

// push adds an event and reports whether an event was dropped to make
// room (the oldest, or it itself). With the block policy it waits for room
// instead, until the ring is closed.
func (r *ring) push(it item) (dropped bool) {
	r.mu.Lock()
	for r.events >= r.max && !r.closed {
		switch r.policy {
		case DropNewest:
			r.foldLocked(LossError{Dropped: 1})
			r.mu.Unlock()
			return true
		case DropOldest:
			if old := r.shiftLocked(); old.loss != nil {
				r.foldLocked(*old.loss)
				continue
			}
			r.foldLocked(LossError{Dropped: 1})
			dropped = true
		default: // Block
			r.pusherWaiting++
			r.mu.Unlock()
			<-r.space
			r.mu.Lock()
			r.pusherWaiting--
		}
	}
	if r.closed {
		r.passSpaceLocked()
		r.mu.Unlock()
		return false
	}
	r.appendLocked(it)
	if r.events < r.max {
		r.passSpaceLocked()
	}
	r.wakeReaderLocked()
	r.mu.Unlock()
	return dropped
}

// notice adds a loss notice after the events buffered so far.
func (r *ring) notice(n LossError) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	if r.notices >= maxNotices {
		r.foldLocked(n)
	} else {
		r.appendLocked(item{loss: &n})
	}
	r.wakeReaderLocked()
}

func (r *ring) appendLocked(it item) {
	if r.n == len(r.buf) {
		r.growLocked(r.n + 1)
	}
	r.buf[(r.head+r.n)%len(r.buf)] = it
	r.n++
	if it.loss != nil {
		r.notices++
	} else {
		r.events++
	}
}

// shiftLocked removes and returns the oldest item.
func (r *ring) shiftLocked() item {
	it := r.buf[r.head]
	r.buf[r.head] = item{}
	r.head = (r.head + 1) % len(r.buf)
	r.n--
	if it.loss != nil {
		r.notices--
	} else {
		r.events--
	}
	return it
}

// foldLocked merges a loss into the notice the reader gets first; drops
// only when they are to be reported.
func (r *ring) foldLocked(n LossError) {
	if n.Lost == 0 && !r.reportDrops {
		return
	}
	if r.front == nil {
		r.front = &n
		return
	}
	r.front.merge(n)
}

func (r *ring) growLocked(need int) {
	size := max(2*len(r.buf), need)
	size = min(size, max(r.max+maxNotices, need))
	nb := make([]item, size)
	for i := range r.n {
		nb[i] = r.buf[(r.head+i)%len(r.buf)]
	}
	r.buf, r.head = nb, 0
}

func (r *ring) wakeReaderLocked() {
	if r.readerWaiting {
		r.readerWaiting = false
		select {
		case r.notify <- struct{}{}:
		default:
		}
	}
}

// passSpaceLocked wakes one more blocked pusher, if any: there is room, or
// the ring is closed.
func (r *ring) passSpaceLocked() {
	if r.pusherWaiting > 0 {
		select {
		case r.space <- struct{}{}:
		default:
		}
	}
}

// pop waits until there is something for the reader, then moves up to
// cap(dst) items into dst: first a notice of the merged losses, if any,
// then the items in order. Once closed and empty it returns the error the
// ring was closed with (errRingClosed for a plain close).
func (r *ring) pop(ctx context.Context, dst []item) ([]item, error) {
	r.mu.Lock()
	for r.n == 0 && r.front == nil {
		if r.closed {
			err := r.err
			r.mu.Unlock()
			return dst, err
		}
		r.readerWaiting = true
		r.mu.Unlock()
		select {
		case <-r.notify:
		case <-ctx.Done():
			// A wake-up sent meanwhile stays in notify: the next pop
			// takes it and looks again.
			return dst, ctx.Err()
		}
		r.mu.Lock()
	}
	if r.front != nil && len(dst) < cap(dst) {
		dst = append(dst, item{loss: r.front})
		r.front = nil
	}
	for r.n > 0 && len(dst) < cap(dst) {
		dst = append(dst, r.shiftLocked())
	}
	r.passSpaceLocked()
	r.mu.Unlock()
	return dst, nil
}

// unpop puts items the reader took but did not consume back at the front,
// and returns how many events no longer fit (the pushers refilled the
// buffer meanwhile): those are dropped, as the oldest.
func (r *ring) unpop(items []item) (dropped int) {
	if len(items) == 0 {
		return 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(items) - 1; i >= 0; i-- {
		it := items[i]
		if it.loss == nil && r.events >= r.max {
			dropped++
			continue
		}
		if r.n == len(r.buf) {
			r.growLocked(r.n + 1)
		}
		r.head = (r.head - 1 + len(r.buf)) % len(r.buf)
		r.buf[r.head] = it
		r.n++
		if it.loss != nil {
			r.notices++
		} else {
			r.events++
		}
	}
	if dropped > 0 {
		r.foldLocked(LossError{Dropped: uint64(dropped)})
	}
	return dropped
}

// len returns the events waiting: buffered, and held by pushers blocked
// for room.
func (r *ring) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.events + r.pusherWaiting
}

// close ends the ring: pop returns err once the items are drained (nil
// err: errRingClosed), pushes are refused and blocked pushers released.
func (r *ring) close(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	if err == nil {
		err = errRingClosed
	}
	r.closed, r.err = true, err
	r.readerWaiting = false
	select {
	case r.notify <- struct{}{}:
	default:
	}
	r.passSpaceLocked()
}
