package mux

import (
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/loomrt/loom/internal/testutil"
)

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
	fz := testutil.NewFreezer(t, target)
	var rec stallRecorder
	p := newPool(t, ClientConfig{ConnsPerHost: 1, StallTimeout: 200 * time.Millisecond, KeepaliveTimeout: time.Minute, OnStall: rec.onStall})
	ctx := ctxTimeout(t, 30*time.Second)

	// A stream that has responded and goes on after the thaw.
	held, err := p.Open(ctx, fz.Addr(), Request{Path: "p", Payload: []byte("hold")})
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if b, err := held.Recv(); err != nil || string(b) != "first" {
		t.Fatalf("first response: %q, %v", b, err)
	}

	fz.Freeze()
	waiting, err := p.Open(ctx, fz.Addr(), Request{Path: "p", Payload: []byte("ping")})
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
	testutil.Eventually(t, 10*time.Second, "OnStall", func() bool { return len(rec.calls()) > 0 })
	if got := rec.calls(); len(got) != 1 || got[0] != fz.Addr() {
		t.Fatalf("OnStall calls: %q; want one for %s", got, fz.Addr())
	}
	if held.isEnded() {
		t.Fatal("the stream that had responded was failed too; it is keepalive's to decide")
	}

	// New streams are refused at once, without waiting on the server.
	for range 3 {
		_, err := p.Open(ctx, fz.Addr(), Request{Path: "p", Payload: []byte("x")})
		if !errors.Is(err, ErrUnreachable) || !errors.Is(err, ErrStalled) {
			t.Fatalf("Open to the frozen server: %v; want ErrUnreachable wrapping ErrStalled", err)
		}
	}

	fz.Thaw()
	testutil.Eventually(t, 10*time.Second, "the thawed server to take streams again", func() bool {
		st, err := p.Open(ctx, fz.Addr(), Request{Path: "p", Payload: []byte("again")})
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
	if n := fz.Dials(); n != 1 {
		t.Errorf("%d connections were made; the thawed one should have been kept", n)
	}
}

func TestAServerFrozenPastKeepaliveIsRedialledInTheBackground(t *testing.T) {
	target, _ := startServer(t, ServerConfig{}, echo)
	fz := testutil.NewFreezer(t, target)
	var rec stallRecorder
	// The keepalive timeout is far above the stall timeout: a keepalive
	// check that runs late (this process starved of CPU) puts off the
	// stall judgement by a stall timeout, and with only 200ms between the
	// two, one late check on a loaded machine let keepalive close the
	// connection before the stall was judged.
	p := newPool(t, ClientConfig{
		ConnsPerHost: 1, StallTimeout: 100 * time.Millisecond, KeepaliveInterval: time.Minute, KeepaliveTimeout: 2 * time.Second,
		DialTimeout: 300 * time.Millisecond, OnStall: rec.onStall,
	})
	ctx := ctxTimeout(t, 30*time.Second)
	if st, err := p.Open(ctx, fz.Addr(), Request{Path: "p", Payload: []byte("warm")}); err != nil {
		t.Fatal(err)
	} else if _, err := recvAll(st); err != nil {
		t.Fatal(err)
	}

	fz.Freeze()
	st, err := p.Open(ctx, fz.Addr(), Request{Path: "p", Payload: []byte("lost")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); !errors.Is(err, ErrStalled) {
		t.Fatalf("the waiting stream: %v; want ErrStalled", err)
	}
	st.Close()
	// Keepalive closes the frozen connection; the address stays stalled.
	testutil.Eventually(t, 10*time.Second, "keepalive to close the frozen connection", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.conns) == 0
	})
	// Every Open is refused at once and none waits on a dial (a dial's
	// preface would time out with ErrUnreachable alone); the dials happen
	// in the background, one at a time.
	for i := 0; i < 20 || fz.Dials() < 3; i++ {
		if i > 10000 {
			t.Fatalf("after %d Opens only %d background dials", i, fz.Dials())
		}
		_, err := p.Open(ctx, fz.Addr(), Request{Path: "p", Payload: []byte("x")})
		if !errors.Is(err, ErrUnreachable) || !errors.Is(err, ErrStalled) {
			t.Fatalf("Open %d to the frozen server: %v; want ErrUnreachable wrapping ErrStalled", i, err)
		}
		time.Sleep(10 * time.Millisecond) // pacing the caller, not synchronisation
	}

	fz.Thaw()
	testutil.Eventually(t, 10*time.Second, "a background dial to make the address usable again", func() bool {
		st, err := p.Open(ctx, fz.Addr(), Request{Path: "p", Payload: []byte("back")})
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
	p := newPool(t, ClientConfig{OnStall: rec.onStall}) // the default stall timeout
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
	testutil.Eventually(t, 10*time.Second, "a dozen PINGs answered", func() bool { return c.reads.Load() >= start+12 })
	close(release)
	if got, err := recvAll(st); err != nil || len(got) != 1 {
		t.Fatalf("the slow stream: %q, %v", got, err)
	}
	if n := len(rec.calls()); n != 0 {
		t.Errorf("a server answering PINGs was reported stalled %d times", n)
	}
}
