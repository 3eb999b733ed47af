package mux

import (
	"bytes"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// freezer is a TCP proxy that can freeze as a SIGSTOPped process does:
// connections stay open, the kernel's buffers fill, nothing is answered,
// new connections are accepted and never greeted. Thawed, it forwards
// what it held.
type freezer struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup
	done   chan struct{}

	mu     sync.Mutex
	frozen bool
	thawed chan struct{}
	conns  []net.Conn
	dials  atomic.Int32 // connections accepted
}

func newFreezer(t *testing.T, target string) *freezer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{ln: ln, target: target, done: make(chan struct{}), thawed: make(chan struct{})}
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

func (f *freezer) addr() string { return f.ln.Addr().String() }

func (f *freezer) freeze() {
	f.mu.Lock()
	f.frozen = true
	f.mu.Unlock()
}

func (f *freezer) thaw() {
	f.mu.Lock()
	if f.frozen {
		f.frozen = false
		close(f.thawed)
		f.thawed = make(chan struct{})
	}
	f.mu.Unlock()
}

// hold blocks while frozen; false once the freezer is closed.
func (f *freezer) hold() bool {
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

func (f *freezer) forward(c net.Conn) {
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

// stallRecorder counts OnStall calls.
type stallRecorder struct {
	mu    sync.Mutex
	addrs []string
}

func (r *stallRecorder) onStall(addr string) {
	r.mu.Lock()
	r.addrs = append(r.addrs, addr)
	r.mu.Unlock()
}

func (r *stallRecorder) calls() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.addrs...)
}

// holdOrEcho answers "hold" with one message and then waits for release
// (or its end), anything else with an echo.
func holdOrEcho(release <-chan struct{}) HandlerFunc {
	return func(s *ServerStream) error {
		if !bytes.Equal(s.Payload(), []byte("hold")) {
			return s.Send(s.Payload())
		}
		if err := s.Send([]byte("first")); err != nil {
			return err
		}
		select {
		case <-release:
		case <-s.Context().Done():
			return s.Context().Err()
		}
		return s.Send([]byte("rest"))
	}
}

func TestAFrozenServerFailsWaitingStreamsAndRefusesNewOnesUntilItAnswers(t *testing.T) {
	release := make(chan struct{})
	target, _ := startServer(t, ServerConfig{}, holdOrEcho(release))
	fz := newFreezer(t, target)
	var rec stallRecorder
	p := newPool(t, ClientConfig{ConnsPerHost: 1, StallTimeout: 200 * time.Millisecond, KeepaliveTimeout: time.Minute, OnStall: rec.onStall})
	ctx := ctxTimeout(t, 30*time.Second)

	// A stream that has responded and goes on after the thaw.
	held, err := p.Open(ctx, fz.addr(), Request{Path: "p", Payload: []byte("hold")})
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if b, err := held.Recv(); err != nil || string(b) != "first" {
		t.Fatalf("first response: %q, %v", b, err)
	}

	fz.freeze()
	waiting, err := p.Open(ctx, fz.addr(), Request{Path: "p", Payload: []byte("ping")})
	if err != nil {
		t.Fatal(err)
	}
	defer waiting.Close()
	_, err = waiting.Recv()
	var se *StreamError
	if !errors.As(err, &se) || !errors.Is(err, ErrStalled) || !errors.Is(err, ErrReset) || !se.BeforeFirstResponse {
		t.Fatalf("the stream waiting on the frozen server ended with %v; want a Reset before the first response wrapping ErrStalled", err)
	}
	// OnStall runs after the waiting streams have failed.
	waitFor(t, "OnStall", func() bool { return len(rec.calls()) > 0 })
	if got := rec.calls(); len(got) != 1 || got[0] != fz.addr() {
		t.Fatalf("OnStall calls: %q; want one for %s", got, fz.addr())
	}
	if held.ended.Load() {
		t.Fatal("the stream that had responded was failed too; it is keepalive's to decide")
	}

	// New streams are refused at once, without waiting on the server.
	for range 3 {
		_, err := p.Open(ctx, fz.addr(), Request{Path: "p", Payload: []byte("x")})
		if !errors.Is(err, ErrUnreachable) || !errors.Is(err, ErrStalled) {
			t.Fatalf("Open to the frozen server: %v; want ErrUnreachable wrapping ErrStalled", err)
		}
	}

	fz.thaw()
	waitFor(t, "the thawed server to take streams again", func() bool {
		st, err := p.Open(ctx, fz.addr(), Request{Path: "p", Payload: []byte("again")})
		if err != nil {
			return false
		}
		defer st.Close()
		got, err := recvAll(st)
		return err == nil && len(got) == 1 && string(got[0]) == "again"
	})
	close(release)
	if got, err := recvAll(held); err != nil || len(got) != 1 || string(got[0]) != "rest" {
		t.Fatalf("the held stream after the thaw: %q, %v", got, err)
	}
	if n := fz.dials.Load(); n != 1 {
		t.Errorf("%d connections were made; the thawed one should have been kept", n)
	}
}

func TestAServerFrozenPastKeepaliveIsRedialledInTheBackground(t *testing.T) {
	target, _ := startServer(t, ServerConfig{}, echo)
	fz := newFreezer(t, target)
	var rec stallRecorder
	p := newPool(t, ClientConfig{
		ConnsPerHost: 1, StallTimeout: 100 * time.Millisecond, KeepaliveInterval: time.Minute, KeepaliveTimeout: 300 * time.Millisecond,
		DialTimeout: 300 * time.Millisecond, OnStall: rec.onStall,
	})
	ctx := ctxTimeout(t, 30*time.Second)
	if st, err := p.Open(ctx, fz.addr(), Request{Path: "p", Payload: []byte("warm")}); err != nil {
		t.Fatal(err)
	} else if _, err := recvAll(st); err != nil {
		t.Fatal(err)
	}

	fz.freeze()
	st, err := p.Open(ctx, fz.addr(), Request{Path: "p", Payload: []byte("lost")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); !errors.Is(err, ErrStalled) {
		t.Fatalf("the waiting stream: %v; want ErrStalled", err)
	}
	st.Close()
	// Keepalive closes the frozen connection; the address stays stalled.
	waitFor(t, "keepalive to close the frozen connection", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.conns) == 0
	})
	// Every Open is refused at once and none waits on a dial (a dial's
	// preface would time out with ErrUnreachable alone); the dials happen
	// in the background, one at a time.
	for i := 0; i < 20 || fz.dials.Load() < 3; i++ {
		if i > 10000 {
			t.Fatalf("after %d Opens only %d background dials", i, fz.dials.Load())
		}
		_, err := p.Open(ctx, fz.addr(), Request{Path: "p", Payload: []byte("x")})
		if !errors.Is(err, ErrUnreachable) || !errors.Is(err, ErrStalled) {
			t.Fatalf("Open %d to the frozen server: %v; want ErrUnreachable wrapping ErrStalled", i, err)
		}
		time.Sleep(10 * time.Millisecond) // pacing the caller, not synchronisation
	}

	fz.thaw()
	waitFor(t, "a background dial to make the address usable again", func() bool {
		st, err := p.Open(ctx, fz.addr(), Request{Path: "p", Payload: []byte("back")})
		if err != nil {
			return false
		}
		defer st.Close()
		got, err := recvAll(st)
		return err == nil && len(got) == 1
	})
	if n := len(rec.calls()); n != 1 {
		t.Errorf("OnStall called %d times, want 1", n)
	}
}

func TestABusyServerThatAnswersPingsIsNotStalled(t *testing.T) {
	release := make(chan struct{})
	target, _ := startServer(t, ServerConfig{}, func(s *ServerStream) error {
		select {
		case <-release:
		case <-s.Context().Done():
		}
		return s.Send([]byte("late"))
	})
	var rec stallRecorder
	p := newPool(t, ClientConfig{StallTimeout: 100 * time.Millisecond, OnStall: rec.onStall})
	ctx := ctxTimeout(t, 30*time.Second)
	st, err := p.Open(ctx, target, Request{Path: "p"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	// Wait for several rounds of PINGs, counted by the server's reads.
	p.mu.Lock()
	c := p.hosts[target].conns[0]
	p.mu.Unlock()
	start := c.reads.Load()
	waitFor(t, "a dozen PINGs answered", func() bool { return c.reads.Load() >= start+12 })
	close(release)
	if got, err := recvAll(st); err != nil || len(got) != 1 {
		t.Fatalf("the slow stream: %q, %v", got, err)
	}
	if n := len(rec.calls()); n != 0 {
		t.Errorf("a server answering PINGs was reported stalled %d times", n)
	}
}
