package plane

import (
	"fmt"
	"sync"
	"sync/atomic"
)

// Admission defaults, shared by both planes.
const (
	DefaultMaxConcurrentStreams = 10000
	DefaultQueueSize            = 1024
	DefaultInitialWindow        = 256 << 10
	// DefaultMaxQueuedBytes bounds the requests held by waiting streams,
	// so that a flood of large requests cannot pin QueueSize times the
	// largest request.
	DefaultMaxQueuedBytes = 64 << 20
	// DefaultMaxRunningBytes bounds the requests held by running streams
	// (a stream's request lives as long as its handler runs).
	DefaultMaxRunningBytes = 256 << 20
)

// Limits configures an Admission. Zero values take the defaults.
type Limits struct {
	// MaxRunning is how many handlers may run at once (at most 2^20).
	MaxRunning int
	// QueueSize is how many admitted streams may wait for a running
	// slot; negative means none.
	QueueSize int
	// MaxQueuedBytes and MaxRunningBytes bound the request bytes held by
	// waiting and by running streams. A stream whose request does not fit
	// in the running bound waits in the queue; one that fits in neither
	// is refused. A single request larger than MaxRunningBytes still runs
	// when nothing else does. MaxRunningBytes is at most 256 GiB.
	MaxQueuedBytes, MaxRunningBytes int
	// MaxPerPeer is how many streams, running and waiting, one peer (a
	// connection, a caller) may hold, so that one peer cannot take every
	// slot. Default MaxRunning/2 when MaxRunning is at least 64 (a server
	// with fewer slots is sized for its few clients, and one client may
	// use it whole); negative means no per-peer limit.
	MaxPerPeer int
}

// withDefaults returns l with its zero values filled in.
func (l Limits) withDefaults() Limits {
	if l.MaxRunning <= 0 {
		l.MaxRunning = DefaultMaxConcurrentStreams
	}
	if l.QueueSize == 0 {
		l.QueueSize = DefaultQueueSize
	}
	l.QueueSize = max(l.QueueSize, 0)
	if l.MaxQueuedBytes <= 0 {
		l.MaxQueuedBytes = DefaultMaxQueuedBytes
	}
	if l.MaxRunningBytes <= 0 {
		l.MaxRunningBytes = DefaultMaxRunningBytes
	}
	l.MaxRunning = min(l.MaxRunning, maxRunning)
	l.MaxRunningBytes = min(l.MaxRunningBytes, maxRunningBytes)
	if l.MaxPerPeer == 0 && l.MaxRunning >= 64 {
		l.MaxPerPeer = l.MaxRunning / 2
	}
	return l
}

// Peer counts the streams one peer holds in an Admission.
type Peer struct{ n atomic.Int64 }

// Streams returns how many streams the peer holds, running or waiting.
func (p *Peer) Streams() int64 { return p.n.Load() }

// Result is the outcome of Admit.
type Result int

// Admission outcomes.
const (
	// Run: the stream holds a running slot; start its handler.
	Run Result = iota
	// Queued: the stream waits; a later Done or Admit hands it out.
	Queued
	// Refused: at capacity; end the stream with Overloaded. Nothing of
	// it is held.
	Refused
	// RefusedPeer: the stream's peer holds its share already.
	RefusedPeer
)

type entry[T any] struct {
	st    T
	bytes int
	peer  *Peer
}

// The running streams and their request bytes are counted in one word,
// so that taking and giving back a slot is one atomic add each: the count
// above runShift bits, the bytes below. The limits are clamped so that
// neither overflows its part, even with every admitting goroutine's add
// in flight at once.
const (
	runShift        = 42
	runOne          = 1 << runShift
	runBytesMask    = runOne - 1
	maxRunningBytes = 1 << 38 // 256 GiB, leaving room for 3,840 in-flight adds of 1 GiB requests
	maxRunning      = 1 << 20 // leaving room for as many in-flight adds
)

// Admission decides which streams run, wait or are refused. Its fast path
// (a free slot, no one waiting) takes no lock: an atomic add for the
// peer's count and one for the running slot and bytes. It is safe for
// concurrent use.
type Admission[T any] struct {
	lim     Limits
	killed  func(T) bool
	discard func(T)
	run     atomic.Int64 // running streams << runShift | their request bytes
	waiting atomic.Int64 // len of the queue, readable without mu

	mu     sync.Mutex
	queue  []entry[T] // FIFO from qhead
	qhead  int
	qbytes int
	swept  []entry[T]    // killed waiters taken out of the queue, to discard
	nswept atomic.Int64  // len(swept), readable without mu
	idle   chan struct{} // closed when nothing runs or waits; nil unless awaited
	watch  atomic.Bool   // someone waits on idle
}

// NewAdmission returns an Admission with limits l. killed reports that a
// waiting stream ended (the client killed it); such a stream is dropped
// from the queue and given to discard.
func NewAdmission[T any](l Limits, killed func(T) bool, discard func(T)) *Admission[T] {
	return &Admission[T]{lim: l.withDefaults(), killed: killed, discard: discard}
}

// Limits returns the limits in force, defaults filled in.
func (a *Admission[T]) Limits() Limits { return a.lim }

// Running returns how many streams hold a running slot.
func (a *Admission[T]) Running() int { return int(a.run.Load() >> runShift) }

// Waiting returns how many streams wait.
func (a *Admission[T]) Waiting() int { return int(a.waiting.Load()) }

// Admit decides for st, whose request holds bytes, from peer (nil for no
// per-peer share). On Queued the caller must then call Claim until it
// returns false and start what it returns: a slot may have freed up
// while st was being queued. A stream that finds the queue full first
// takes out the waiters whose callers killed them, so that they do not
// hold places until a slot reaches them; the next Claim discards them. On Refused and RefusedPeer, the message says
// why, to follow "server " or "server at X is " in the END frame.
func (a *Admission[T]) Admit(st T, bytes int, peer *Peer) (Result, string) {
	if peer != nil {
		if n := peer.n.Add(1); a.lim.MaxPerPeer > 0 && n > int64(a.lim.MaxPerPeer) {
			peer.n.Add(-1)
			return RefusedPeer, fmt.Sprintf("refusing a new stream: this peer already holds %d streams, its share of the server's %d handler slots (max streams per connection %d); open fewer at once or use more connections",
				n-1, a.lim.MaxRunning, a.lim.MaxPerPeer)
		}
	}
	if a.waiting.Load() == 0 && a.tryRun(bytes) {
		return Run, ""
	}
	a.mu.Lock()
	if !a.fits(bytes) {
		// Waiters whose callers gave up would hold their places until a
		// slot freed and reached them: make room from them first.
		a.sweep()
	}
	if a.fits(bytes) {
		if a.qhead > 1024 && 2*a.qhead > len(a.queue) {
			n := copy(a.queue, a.queue[a.qhead:])
			clear(a.queue[n:])
			a.queue, a.qhead = a.queue[:n], 0
		}
		a.queue = append(a.queue, entry[T]{st, bytes, peer})
		a.qbytes += bytes
		a.waiting.Add(1)
		a.mu.Unlock()
		return Queued, ""
	}
	msg := fmt.Sprintf("at capacity: %d streams running, %d queued with %d request bytes (MaxConcurrentStreams %d, QueueSize %d, at most %d queued bytes); retry later or elsewhere",
		a.Running(), len(a.queue)-a.qhead, a.qbytes, a.lim.MaxRunning, a.lim.QueueSize, a.lim.MaxQueuedBytes)
	a.mu.Unlock()
	if peer != nil {
		peer.n.Add(-1)
	}
	return Refused, msg
}

// fits reports whether a stream of bytes fits in the queue; a.mu is held.
func (a *Admission[T]) fits(bytes int) bool {
	return len(a.queue)-a.qhead < a.lim.QueueSize && a.qbytes+bytes <= a.lim.MaxQueuedBytes
}

// sweep takes the killed waiters out of the queue, keeping the others in
// order, and sets them aside for the next Claim to discard: Admit runs
// under its caller's locks, which discard may take. Until then they count
// as waiting. a.mu is held.
func (a *Admission[T]) sweep() {
	live := a.queue[:0]
	for _, e := range a.queue[a.qhead:] {
		if a.killed(e.st) {
			a.swept = append(a.swept, e)
			a.qbytes -= e.bytes
			continue
		}
		live = append(live, e)
	}
	clear(a.queue[len(live):])
	a.queue, a.qhead = live, 0
	a.nswept.Store(int64(len(a.swept)))
}

// dropSwept discards the waiters sweep set aside and gives back what they
// held; a.mu is not held.
func (a *Admission[T]) dropSwept() {
	a.mu.Lock()
	dead := a.swept
	a.swept = nil
	a.nswept.Store(0)
	a.mu.Unlock()
	for _, e := range dead {
		a.releasePeer(e.peer)
		a.discard(e.st)
		a.waiting.Add(-1)
	}
}

// tryRun takes a running slot for a request of bytes if one is free: one
// below MaxRunning, and room for bytes below MaxRunningBytes unless
// nothing else holds bytes.
func (a *Admission[T]) tryRun(bytes int) bool {
	d := runOne + int64(bytes)
	v := a.run.Add(d)
	n, nb := v>>runShift, v&runBytesMask
	if n > int64(a.lim.MaxRunning) || nb > int64(a.lim.MaxRunningBytes) && nb != int64(bytes) {
		a.run.Add(-d)
		return false
	}
	return true
}

// Claim hands a waiting stream a running slot if one is free: the caller
// runs it. It returns false when nothing waits or nothing is free.
func (a *Admission[T]) Claim() (T, int, *Peer, bool) {
	var zero T
	if a.nswept.Load() > 0 {
		a.dropSwept()
		a.notify()
	}
	for a.waiting.Load() > 0 {
		a.mu.Lock()
		if a.qhead == len(a.queue) {
			a.mu.Unlock()
			return zero, 0, nil, false
		}
		e := a.queue[a.qhead]
		if a.killed(e.st) {
			a.pop()
			a.mu.Unlock()
			a.releasePeer(e.peer)
			a.discard(e.st)
			a.notify()
			continue
		}
		if !a.tryRun(e.bytes) {
			a.mu.Unlock()
			return zero, 0, nil, false
		}
		a.pop()
		a.mu.Unlock()
		return e.st, e.bytes, e.peer, true
	}
	return zero, 0, nil, false
}

// pop removes the queue's head; a.mu is held.
func (a *Admission[T]) pop() {
	e := a.queue[a.qhead]
	a.queue[a.qhead] = entry[T]{}
	a.qhead++
	a.qbytes -= e.bytes
	a.waiting.Add(-1)
	if a.qhead == len(a.queue) {
		a.queue, a.qhead = a.queue[:0], 0
	}
}

func (a *Admission[T]) releasePeer(peer *Peer) {
	if peer != nil {
		peer.n.Add(-1)
	}
}

// Done gives back the running slot of a stream whose handler returned
// (bytes and peer as given to Admit), then hands it to a waiting stream if
// there is one: the caller runs what it returns in the same goroutine.
func (a *Admission[T]) Done(bytes int, peer *Peer) (T, int, *Peer, bool) {
	a.releasePeer(peer)
	a.run.Add(-(runOne + int64(bytes)))
	st, b, p, ok := a.Claim()
	if !ok {
		a.notify()
	}
	return st, b, p, ok
}

// notify wakes a WaitIdle if nothing runs or waits any more.
func (a *Admission[T]) notify() {
	if !a.watch.Load() {
		return
	}
	a.mu.Lock()
	if a.idle != nil && a.run.Load()>>runShift == 0 && a.qhead == len(a.queue) {
		close(a.idle)
		a.idle = nil
		a.watch.Store(false)
	}
	a.mu.Unlock()
}

// Idle returns a channel closed once no stream runs or waits (at once if
// that holds now), for a draining server.
func (a *Admission[T]) Idle() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	// watch is set before running is read, as Done lowers running before
	// it reads watch: a Done racing with this call either is seen here or
	// sees watch and closes the channel.
	a.watch.Store(true)
	if a.run.Load()>>runShift == 0 && a.qhead == len(a.queue) {
		if a.idle == nil {
			a.watch.Store(false) // nobody waits: Done need not look
		}
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	if a.idle == nil {
		a.idle = make(chan struct{})
	}
	return a.idle
}
