package mux

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/internal/wire"
)

// rawConn is a hand-driven client that speaks (or breaks) the wire
// protocol directly.
type rawConn struct {
	t  *testing.T
	nc net.Conn
	rd *wire.Reader
}

func dialRaw(t *testing.T, addr string, preface bool) *rawConn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	r := &rawConn{t: t, nc: nc, rd: wire.NewReader(nc, wire.DefaultMaxFrameSize)}
	if preface {
		r.write(wire.AppendPreface(nil, wire.Preface{Version: wire.Version, MaxFrameSize: wire.DefaultMaxFrameSize, InitialWindow: 1 << 20}))
		if _, err := wire.ReadPreface(nc); err != nil {
			t.Fatalf("server preface: %v", err)
		}
	}
	return r
}

func (r *rawConn) write(b []byte) {
	r.t.Helper()
	if _, err := r.nc.Write(b); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

func (r *rawConn) open(id uint32, path string) {
	r.t.Helper()
	var w wire.Writer
	if err := w.Open(id, &wire.OpenHeader{Path: path}, nil); err != nil {
		r.t.Fatal(err)
	}
	r.write(w.Bytes())
}

// expect reads frames, skipping PINGs, until one of type t arrives.
func (r *rawConn) expect(t wire.Type) wire.Frame {
	r.t.Helper()
	for {
		f, err := r.rd.ReadFrame()
		if err != nil {
			r.t.Fatalf("waiting for %v: %v", t, err)
		}
		if f.Type == t {
			return f
		}
	}
}

// expectClosed reads until the server closes the connection.
func (r *rawConn) expectClosed() {
	r.t.Helper()
	buf := make([]byte, 4096)
	for {
		if _, err := r.nc.Read(buf); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "reset") {
				return
			}
			r.t.Fatalf("waiting for the server to close: %v", err)
		}
	}
}

func header(t wire.Type, f wire.Flags, stream, n uint32) []byte {
	b := []byte{byte(t), byte(f)}
	b = binary.BigEndian.AppendUint32(b, stream)
	return binary.BigEndian.AppendUint32(b, n)
}

func TestHostilePeersDoNotHurtOtherConnections(t *testing.T) {
	addr, _ := startServer(t, ServerConfig{MaxFrameSize: 64 << 10}, func(s *ServerStream) error {
		for {
			select {
			case <-s.Stopped():
				return nil
			case <-s.Context().Done():
				return s.Context().Err()
			case <-time.After(time.Millisecond):
				if err := s.Send([]byte("alive")); err != nil {
					return err
				}
			}
		}
	})
	p := newPool(t, ClientConfig{})
	good, err := p.Open(ctxTimeout(t, 20*time.Second), addr, Request{Path: "long"})
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	var received atomic.Int64
	recvDone := make(chan error, 1)
	go func() {
		for {
			if _, err := good.Recv(); err != nil {
				recvDone <- err
				return
			}
			received.Add(1)
		}
	}()

	goAwayMessage := func(r *rawConn) string {
		f := r.expect(wire.TypeGoAway)
		_, code, reason, err := wire.ParseGoAway(f.Payload)
		if err != nil || code != wire.CodeProtocol {
			t.Fatalf("GOAWAY code %v, %v; want Protocol", code, err)
		}
		return string(reason)
	}
	tests := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"garbage instead of a preface is dropped", func(t *testing.T) {
			r := dialRaw(t, addr, false)
			r.write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
			r.expectClosed()
		}},
		{"a peer of another version is told which version the server speaks", func(t *testing.T) {
			r := dialRaw(t, addr, false)
			r.write(wire.AppendPreface(nil, wire.Preface{Version: 2, MaxFrameSize: 1 << 20, InitialWindow: 1}))
			if _, err := wire.ReadPreface(r.nc); err != nil {
				t.Fatal(err)
			}
			if msg := goAwayMessage(r); !strings.Contains(msg, "unsupported protocol version 2: this server speaks version 1") {
				t.Fatalf("GOAWAY reason %q", msg)
			}
			r.expectClosed()
		}},
		{"a truncated frame followed by a close is dropped", func(t *testing.T) {
			r := dialRaw(t, addr, true)
			r.write(header(wire.TypeOpen, 0, 1, 100))
			r.write([]byte("short"))
			r.nc.(*net.TCPConn).CloseWrite()
			r.expectClosed()
		}},
		{"a 4 GiB frame length is a protocol error, not an allocation", func(t *testing.T) {
			r := dialRaw(t, addr, true)
			r.write(header(wire.TypeData, 0, 1, 0xFFFFFFFF))
			if msg := goAwayMessage(r); !strings.Contains(msg, "4294967295-byte payload, above the maximum frame size 65536") {
				t.Fatalf("GOAWAY reason %q", msg)
			}
			r.expectClosed()
		}},
		{"an unknown frame type is a protocol error", func(t *testing.T) {
			r := dialRaw(t, addr, true)
			r.write(header(0x42, 0, 1, 0))
			if msg := goAwayMessage(r); !strings.Contains(msg, "unknown frame type 0x42") {
				t.Fatalf("GOAWAY reason %q", msg)
			}
			r.expectClosed()
		}},
		{"a DATA frame from a client is a protocol error", func(t *testing.T) {
			r := dialRaw(t, addr, true)
			r.write(append(header(wire.TypeData, 0, 1, 2), "hi"...))
			if msg := goAwayMessage(r); !strings.Contains(msg, "DATA frames are not sent by clients") {
				t.Fatalf("GOAWAY reason %q", msg)
			}
		}},
		{"stream ids that go backwards are a protocol error", func(t *testing.T) {
			r := dialRaw(t, addr, true)
			r.open(5, "long")
			r.expect(wire.TypeData)
			r.open(3, "long")
			if msg := goAwayMessage(r); !strings.Contains(msg, "OPEN on stream 3, not above the last opened stream 5") {
				t.Fatalf("GOAWAY reason %q", msg)
			}
		}},
		{"a malformed OPEN ends only that stream, with BadRequest", func(t *testing.T) {
			r := dialRaw(t, addr, true)
			r.write(append(header(wire.TypeOpen, 0, 1, 3), 1, 2, 3))
			f := r.expect(wire.TypeEnd)
			code, msg, _ := wire.ParseEnd(f.Payload)
			if f.Stream != 1 || code != wire.CodeBadRequest || !strings.Contains(string(msg), "truncated in timeout") {
				t.Fatalf("END on %d: %v %q", f.Stream, code, msg)
			}
			r.open(3, "long")
			if f := r.expect(wire.TypeData); f.Stream != 3 {
				t.Fatalf("DATA on stream %d, want 3", f.Stream)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, tt.run)
	}

	before := received.Load()
	deadline := time.Now().Add(5 * time.Second)
	for received.Load() < before+10 {
		if time.Now().After(deadline) {
			t.Fatal("the good stream stopped receiving")
		}
		time.Sleep(time.Millisecond)
	}
	good.Stop()
	if err := <-recvDone; err != io.EOF {
		t.Fatalf("good stream ended with %v, want EOF", err)
	}
	st, err := p.Open(ctxTimeout(t, 5*time.Second), addr, Request{Path: "long"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Recv(); err != nil {
		t.Fatalf("a new stream after the attacks: %v", err)
	}
}

func TestStreamsOpenedAfterGoAwayAreRefusedWithDraining(t *testing.T) {
	release, started := make(chan struct{}), make(chan struct{})
	addr, srv := startServer(t, ServerConfig{}, func(s *ServerStream) error {
		close(started)
		<-release
		return nil
	})
	r := dialRaw(t, addr, true)
	r.open(1, "x")
	// Stream 1 runs before the drain begins: its handler has started.
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the handler of stream 1 never started")
	}
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(context.Background()) }()
	f := r.expect(wire.TypeGoAway)
	last, code, _, _ := wire.ParseGoAway(f.Payload)
	if last != 1 || code != wire.CodeDraining {
		t.Fatalf("GOAWAY last %d code %v, want 1 Draining", last, code)
	}
	r.open(3, "x")
	f = r.expect(wire.TypeEnd)
	if c, _, _ := wire.ParseEnd(f.Payload); f.Stream != 3 || c != wire.CodeDraining {
		t.Fatalf("END on %d with %v, want stream 3 Draining", f.Stream, c)
	}
	close(release)
	f = r.expect(wire.TypeEnd)
	if c, _, _ := wire.ParseEnd(f.Payload); f.Stream != 1 || c != wire.CodeOK {
		t.Fatalf("END on %d with %v, want stream 1 OK", f.Stream, c)
	}
	r.expectClosed() // the server half-closes once its streams are done
	r.nc.Close()
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// silentServer completes the preface on every connection and then reads
// forever without answering anything, like a peer that hung.
func silentServer(t *testing.T) (string, *atomic.Int32) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var accepted atomic.Int32
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			mu.Lock()
			conns = append(conns, nc)
			mu.Unlock()
			wg.Go(func() {
				if _, err := wire.ReadPreface(nc); err != nil {
					return
				}
				nc.Write(wire.AppendPreface(nil, wire.Preface{Version: wire.Version, MaxFrameSize: wire.DefaultMaxFrameSize}))
				io.Copy(io.Discard, nc)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String(), &accepted
}

func TestKeepaliveFailsStreamsOnAHungServerAndThePoolRedials(t *testing.T) {
	addr, accepted := silentServer(t)
	p := newPool(t, ClientConfig{KeepaliveInterval: 50 * time.Millisecond, KeepaliveTimeout: 100 * time.Millisecond})
	st, err := p.Open(context.Background(), addr, Request{Path: "x"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	start := time.Now()
	_, err = st.Recv()
	if !errors.Is(err, ErrConnLost) || !strings.Contains(err.Error(), "keepalive") {
		t.Fatalf("Recv: %v, want ErrConnLost from keepalive", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("detection took %v, want about 150ms", d)
	}
	st2, err := p.Open(context.Background(), addr, Request{Path: "x"})
	if err != nil {
		t.Fatal(err)
	}
	st2.Close()
	if n := accepted.Load(); n != 2 {
		t.Fatalf("server accepted %d connections, want 2 (the pool redials)", n)
	}
}

func TestKeepaliveKillsStreamsOfAHungClient(t *testing.T) {
	causes := make(chan error, 1)
	addr, _ := startServer(t, ServerConfig{KeepaliveInterval: 50 * time.Millisecond, KeepaliveTimeout: 100 * time.Millisecond}, func(s *ServerStream) error {
		<-s.Context().Done()
		causes <- context.Cause(s.Context())
		return nil
	})
	r := dialRaw(t, addr, true)
	r.open(1, "x") // then never read or write again
	select {
	case cause := <-causes:
		if !errors.Is(cause, ErrConnLost) || !strings.Contains(cause.Error(), "keepalive") {
			t.Fatalf("handler's cause: %v, want ErrConnLost from keepalive", cause)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the handler of a hung client was never cancelled")
	}
}

func TestKeepaliveKeepsAnIdleHealthyConnection(t *testing.T) {
	// The stream is silent for 5 keepalive intervals plus timeouts; the
	// timeout leaves a loaded machine time to schedule the PONG.
	addr, _ := startServer(t, ServerConfig{KeepaliveInterval: 20 * time.Millisecond, KeepaliveTimeout: 250 * time.Millisecond}, func(s *ServerStream) error {
		select {
		case <-time.After(1350 * time.Millisecond):
		case <-s.Context().Done():
			return s.Context().Err()
		}
		return s.Send([]byte("late"))
	})
	p := newPool(t, ClientConfig{KeepaliveInterval: 20 * time.Millisecond, KeepaliveTimeout: 250 * time.Millisecond})
	st, err := p.Open(ctxTimeout(t, 5*time.Second), addr, Request{Path: "x"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if msgs, err := recvAll(st); err != nil || len(msgs) != 1 {
		t.Fatalf("a stream silent for 1.35s with a 270ms keepalive: %q, %v", msgs, err)
	}
}

func TestTLS(t *testing.T) {
	pki := testutil.NewPKI(t, "loom")
	whoami := func(s *ServerStream) error {
		return s.Send([]byte("hello " + s.Path()))
	}
	call := func(p *Pool, addr string) error {
		st, err := p.Open(ctxTimeout(t, 5*time.Second), addr, Request{Path: "tls"})
		if err != nil {
			return err
		}
		defer st.Close()
		msgs, err := recvAll(st)
		if err == nil && (len(msgs) != 1 || string(msgs[0]) != "hello tls") {
			t.Fatalf("got %q", msgs)
		}
		return err
	}

	t.Run("a client that trusts the CA talks to a TLS server", func(t *testing.T) {
		addr, _ := startServer(t, ServerConfig{TLS: &tls.Config{Certificates: []tls.Certificate{pki.Server}}}, whoami)
		if err := call(newPool(t, ClientConfig{TLS: &tls.Config{RootCAs: pki.Pool}}), addr); err != nil {
			t.Fatal(err)
		}
		err := call(newPool(t, ClientConfig{TLS: &tls.Config{}}), addr)
		if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("a client that does not trust the CA: %v, want a certificate error", err)
		}
	})

	t.Run("mutual TLS admits only clients with a certificate", func(t *testing.T) {
		addr, _ := startServer(t, ServerConfig{TLS: &tls.Config{
			Certificates: []tls.Certificate{pki.Server},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    pki.Pool,
		}}, whoami)
		withCert := newPool(t, ClientConfig{TLS: &tls.Config{RootCAs: pki.Pool, Certificates: []tls.Certificate{pki.Client}}})
		if err := call(withCert, addr); err != nil {
			t.Fatal(err)
		}
		// TLS 1.3 reports a missing client certificate after the client's
		// handshake completes: the error comes from Open or from Recv.
		err := call(newPool(t, ClientConfig{TLS: &tls.Config{RootCAs: pki.Pool}}), addr)
		if !errors.Is(err, ErrUnreachable) && !errors.Is(err, ErrConnLost) {
			t.Fatalf("a client without a certificate: %v, want refused", err)
		}
	})
}
