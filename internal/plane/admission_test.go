package plane

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type item struct {
	id     int
	killed atomic.Bool
	gone   atomic.Bool
}

func newAdm(l Limits) *Admission[*item] {
	return NewAdmission(l, func(it *item) bool { return it.killed.Load() }, func(it *item) { it.gone.Store(true) })
}

func TestAdmissionRunsThenQueuesThenRefuses(t *testing.T) {
	a := newAdm(Limits{MaxRunning: 2, QueueSize: 1})
	var p Peer
	for i, want := range []Result{Run, Run, Queued, Refused} {
		if got, msg := a.Admit(&item{id: i}, 10, &p); got != want {
			t.Fatalf("stream %d: %v (%s), want %v", i, got, msg, want)
		}
	}
	if p.Streams() != 3 {
		t.Fatalf("peer holds %d streams, want 3 (the refused one is not held)", p.Streams())
	}
	st, _, _, ok := a.Done(10, &p)
	if !ok || st.id != 2 {
		t.Fatalf("Done handed out %v, %v; want the queued stream 2", st, ok)
	}
	for range 2 {
		if _, _, _, ok := a.Done(10, &p); ok {
			t.Fatal("Done handed out a stream with none waiting")
		}
	}
	if a.Running() != 0 || p.Streams() != 0 {
		t.Fatalf("running %d, peer %d after every stream ended; want 0, 0", a.Running(), p.Streams())
	}
	select {
	case <-a.Idle():
	default:
		t.Fatal("Idle is not closed with nothing running")
	}
}

func TestAdmissionBoundsWhatOnePeerHolds(t *testing.T) {
	a := newAdm(Limits{MaxRunning: 100, QueueSize: 10})
	var hog, other Peer
	for i := range 50 {
		if got, _ := a.Admit(&item{id: i}, 1, &hog); got != Run {
			t.Fatalf("stream %d of the hog: %v, want Run", i, got)
		}
	}
	if got, msg := a.Admit(&item{}, 1, &hog); got != RefusedPeer || msg == "" {
		t.Fatalf("51st stream of one peer: %v %q, want RefusedPeer with a reason", got, msg)
	}
	for i := range 50 {
		if got, _ := a.Admit(&item{id: i}, 1, &other); got != Run {
			t.Fatalf("stream %d of another peer: %v, want Run", i, got)
		}
	}
}

func TestAdmissionBoundsRunningAndQueuedBytes(t *testing.T) {
	a := newAdm(Limits{MaxRunning: 10, QueueSize: 10, MaxRunningBytes: 100, MaxQueuedBytes: 50})
	if got, _ := a.Admit(&item{}, 80, nil); got != Run {
		t.Fatalf("80 bytes: %v, want Run", got)
	}
	if got, _ := a.Admit(&item{}, 40, nil); got != Queued {
		t.Fatalf("40 more bytes beyond the running bound: %v, want Queued", got)
	}
	if got, _ := a.Admit(&item{}, 20, nil); got != Refused {
		t.Fatalf("20 more bytes beyond the queued bound: %v, want Refused", got)
	}
	if _, n, _, ok := a.Done(80, nil); !ok || n != 40 {
		t.Fatalf("Done: %d bytes, %v; want the queued 40-byte stream", n, ok)
	}
	b := newAdm(Limits{MaxRunning: 10, MaxRunningBytes: 100})
	if got, _ := b.Admit(&item{}, 500, nil); got != Run {
		t.Fatalf("a request above the running bound with nothing running: %v, want Run", got)
	}
}

// The running count and bytes share one word: large requests must not
// spill into the count, nor a full count into the bytes, and limits
// beyond what the word holds are clamped.
func TestAdmissionCountsLargeRequestsApartFromStreams(t *testing.T) {
	const gib = 1 << 30
	a := newAdm(Limits{MaxRunning: 1 << 30, MaxRunningBytes: 1 << 50, QueueSize: -1})
	if l := a.Limits(); l.MaxRunning != 1<<20 || l.MaxRunningBytes != 1<<38 {
		t.Fatalf("limits %d streams, %d bytes; want them clamped to 2^20 and 2^38", l.MaxRunning, l.MaxRunningBytes)
	}
	for i := range 255 {
		if got, msg := a.Admit(&item{id: i}, gib, nil); got != Run {
			t.Fatalf("request %d of 1 GiB: %v (%s), want Run", i, got, msg)
		}
	}
	if a.Running() != 255 {
		t.Fatalf("%d running after 255 requests of 1 GiB, want 255", a.Running())
	}
	if got, _ := a.Admit(&item{}, gib+1, nil); got != Refused {
		t.Fatalf("a request past 256 GiB running: %v, want Refused (no queue)", got)
	}
	if a.Running() != 255 {
		t.Fatalf("%d running after a refusal, want 255", a.Running())
	}
	for range 255 {
		a.Done(gib, nil)
	}
	if a.Running() != 0 || a.run.Load() != 0 {
		t.Fatalf("%d running, word %#x after every request ended; want 0, 0", a.Running(), a.run.Load())
	}
	b := newAdm(Limits{MaxRunning: 3, QueueSize: -1})
	for i := range 3 {
		if got, _ := b.Admit(&item{id: i}, 0, nil); got != Run {
			t.Fatalf("empty request %d: %v, want Run", i, got)
		}
	}
	if got, _ := b.Admit(&item{}, 0, nil); got != Refused {
		t.Fatalf("a 4th stream with 3 slots: %v, want Refused", got)
	}
}

func TestAdmissionDropsKilledWaiters(t *testing.T) {
	a := newAdm(Limits{MaxRunning: 1, QueueSize: 2})
	var p Peer
	a.Admit(&item{id: 0}, 1, &p)
	dead, live := &item{id: 1}, &item{id: 2}
	a.Admit(dead, 1, &p)
	a.Admit(live, 1, &p)
	dead.killed.Store(true)
	st, _, _, ok := a.Done(1, &p)
	if !ok || st != live || !dead.gone.Load() {
		t.Fatalf("Done handed out %v (ok %v), killed one discarded %v; want the live one and the killed one discarded", st, ok, dead.gone.Load())
	}
	if p.Streams() != 1 {
		t.Fatalf("peer holds %d, want 1", p.Streams())
	}
}

// Streams admitted while others finish are never stranded in the queue:
// every admitted stream runs, whatever the interleaving.
func TestAdmissionNeverStrandsAQueuedStream(t *testing.T) {
	a := newAdm(Limits{MaxRunning: 2, QueueSize: 1 << 20})
	const n = 2000
	var ran atomic.Int64
	ranIDs := make([]atomic.Bool, 4*n) // ids are g*n+i
	var wg sync.WaitGroup
	run := func(st *item, bytes int, p *Peer) {
		defer wg.Done()
		for ok := true; ok; {
			if ranIDs[st.id].Swap(true) {
				t.Errorf("stream %d ran twice", st.id)
			}
			ran.Add(1)
			st, bytes, p, ok = a.Done(bytes, p)
		}
	}
	var admitters sync.WaitGroup
	for g := range 4 {
		admitters.Go(func() {
			for i := range n / 4 {
				st := &item{id: g*n + i}
				switch res, _ := a.Admit(st, 1, nil); res {
				case Run:
					wg.Add(1)
					go run(st, 1, nil)
				case Queued:
					for {
						next, b, p, ok := a.Claim()
						if !ok {
							break
						}
						wg.Add(1)
						go run(next, b, p)
					}
				default:
					t.Errorf("stream refused: %v", res)
				}
			}
		})
	}
	admitters.Wait()
	<-a.Idle()
	wg.Wait()
	if ran.Load() != n {
		t.Fatalf("%d of %d admitted streams ran", ran.Load(), n)
	}
}

// Idle asked while the last stream ends must still close: the drain of
// a server waits on it. (Idle checked the running count before it set
// the flag Done reads, so a Done between the two was missed and the
// drain waited forever.)
func TestAdmissionIdleRacingTheLastDone(t *testing.T) {
	a := newAdm(Limits{MaxRunning: 4, QueueSize: 4})
	for i := range 2000 {
		if r, _ := a.Admit(&item{id: i}, 1, nil); r != Run {
			t.Fatalf("round %d: Admit = %v, want Run", i, r)
		}
		done := make(chan struct{})
		go func() {
			a.Done(1, nil)
			close(done)
		}()
		idle := a.Idle()
		<-done
		select {
		case <-idle:
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: Idle never closed after the last stream ended", i)
		}
	}
}

// TestAdmissionDefaultsAndQueueOrder holds docs/protocol.md's figures for a
// server configured with nothing (10,000 handlers, a queue of 1,024 streams
// holding at most 64 MiB, 256 MiB for running requests, half the handler
// slots per connection) and its word that the queue is FIFO: streams leave
// it in the order they came, also across the queue's compaction.
func TestAdmissionDefaultsAndQueueOrder(t *testing.T) {
	want := Limits{MaxRunning: 10000, QueueSize: 1024, MaxQueuedBytes: 64 << 20, MaxRunningBytes: 256 << 20, MaxPerPeer: 5000}
	if got := newAdm(Limits{}).Limits(); got != want {
		t.Fatalf("default limits %+v, want %+v", got, want)
	}

	a := newAdm(Limits{MaxRunning: 1, QueueSize: 4000})
	if got, _ := a.Admit(&item{id: -1}, 1, nil); got != Run {
		t.Fatalf("first stream: %v, want Run", got)
	}
	next := 0 // the id the queue should hand out next
	admitted := 0
	admit := func(n int) {
		for range n {
			if got, msg := a.Admit(&item{id: admitted}, 1, nil); got != Queued {
				t.Fatalf("stream %d: %v (%s), want Queued", admitted, got, msg)
			}
			admitted++
		}
	}
	done := func(n int) {
		for range n {
			st, _, _, ok := a.Done(1, nil)
			if !ok || st.id != next {
				t.Fatalf("Done handed out %+v, %v; want stream %d (FIFO)", st, ok, next)
			}
			next++
		}
	}
	admit(2000)
	done(1100) // past the point where the next Admit compacts the queue
	admit(1500)
	done(admitted - next)
	if a.Waiting() != 0 {
		t.Fatalf("%d streams still wait", a.Waiting())
	}
}

// TestAFullQueueMakesRoomFromItsKilledWaiters: waiters whose callers gave
// up (their deadline passed while every slot was busy, as under overload)
// held their places until a slot freed and reached them, so live callers
// were refused as if the queue were full. A new stream that finds the
// queue full now takes the killed waiters out first, and is queued in
// their place; the killed ones are discarded at the next Claim.
func TestAFullQueueMakesRoomFromItsKilledWaiters(t *testing.T) {
	a := newAdm(Limits{MaxRunning: 1, QueueSize: 3})
	var p Peer
	running := &item{id: 0}
	waiters := []*item{{id: 1}, {id: 2}, {id: 3}}
	if got, _ := a.Admit(running, 10, &p); got != Run {
		t.Fatalf("the first stream: %v, want Run", got)
	}
	for _, w := range waiters {
		if got, _ := a.Admit(w, 10, &p); got != Queued {
			t.Fatalf("waiter %d: %v, want Queued", w.id, got)
		}
	}
	waiters[0].killed.Store(true)
	waiters[2].killed.Store(true)
	late := &item{id: 4}
	if got, msg := a.Admit(late, 10, &p); got != Queued {
		t.Fatalf("a stream finding the queue full of two killed waiters and one live: %v (%s), want Queued", got, msg)
	}
	// The caller's Claim after Queued discards them, outside Admit's
	// caller's locks; no slot is free.
	if st, _, _, ok := a.Claim(); ok {
		t.Fatalf("Claim handed out %v with the one slot taken", st)
	}
	if !waiters[0].gone.Load() || !waiters[2].gone.Load() || waiters[1].gone.Load() {
		t.Fatalf("discarded: %v %v %v; want the two killed waiters only", waiters[0].gone.Load(), waiters[1].gone.Load(), waiters[2].gone.Load())
	}
	if a.Waiting() != 2 || p.Streams() != 3 {
		t.Fatalf("waiting %d, peer holds %d; want 2 waiting and 3 held (1 running, 2 waiting)", a.Waiting(), p.Streams())
	}
	// The order of the live ones is kept.
	for _, want := range []*item{waiters[1], late} {
		st, _, _, ok := a.Done(10, &p)
		if !ok || st != want {
			t.Fatalf("Done handed out %v, %v; want stream %d", st, ok, want.id)
		}
	}
	if _, _, _, ok := a.Done(10, &p); ok || a.Running() != 0 || p.Streams() != 0 {
		t.Fatalf("after every stream ended: handed out %v, running %d, peer %d; want nothing, 0, 0", ok, a.Running(), p.Streams())
	}
}
