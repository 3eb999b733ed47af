package mux

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/internal/wire"
)

// gated serves each stream once its payload's gate opens; the gates are
// made on first use, by the test or the handler.
type gated struct {
	mu    sync.Mutex
	gates map[string]chan struct{}
}

func (g *gated) gate(name string) chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.gates == nil {
		g.gates = map[string]chan struct{}{}
	}
	ch := g.gates[name]
	if ch == nil {
		ch = make(chan struct{})
		g.gates[name] = ch
	}
	return ch
}

func (g *gated) serve(s *ServerStream) error {
	select {
	case <-g.gate(string(s.Payload())):
	case <-s.Context().Done():
		return s.Context().Err()
	}
	return s.Send(s.Payload())
}

// quietPool is a pool with one connection whose keepalive never ticks
// during a test, so that the read role moves only by the callers.
func quietPool(t *testing.T, tlsConfig *tls.Config) *Pool {
	return newPool(t, ClientConfig{ConnsPerHost: 1, StallTimeout: -1, KeepaliveInterval: time.Hour, KeepaliveTimeout: time.Hour, TLS: tlsConfig})
}

// quietServer sends no PING during a test: a frame from the server would
// end a caller's read that should have been interrupted.
var quietServer = ServerConfig{KeepaliveInterval: time.Hour, KeepaliveTimeout: time.Hour}

// onlyConn returns the pool's one connection.
func onlyConn(t *testing.T, p *Pool) *clientConn {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.conns) != 1 {
		t.Fatalf("the pool has %d connections, want 1", len(p.conns))
	}
	for c := range p.conns {
		return c
	}
	return nil
}

func readerOf(c *clientConn) *ClientStream {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reader
}

// warm makes one call, so that the pool holds its connection, and waits
// until nobody reads it: the background reader lets go of an idle
// connection.
func warm(t *testing.T, p *Pool, addr string, g *gated) *clientConn {
	t.Helper()
	close(g.gate("warm"))
	st, err := p.Open(ctxTimeout(t, 10*time.Second), addr, Request{Path: "p", Payload: []byte("warm")})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := recvAll(st); err != nil || len(got) != 1 {
		t.Fatalf("warm-up call: %q, %v", got, err)
	}
	st.Close()
	c := onlyConn(t, p)
	testutil.Eventually(t, 10*time.Second, "the background reader to let go of the idle connection", func() bool {
		return readerOf(c) == nil
	})
	return c
}

// await returns what done delivers, failing the test if it takes 10 s.
func await(t *testing.T, done <-chan error, what string) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: Recv still blocked after 10 s", what)
		return nil
	}
}

// recvAsync runs Recv on another goroutine.
func recvAsync(st *ClientStream) <-chan error {
	done := make(chan error, 1)
	go func() {
		_, err := st.Recv()
		done <- err
	}()
	return done
}

// openReading opens a stream whose payload is payload on the pool's one
// connection c, calls Recv on another goroutine and waits until that
// caller holds the read role; done delivers what Recv returns. The
// stream is closed when the test ends.
func openReading(t *testing.T, ctx context.Context, p *Pool, c *clientConn, addr, payload string) (st *ClientStream, done <-chan error) {
	t.Helper()
	st, err := p.Open(ctx, addr, Request{Path: "p", Payload: []byte(payload)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	done = recvAsync(st)
	testutil.Eventually(t, 10*time.Second, "the caller to take the read role", func() bool { return readerOf(c) == st })
	return st, done
}

// recvOneAsync reads st to its end on another goroutine and delivers its
// message if it had exactly one; the channel closes either way.
func recvOneAsync(st *ClientStream) <-chan []byte {
	got := make(chan []byte, 1)
	go func() {
		m, _ := recvAll(st)
		if len(m) == 1 {
			got <- m[0]
		}
		close(got)
	}()
	return got
}

// A lone caller reads its own response, with no hand-off from the
// background reader, and leaves the idle connection to the next caller.
func TestACallerReadsItsOwnResponse(t *testing.T) {
	var g gated
	addr, _ := startServer(t, quietServer, g.serve)
	p := quietPool(t, nil)
	c := warm(t, p, addr, &g)

	st, err := p.Open(ctxTimeout(t, 10*time.Second), addr, Request{Path: "p", Payload: []byte("a")})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	got := recvOneAsync(st)
	testutil.Eventually(t, 10*time.Second, "the caller to take the read role", func() bool { return readerOf(c) == st })
	close(g.gate("a"))
	if b := <-got; string(b) != "a" {
		t.Fatalf("the caller read %q, want %q", b, "a")
	}
	if r := readerOf(c); r != nil {
		t.Fatalf("after the call the read role is held by %p, want nobody (the connection is idle)", r)
	}
}

// Ending the context of a caller blocked reading the connection for its
// stream returns at once, and the connection, read mid-way, still works:
// over TLS too, whose reads survive a timeout.
func TestCancelInterruptsACallersRead(t *testing.T) {
	pki := testutil.NewPKI(t, "loom")
	for _, tc := range []struct {
		name string
		srv  *tls.Config
		cli  *tls.Config
	}{
		{name: "tcp"},
		{name: "tls", srv: &tls.Config{Certificates: []tls.Certificate{pki.Server}}, cli: &tls.Config{RootCAs: pki.Pool}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var g gated
			scfg := quietServer
			scfg.TLS = tc.srv
			addr, _ := startServer(t, scfg, g.serve)
			p := quietPool(t, tc.cli)
			c := warm(t, p, addr, &g)

			ctx, cancel := context.WithCancel(ctxTimeout(t, 10*time.Second))
			st, done := openReading(t, ctx, p, c, addr, "never")
			cancel()
			var se *StreamError
			if err := await(t, done, "cancel"); !errors.As(err, &se) || se.Code != wire.CodeCancelled {
				t.Fatalf("Recv after cancel: %v; want a Cancelled *StreamError", err)
			}
			st.Close()

			close(g.gate("after"))
			st2, err := p.Open(ctxTimeout(t, 10*time.Second), addr, Request{Path: "p", Payload: []byte("after")})
			if err != nil {
				t.Fatal(err)
			}
			defer st2.Close()
			if got, err := recvAll(st2); err != nil || len(got) != 1 || string(got[0]) != "after" {
				t.Fatalf("a call after the interrupted read: %q, %v", got, err)
			}
			if c2 := onlyConn(t, p); c2 != c {
				t.Fatal("the interrupted connection was replaced; it should have been kept")
			}
		})
	}
}

// A caller that leaves with its response hands the reading to the
// background reader while other streams are open: their responses still
// come.
func TestTheReadingOutlivesTheCallerThatHeldIt(t *testing.T) {
	var g gated
	addr, _ := startServer(t, quietServer, g.serve)
	p := quietPool(t, nil)
	c := warm(t, p, addr, &g)
	ctx := ctxTimeout(t, 10*time.Second)

	_, doneA := openReading(t, ctx, p, c, addr, "a")
	b, err := p.Open(ctx, addr, Request{Path: "p", Payload: []byte("b")})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	got := recvOneAsync(b)
	close(g.gate("a"))
	if err := await(t, doneA, "the first caller"); err != nil {
		t.Fatalf("the first caller's Recv: %v", err)
	}
	testutil.Eventually(t, 10*time.Second, "the background reader to take the role over", func() bool { return readerOf(c) == backgroundReader })
	close(g.gate("b"))
	if m := <-got; string(m) != "b" {
		t.Fatalf("the second caller got %q, want %q", m, "b")
	}
}

// A connection that dies while a caller reads it ends that caller's
// stream with ErrConnLost, and the pool lets the connection go.
func TestAConnectionLostUnderACallersRead(t *testing.T) {
	var g gated
	addr, srv := startServer(t, quietServer, g.serve)
	p := quietPool(t, nil)
	c := warm(t, p, addr, &g)

	_, done := openReading(t, ctxTimeout(t, 10*time.Second), p, c, addr, "never")
	srv.Close()
	if err := await(t, done, "connection lost"); !errors.Is(err, ErrConnLost) {
		t.Fatalf("Recv on a connection lost under it: %v; want ErrConnLost", err)
	}
	testutil.Eventually(t, 10*time.Second, "the pool to let the dead connection go", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.conns) == 0
	})
}

// A caller that gives up the read role on a closed connection hands it
// to readLoop and wakes it, though no stream is left: readLoop may have
// seen the close while the caller read, and then waits for the role to
// come back, which on an open connection a keepalive tick would do. A
// role given to nobody there left Pool.Close waiting for readLoop for
// ever. (A clientConn with no goroutines, so that nothing else moves the
// role.)
func TestARoleLeftOnAClosedConnectionGoesBackToReadLoop(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	c := &clientConn{
		conn:        newConn(a, wire.Preface{}, wire.DefaultMaxFrameSize, 0, 0, limits{}, quiet),
		streams:     map[uint32]*ClientStream{},
		callerReads: true,
		bgWake:      make(chan struct{}, 1),
	}
	caller := &ClientStream{c: c}
	if !c.takeRead(caller) {
		t.Fatal("the caller could not take the role of a connection nobody reads")
	}
	c.shutdown(errors.New("closed by the test"))
	c.leaveRead()
	if r := readerOf(c); r != backgroundReader {
		t.Errorf("the role went to %p, want readLoop's", r)
	}
	select {
	case <-c.bgWake:
	default:
		t.Error("readLoop was not woken to take the role")
	}
}
