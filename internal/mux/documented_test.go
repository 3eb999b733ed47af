package mux

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/loomrt/loom/internal/plane"
	"github.com/loomrt/loom/internal/wire"
)

// TestDocumentedLimits holds the Go implementation's figures that
// docs/protocol.md gives: the server reads a preface within 10 s, senders
// bound their unwritten buffer at 1 MiB, a half-closed connection lingers
// at most 5 s, a client announces a 256 KiB initial window and 4 MiB
// frames.
func TestDocumentedLimits(t *testing.T) {
	if handshakeTimeout != 10*time.Second || softPending != 1<<20 || lingerTimeout != 5*time.Second ||
		plane.DefaultInitialWindow != 256<<10 || wire.DefaultMaxFrameSize != 4<<20 {
		t.Errorf("preface %v, write buffer %d, linger %v, initial window %d, max frame %d; docs/protocol.md says 10s, 1 MiB, 5s, 256 KiB, 4 MiB",
			handshakeTimeout, softPending, lingerTimeout, plane.DefaultInitialWindow, wire.DefaultMaxFrameSize)
	}
}

// TestAPingIsAnsweredWithItsBytes holds docs/protocol.md's PING rule in
// both directions, on the wire: the receiver of a PING answers with a PONG
// on stream 0 carrying the PING's 8 bytes.
func TestAPingIsAnsweredWithItsBytes(t *testing.T) {
	ping := [8]byte{0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4}
	expectPong := func(t *testing.T, rd *wire.Reader) {
		t.Helper()
		for {
			f, err := rd.ReadFrame()
			if err != nil {
				t.Fatalf("waiting for the PONG: %v", err)
			}
			if f.Type != wire.TypePong {
				continue
			}
			if f.Stream != 0 || !bytes.Equal(f.Payload, ping[:]) {
				t.Fatalf("PONG on stream %d carrying % x, want stream 0 carrying % x", f.Stream, f.Payload, ping)
			}
			return
		}
	}

	t.Run("a server answers a client's PING", func(t *testing.T) {
		addr, _ := startServer(t, ServerConfig{}, echo)
		r := dialRaw(t, addr, true)
		var w wire.Writer
		w.Ping(ping)
		r.write(w.Bytes())
		expectPong(t, r.rd)
	})

	t.Run("a client answers a server's PING", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		served := make(chan error, 1)
		go func() {
			served <- func() error {
				nc, err := ln.Accept()
				if err != nil {
					return err
				}
				defer nc.Close()
				_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := wire.ReadPreface(nc); err != nil {
					return err
				}
				var w wire.Writer
				out := wire.AppendPreface(nil, wire.Preface{Version: wire.Version, MaxFrameSize: wire.DefaultMaxFrameSize})
				w.Ping(ping)
				if _, err := nc.Write(append(out, w.Bytes()...)); err != nil {
					return err
				}
				rd := wire.NewReader(nc, wire.DefaultMaxFrameSize)
				for {
					f, err := rd.ReadFrame()
					if err != nil {
						return fmt.Errorf("waiting for the PONG: %w", err)
					}
					if f.Type != wire.TypePong {
						continue
					}
					if f.Stream != 0 || !bytes.Equal(f.Payload, ping[:]) {
						return fmt.Errorf("PONG on stream %d carrying % x, want stream 0 carrying % x", f.Stream, f.Payload, ping)
					}
					w.Reset()
					w.End(1, wire.CodeOK, "")
					_, err = nc.Write(w.Bytes())
					return err
				}
			}()
		}()
		p := newPool(t, ClientConfig{})
		st, err := p.Open(ctxTimeout(t, 10*time.Second), ln.Addr().String(), Request{Path: "a/b/c"})
		if err != nil {
			t.Fatal(err)
		}
		if err := <-served; err != nil {
			t.Fatal(err)
		}
		if msgs, err := recvAll(st); err != nil || len(msgs) != 0 {
			t.Fatalf("the stream after the PONG: %q, %v", msgs, err)
		}
	})
}

// TestPrefaceRulesOfTheProtocolDoc holds docs/protocol.md's connection
// setup: a version 1 server announces an initial window of 0, closes a
// connection whose preface has a setting out of range, and a client that
// reads a preface of another version says which versions differ.
func TestPrefaceRulesOfTheProtocolDoc(t *testing.T) {
	addr, _ := startServer(t, ServerConfig{}, echo)
	t.Run("a server announces an initial window of 0", func(t *testing.T) {
		r := dialRaw(t, addr, false)
		r.write(wire.AppendPreface(nil, wire.Preface{Version: wire.Version, MaxFrameSize: wire.DefaultMaxFrameSize, InitialWindow: 1 << 20}))
		p, err := wire.ReadPreface(r.nc)
		if err != nil || p.InitialWindow != 0 || p.Version != wire.Version {
			t.Fatalf("server preface %+v, %v; want version 1 and window 0", p, err)
		}
	})
	t.Run("a client preface with a setting out of range is closed", func(t *testing.T) {
		for _, p := range []wire.Preface{
			{Version: wire.Version, MaxFrameSize: wire.MinMaxFrameSize - 1},
			{Version: wire.Version, MaxFrameSize: wire.DefaultMaxFrameSize, InitialWindow: wire.MaxWindow + 1},
		} {
			r := dialRaw(t, addr, false)
			r.write(wire.AppendPreface(nil, p))
			r.expectClosed()
		}
	})
	t.Run("a client told another version names both", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		served, closed := make(chan error, 1), make(chan error, 1)
		go func() {
			nc, err := ln.Accept()
			if err != nil {
				served <- err
				return
			}
			defer nc.Close()
			_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := wire.ReadPreface(nc); err != nil {
				served <- err
				return
			}
			_, err = nc.Write(wire.AppendPreface(nil, wire.Preface{Version: 2, MaxFrameSize: wire.DefaultMaxFrameSize}))
			served <- err
			_, err = io.Copy(io.Discard, nc) // until the client closes
			closed <- err
		}()
		p := newPool(t, ClientConfig{})
		st, err := p.Open(ctxTimeout(t, 10*time.Second), ln.Addr().String(), Request{Path: "a/b/c"})
		if err == nil {
			_, err = recvAll(st)
		}
		if err == nil || !strings.Contains(err.Error(), "peer speaks protocol version 2, this side speaks version 1") {
			t.Fatalf("err = %v, want one naming both versions", err)
		}
		if err := <-served; err != nil {
			t.Fatal(err)
		}
		if err := <-closed; err != nil {
			t.Fatalf("the client did not close the connection: %v", err)
		}
	})
}
