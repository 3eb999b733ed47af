package jsconsume

import (
	"context"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// A watchdog reports progress on the messages whose handlers run longer
// than AckWait/2 and cancels the handlers that pass HandlerTimeout. One
// goroutine watches the slots of all of a Runner's workers, so that a job
// costs no timer of its own.
type watchdog struct {
	every time.Duration // progress interval: AckWait/2
	tick  time.Duration
	slots []*slot
	stop  chan struct{}
	done  chan struct{}
}

// slot is what one worker is handling.
type slot struct {
	mu       sync.Mutex
	msg      jetstream.Msg // nil when idle
	started  time.Time
	progress time.Time // last progress report, or started
	deadline time.Time
	cancel   context.CancelFunc
}

func (s *slot) begin(msg jetstream.Msg, now, deadline time.Time, cancel context.CancelFunc) {
	s.mu.Lock()
	s.msg, s.started, s.progress, s.deadline, s.cancel = msg, now, now, deadline, cancel
	s.mu.Unlock()
}

func (s *slot) end() {
	s.mu.Lock()
	s.msg, s.cancel = nil, nil
	s.mu.Unlock()
}

// check reports progress or cancels, as the slot's job needs at now.
func (s *slot) check(now time.Time, every time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.msg == nil {
		return
	}
	if !now.Before(s.deadline) {
		if s.cancel != nil {
			s.cancel() // past HandlerTimeout: no more progress, the job comes back after AckWait
			s.cancel = nil
		}
		return
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
			for _, s := range w.slots {
				s.check(now, w.every)
			}
		case <-w.stop:
			return
		}
	}
}

func (w *watchdog) close() {
	close(w.stop)
	<-w.done
}
