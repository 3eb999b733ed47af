package jsconsume

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// A watchdog reports progress on the messages whose handlers run longer
// than AckWait/2, until their HandlerTimeout (where the handler's context
// ends, by its own deadline). One goroutine watches the slots of all of a
// Runner's workers, so that a job costs no progress timer of its own.
type watchdog struct {
	every time.Duration // progress interval: AckWait/2
	tick  time.Duration
	slots []*slot
	stop  chan struct{}
	done  chan struct{}
	// abandoned: the Runner gave up on its handlers; no more progress
	// reports, so their messages are redelivered.
	abandoned atomic.Bool
}

// slot is what one worker is handling.
type slot struct {
	mu       sync.Mutex
	msg      jetstream.Msg // nil when idle
	seq      uint64        // msg's stream sequence
	started  time.Time
	progress time.Time // last progress report, or started
	deadline time.Time
}

func (s *slot) begin(msg jetstream.Msg, seq uint64, now, deadline time.Time) {
	s.mu.Lock()
	s.msg, s.seq, s.started, s.progress, s.deadline = msg, seq, now, now, deadline
	s.mu.Unlock()
}

func (s *slot) end() {
	s.mu.Lock()
	s.msg, s.seq = nil, 0
	s.mu.Unlock()
}

// holding returns since when the slot's handler has been running on the
// message with stream sequence seq, if it is.
func (s *slot) holding(seq uint64) (since time.Time, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.msg == nil || s.seq != seq {
		return time.Time{}, false
	}
	return s.started, true
}

// busy returns the stream sequence of the slot's message, if any.
func (s *slot) busy() (seq uint64, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seq, s.msg != nil
}

// check reports progress, if the slot's job needs it at now.
func (s *slot) check(now time.Time, every time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.msg == nil {
		return
	}
	if !now.Before(s.deadline) {
		return // past HandlerTimeout: no more progress, the job comes back after AckWait
	}
	if now.Sub(s.progress) >= every {
		_ = s.msg.InProgress()
		s.progress = now
	}
}

// newWatchdog starts watching n slots.
func newWatchdog(p Policy, n int) *watchdog {
	every := p.AckWait / 2
	tick := min(max(p.AckWait/4, 5*time.Millisecond), time.Second)
	w := &watchdog{every: every, tick: tick, stop: make(chan struct{}), done: make(chan struct{})}
	for range n {
		w.slots = append(w.slots, &slot{})
	}
	go w.run()
	return w
}

func (w *watchdog) run() {
	defer close(w.done)
	t := time.NewTicker(w.tick)
	defer t.Stop()
	for {
		select {
		case now := <-t.C:
			if w.abandoned.Load() {
				continue
			}
			for _, s := range w.slots {
				s.check(now, w.every)
			}
		case <-w.stop:
			return
		}
	}
}

// abandon stops the progress reports.
func (w *watchdog) abandon() { w.abandoned.Store(true) }

func (w *watchdog) close() {
	close(w.stop)
	<-w.done
}
