package mux

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/loomrt/loom/internal/wire"
)

// TestFramesThatCrossAnEndAreIgnoredAndBadCreditIsAProtocolError holds
// docs/protocol.md's rules for the frames a server must tolerate or
// refuse, sent by hand as another implementation would: a CANCEL or
// CREDIT for a stream that already ended (it crossed the END) and an
// unsolicited PONG are ignored and the connection serves on; CREDIT on
// stream 0, or credit that takes a stream above 2^31-1, is a protocol
// error (GOAWAY Protocol, then close); a GOAWAY from a client closes the
// connection.
func TestFramesThatCrossAnEndAreIgnoredAndBadCreditIsAProtocolError(t *testing.T) {
	addr, _ := startServer(t, ServerConfig{}, func(s *ServerStream) error {
		if s.Path() == "hold" {
			select {
			case <-s.Stopped():
			case <-s.Context().Done():
			}
			return nil
		}
		return s.Send([]byte("hi"))
	})
	protocolError := func(r *rawConn, want string) {
		t.Helper()
		f := r.expect(wire.TypeGoAway)
		_, code, reason, err := wire.ParseGoAway(f.Payload)
		if err != nil || code != wire.CodeProtocol || !strings.Contains(string(reason), want) {
			t.Fatalf("GOAWAY %v %q %v; want Protocol naming %q", code, reason, err, want)
		}
		r.expectClosed()
	}

	t.Run("frames for an ended stream and an unsolicited PONG are ignored", func(t *testing.T) {
		r := dialRaw(t, addr, true)
		r.open(1, "once")
		if f := r.expect(wire.TypeEnd); f.Stream != 1 {
			t.Fatalf("END on stream %d, want 1", f.Stream)
		}
		var w wire.Writer
		w.Cancel(1, wire.FlagStop)
		w.Cancel(1, wire.FlagKill)
		w.Credit(1, 1<<20)
		w.Credit(99, 1<<20) // a stream never opened
		w.Pong([8]byte{1, 2, 3})
		r.write(w.Bytes())
		r.open(3, "once")
		f := r.expect(wire.TypeData)
		if f.Stream != 3 || string(f.Payload) != "hi" {
			t.Fatalf("DATA on stream %d %q after the ignored frames, want stream 3 \"hi\"", f.Stream, f.Payload)
		}
		if f := r.expect(wire.TypeEnd); f.Stream != 3 {
			t.Fatalf("END on stream %d, want 3", f.Stream)
		}
	})
	t.Run("CREDIT on stream 0 is a protocol error", func(t *testing.T) {
		r := dialRaw(t, addr, true)
		b := header(wire.TypeCredit, 0, 0, 4)
		r.write(binary.BigEndian.AppendUint32(b, 1))
		protocolError(r, "CREDIT frame on stream 0")
	})
	t.Run("credit above 2^31-1 on a stream is a protocol error", func(t *testing.T) {
		r := dialRaw(t, addr, true) // its initial window is 1 MiB
		r.open(1, "hold")
		var w wire.Writer
		w.Credit(1, wire.MaxWindow)
		r.write(w.Bytes())
		protocolError(r, "above the maximum window 2147483647")
	})
	t.Run("a GOAWAY from a client closes the connection", func(t *testing.T) {
		r := dialRaw(t, addr, true)
		var w wire.Writer
		w.GoAway(0, wire.CodeProtocol, "client gives up")
		r.write(w.Bytes())
		r.expectClosed()
	})
}
