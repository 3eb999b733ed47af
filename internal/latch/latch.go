// Package latch is a signal that fires once: a channel closed by Fire,
// made only when somebody asks for it, so that the many streams nobody
// ever stops cost no channel.
package latch

import "sync"

// closed is the channel Done returns for a latch that fired before anyone
// asked.
var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Latch is a one-shot signal. The zero value is ready to use.
type Latch struct {
	mu sync.Mutex
	ch chan struct{}
}

// Done returns a channel that is closed once Fire has been called.
func (l *Latch) Done() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ch == nil {
		l.ch = make(chan struct{})
	}
	return l.ch
}

// Fire closes the channel; later calls do nothing.
func (l *Latch) Fire() {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch l.ch {
	case nil:
		l.ch = closed
	case closed:
	default:
		select {
		case <-l.ch:
		default:
			close(l.ch)
		}
	}
}

// Fired reports whether Fire has been called.
func (l *Latch) Fired() bool {
	select {
	case <-l.Done():
		return true
	default:
		return false
	}
}
