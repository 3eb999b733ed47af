package mux

import (
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/internal/wire"
)

// serverConns counts the connections srv still reads from. (Not nconns:
// a connection's first goroutine may outlive it as a handler worker.)
func serverConns(srv *Server) int {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	return len(srv.conns)
}

func TestAnIdleConnectionKeptAliveByPingsIsClosed(t *testing.T) {
	var ll limitLog
	addr, srv := startServer(t, ll.config(ServerConfig{IdleTimeout: 300 * time.Millisecond}), echo)
	r := dialRaw(t, addr, true)
	r.nc.SetDeadline(time.Now().Add(30 * time.Second))
	// One stream, then nothing but PINGs, each answered: keepalive is
	// satisfied, the idle deadline is not.
	r.open(1, "p")
	r.expect(wire.TypeEnd)
	stop := make(chan struct{})
	var pinger sync.WaitGroup
	pinger.Go(func() {
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if _, err := r.nc.Write(append(header(wire.TypePing, 0, 0, 8), make([]byte, 8)...)); err != nil {
					return
				}
			}
		}
	})
	defer func() { close(stop); pinger.Wait() }()

	f := r.expect(wire.TypeGoAway)
	last, code, reason, err := wire.ParseGoAway(f.Payload)
	if err != nil || code != wire.CodeOK || last != 1 || !strings.Contains(string(reason), "idle") {
		t.Fatalf("GOAWAY last %d, code %v, reason %q, %v; want last 1, code OK, saying idle", last, code, reason, err)
	}
	// The peer ignores it and keeps pinging: it is dropped.
	r.expectClosed()
	testutil.Eventually(t, 10*time.Second, "the server to let go of the connection", func() bool { return serverConns(srv) == 0 })
	if n := ll.count("idle_timeout"); n != 1 {
		t.Errorf("OnLimit(idle_timeout) called %d times, want 1", n)
	}
	for _, want := range []string{"limit=idle_timeout remote=127.0.0.1:", "ignored GOAWAY"} {
		if !strings.Contains(ll.buf.String(), want) {
			t.Errorf("no log line with %q:\n%s", want, ll.buf.String())
		}
	}
}

func TestAClientClosesAnIdleConnectionWithoutTakingTheServerForDraining(t *testing.T) {
	var ll limitLog
	addr, srv := startServer(t, ll.config(ServerConfig{IdleTimeout: 200 * time.Millisecond}), echo)
	var drained atomic.Int32
	p := newPool(t, ClientConfig{ConnsPerHost: 1, OnDrain: func(string) { drained.Add(1) }})
	ctx := ctxTimeout(t, 30*time.Second)
	call := func() {
		t.Helper()
		st, err := p.Open(ctx, addr, Request{Path: "p", Payload: []byte("x")})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		if got, err := recvAll(st); err != nil || len(got) != 1 {
			t.Fatalf("call: %q, %v", got, err)
		}
	}
	call()
	testutil.Eventually(t, 10*time.Second, "the idle connection to be closed", func() bool { return ll.count("idle_timeout") == 1 && serverConns(srv) == 0 })
	if p.Draining(addr) || drained.Load() != 0 {
		t.Fatalf("the client took an idle connection's GOAWAY for draining (Draining %v, OnDrain %d calls)", p.Draining(addr), drained.Load())
	}
	call() // on a new connection
	if strings.Contains(ll.buf.String(), "ignored GOAWAY") {
		t.Errorf("the client did not close the idle connection itself:\n%s", ll.buf.String())
	}
}

func TestAConnectionWithAStreamOpenIsNotIdle(t *testing.T) {
	var ll limitLog
	release := make(chan struct{})
	addr, _ := startServer(t, ll.config(ServerConfig{IdleTimeout: 100 * time.Millisecond}), func(s *ServerStream) error {
		<-release
		return s.Send([]byte("done"))
	})
	p := newPool(t, ClientConfig{})
	st, err := p.Open(ctxTimeout(t, 30*time.Second), addr, Request{Path: "p"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	// Several idle periods pass with the stream running; counted by the
	// client's keepalive PINGs being answered, not by a sleep.
	p.mu.Lock()
	c := p.hosts[addr].conns[0]
	p.mu.Unlock()
	start := c.reads.Load()
	testutil.Eventually(t, 10*time.Second, "the server to answer a dozen PINGs", func() bool { return c.reads.Load() >= start+12 })
	close(release)
	if got, err := recvAll(st); err != nil || len(got) != 1 {
		t.Fatalf("the long stream: %q, %v", got, err)
	}
	if n := ll.count("idle_timeout"); n != 0 {
		t.Errorf("a connection with a stream open was taken for idle %d times", n)
	}
}
