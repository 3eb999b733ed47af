package mux

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/internal/wire"
)

// item is message i of a stream: its sequence number, then a body that
// depends on it, so that a message moved, cut or overwritten is noticed.
func item(i uint64, size int) []byte {
	b := make([]byte, size)
	binary.BigEndian.PutUint64(b, i)
	for j := 8; j < size; j++ {
		b[j] = byte(i) + byte(j)
	}
	return b
}

// A caller that reads nothing while the server fills the window makes
// the stream's buffer grow past the pool every stream starts from: it
// then takes a buffer sized for the window, and every message comes out
// whole and in order, stream after stream (the later ones on pooled
// buffers).
func TestStreamBufferGrownPastThePoolKeepsEveryMessage(t *testing.T) {
	const window, size, n = 256 << 10, 1000, 2000
	addr, _ := startServer(t, ServerConfig{}, func(s *ServerStream) error {
		for i := range uint64(n) {
			if err := s.Send(item(i, size)); err != nil {
				return err
			}
		}
		return nil
	})
	p := newPool(t, ClientConfig{InitialWindow: window})
	for round := range 3 {
		st, err := p.Open(ctxTimeout(t, 20*time.Second), addr, Request{Path: "s"})
		if err != nil {
			t.Fatal(err)
		}
		// Nothing is read until the buffer holds more than the small
		// pool's largest buffer.
		testutil.Eventually(t, 10*time.Second, "the unread messages to outgrow the small buffers", func() bool {
			st.mu.Lock()
			defer st.mu.Unlock()
			return st.in != nil && len(st.in.b) > maxPooledRecvBuf
		})
		st.mu.Lock()
		grown := cap(st.in.b)
		st.mu.Unlock()
		if grown <= maxPooledRecvBuf {
			t.Errorf("round %d: the grown buffer holds %d bytes, want one from the large pool (above %d)", round, grown, maxPooledRecvBuf)
		}
		for i := range uint64(n) {
			b, err := st.Recv()
			if err != nil {
				t.Fatalf("round %d, message %d: %v", round, i, err)
			}
			if want := item(i, size); !bytes.Equal(b, want) {
				t.Fatalf("round %d, message %d: got % x..., want % x...", round, i, b[:16], want[:16])
			}
		}
		if _, err := st.Recv(); err != io.EOF {
			t.Fatalf("round %d: after the last message: %v, want io.EOF", round, err)
		}
		st.Close()
	}
}

// SendPrefixed sends its two parts as one message, and the client's
// frame limit applies to the two together.
func TestSendPrefixedSendsOneMessage(t *testing.T) {
	const maxFrame = wire.MinMaxFrameSize
	tooLarge := make(chan error, 1)
	addr, _ := startServer(t, ServerConfig{}, func(s *ServerStream) error {
		if err := s.SendPrefixed([]byte("head:"), []byte("body")); err != nil {
			return err
		}
		if err := s.SendPrefixed(nil, []byte("bare")); err != nil {
			return err
		}
		half := make([]byte, maxFrame/2+1)
		tooLarge <- s.SendPrefixed(half, half)
		return s.SendPrefixed([]byte("last"), nil)
	})
	p := newPool(t, ClientConfig{MaxFrameSize: maxFrame})
	st, err := p.Open(ctxTimeout(t, 10*time.Second), addr, Request{Path: "p"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	msgs, err := recvAll(st)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 3 || string(msgs[0]) != "head:body" || string(msgs[1]) != "bare" || string(msgs[2]) != "last" {
		t.Fatalf("got %q, want [head:body bare last]", msgs)
	}
	if err := <-tooLarge; !errors.Is(err, ErrTooLarge) {
		t.Fatalf("two halves above the client's max frame together: %v, want ErrTooLarge", err)
	}
}

// fakeServer accepts one connection, exchanges prefaces, waits for an
// OPEN and writes script in one write, then reads until the client
// closes.
func fakeServer(t *testing.T, script func(stream uint32) []byte) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	conns := make(chan net.Conn, 1)
	wg.Go(func() {
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		conns <- nc
		if _, err := wire.ReadPreface(nc); err != nil {
			return
		}
		nc.Write(wire.AppendPreface(nil, wire.Preface{Version: wire.Version, MaxFrameSize: wire.DefaultMaxFrameSize}))
		rd := wire.NewReader(nc, wire.DefaultMaxFrameSize)
		for {
			f, err := rd.ReadFrame()
			if err != nil {
				return
			}
			if f.Type == wire.TypeOpen {
				nc.Write(script(f.Stream))
			}
		}
	})
	t.Cleanup(func() {
		ln.Close()
		select {
		case nc := <-conns:
			nc.Close()
		default:
		}
		wg.Wait()
	})
	return ln.Addr().String()
}

// The client counts credit over a run of DATA frames read at once as it
// does frame by frame: a server may overdraw the window by one frame,
// and a frame sent with no credit left is a protocol error.
func TestClientHoldsTheServerToItsCreditWithinARun(t *testing.T) {
	const window, size = 8 << 10, 1000
	frames := func(stream uint32, n int, end bool) []byte {
		var w wire.Writer
		for i := range n {
			w.Data(stream, item(uint64(i), size))
		}
		if end {
			w.End(stream, wire.CodeOK, "")
		}
		return w.Bytes()
	}
	// Credit is positive before each of the first legal frames:
	// (legal-1) * (size+header) < window <= legal * (size+header).
	legal := window/(size+wire.HeaderSize) + 1
	t.Run("overdraw by one frame", func(t *testing.T) {
		addr := fakeServer(t, func(id uint32) []byte { return frames(id, legal, true) })
		p := newPool(t, ClientConfig{InitialWindow: window})
		st, err := p.Open(ctxTimeout(t, 10*time.Second), addr, Request{Path: "x"})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		msgs, err := recvAll(st)
		if err != nil || len(msgs) != legal {
			t.Fatalf("got %d messages, %v; want %d and the end", len(msgs), err, legal)
		}
		for i, m := range msgs {
			if !bytes.Equal(m, item(uint64(i), size)) {
				t.Fatalf("message %d corrupted", i)
			}
		}
	})
	t.Run("a frame beyond it", func(t *testing.T) {
		addr := fakeServer(t, func(id uint32) []byte { return frames(id, legal+1, true) })
		p := newPool(t, ClientConfig{InitialWindow: window})
		st, err := p.Open(ctxTimeout(t, 10*time.Second), addr, Request{Path: "x"})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		_, err = recvAll(st)
		var se *StreamError
		if !errors.As(err, &se) || se.Code != wire.CodeReset || !errors.Is(err, wire.ErrProtocol) {
			t.Fatalf("got %v, want a Reset wrapping wire.ErrProtocol", err)
		}
	})
}

// A stream's parent context (ServerConfig.StreamContext) reaches the
// handler through its context, and leaves the stream open: Send works
// after the parent is cancelled, and the handler's return ends the stream
// as usual. A killed stream's Send fails
// (TestSendFailsOnceTheStreamIsKilled).
func TestAParentsCancellationLeavesTheStreamToItsHandler(t *testing.T) {
	parent, cancelParent := context.WithCancelCause(context.Background())
	defer cancelParent(nil)
	shutdown := errors.New("endpoint shutting down")
	sent := make(chan error, 1)
	addr, _ := startServer(t, ServerConfig{StreamContext: func(string) context.Context { return parent }}, func(s *ServerStream) error {
		if err := s.Send([]byte("before")); err != nil {
			return err
		}
		cancelParent(shutdown)
		if err := context.Cause(s.Context()); !errors.Is(err, shutdown) {
			return fmt.Errorf("the stream's context after its parent's cancellation: cause %v, want %v", err, shutdown)
		}
		err := s.Send([]byte("after"))
		sent <- err
		return err
	})
	msgs, err := recvAll(openOn(t, addr))
	if err != nil {
		t.Fatalf("the stream ended with %v, want its handler's clean end", err)
	}
	if err := <-sent; err != nil {
		t.Fatalf("Send after the parent's cancellation: %v, want nil", err)
	}
	if len(msgs) != 2 || string(msgs[0]) != "before" || string(msgs[1]) != "after" {
		t.Fatalf("got %q, want [before after]", msgs)
	}
}

// Once the client kills a stream, Send fails with the cause its context
// has, and nothing more reaches the client.
func TestSendFailsOnceTheStreamIsKilled(t *testing.T) {
	sent := make(chan error, 1)
	addr, _ := startServer(t, ServerConfig{}, func(s *ServerStream) error {
		if err := s.Send([]byte("first")); err != nil {
			return err
		}
		<-s.Context().Done()
		err := s.Send([]byte("after the kill"))
		if err != nil && err != context.Cause(s.Context()) {
			err = fmt.Errorf("Send failed with %v, not the context's cause %v", err, context.Cause(s.Context()))
		} else if err == nil {
			err = errors.New("Send after the kill succeeded")
		} else {
			err = nil
		}
		sent <- err
		return nil
	})
	st := openOn(t, addr)
	if m, err := st.Recv(); err != nil || string(m) != "first" {
		t.Fatalf("first message: %q, %v", m, err)
	}
	st.Cancel()
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if m, err := st.Recv(); err == nil {
		t.Fatalf("after Cancel, Recv returned %q, want the stream's end", m)
	}
}
