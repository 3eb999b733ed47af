package testutil

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// Freezer is a TCP proxy that can freeze as a SIGSTOPped process does:
// its connections stay open and the kernel's buffers fill, nothing is
// answered, and new connections are accepted and never greeted. Thawed,
// it forwards what it held.
type Freezer struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup
	done   chan struct{}
	dials  atomic.Int32

	mu     sync.Mutex
	frozen bool
	thawed chan struct{}
	conns  []net.Conn
}

// NewFreezer proxies a fresh 127.0.0.1 port to target until the test
// ends.
func NewFreezer(t testing.TB, target string) *Freezer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &Freezer{ln: ln, target: target, done: make(chan struct{}), thawed: make(chan struct{})}
	f.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f.dials.Add(1)
			f.wg.Go(func() { f.forward(c) })
		}
	})
	t.Cleanup(func() {
		close(f.done)
		ln.Close()
		f.mu.Lock()
		for _, c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return f
}

// Addr is the address to connect to instead of the target.
func (f *Freezer) Addr() string { return f.ln.Addr().String() }

// Dials counts the connections accepted.
func (f *Freezer) Dials() int { return int(f.dials.Load()) }

// Freeze stops forwarding.
func (f *Freezer) Freeze() {
	f.mu.Lock()
	f.frozen = true
	f.mu.Unlock()
}

// Thaw forwards again, what was held first.
func (f *Freezer) Thaw() {
	f.mu.Lock()
	if f.frozen {
		f.frozen = false
		close(f.thawed)
		f.thawed = make(chan struct{})
	}
	f.mu.Unlock()
}

// hold blocks while frozen; false once the freezer is closed.
func (f *Freezer) hold() bool {
	f.mu.Lock()
	for f.frozen {
		ch := f.thawed
		f.mu.Unlock()
		select {
		case <-ch:
		case <-f.done:
			return false
		}
		f.mu.Lock()
	}
	f.mu.Unlock()
	return true
}

func (f *Freezer) forward(c net.Conn) {
	if !f.hold() {
		c.Close()
		return
	}
	up, err := net.Dial("tcp", f.target)
	if err != nil {
		c.Close()
		return
	}
	f.mu.Lock()
	f.conns = append(f.conns, c, up)
	f.mu.Unlock()
	pipe := func(dst, src net.Conn) {
		defer dst.Close()
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if err != nil || !f.hold() {
				return
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
	}
	f.wg.Go(func() { pipe(up, c) })
	pipe(c, up)
}
