//go:build linux

package mux

import (
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/internal/wire"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	a, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b = <-accepted
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func TestPeerBytesWaitingSeesUnreadBytes(t *testing.T) {
	a, b := tcpPair(t)
	if peerBytesWaiting(a) {
		t.Fatal("bytes waiting on a connection nothing was sent on")
	}
	if _, err := b.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the peer's bytes to be seen waiting", func() bool { return peerBytesWaiting(a) })
	buf := make([]byte, 4)
	if _, err := a.Read(buf); err != nil {
		t.Fatal(err)
	}
	if peerBytesWaiting(a) {
		t.Error("bytes still waiting after they were read")
	}
	// Through TLS, the socket under it is asked; a connection that is no
	// socket says no.
	if _, err := b.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the peer's bytes to be seen waiting again", func() bool { return peerBytesWaiting(a) })
	if !peerBytesWaiting(tls.Client(a, &tls.Config{})) {
		t.Error("a TLS connection over a socket with bytes waiting says none wait")
	}
	p, q := net.Pipe()
	defer p.Close()
	defer q.Close()
	if peerBytesWaiting(p) {
		t.Error("a pipe reported bytes waiting")
	}
}

// TestAPeerWhoseAnswerWaitsUnreadIsNotStalled plays a client whose
// reader has not run (the process short of CPU) while its server
// answered the PING: the answer waits in the kernel. The server is not
// frozen, so it must be neither reported stalled nor dropped by
// keepalive; with nothing waiting, it is.
func TestAPeerWhoseAnswerWaitsUnreadIsNotStalled(t *testing.T) {
	for _, answered := range []bool{true, false} {
		a, b := tcpPair(t)
		stalls := 0
		lim := limits{stall: 100 * time.Millisecond, busy: func() bool { return true }, onStall: func() { stalls++ }}
		c := newConn(a, wire.Preface{}, wire.DefaultMaxFrameSize, time.Second, time.Second, lim, quiet)
		var ka keepalive
		c.keepalive(&ka) // silent since ever: a PING goes into the batch
		if ka.pingSent.IsZero() {
			t.Fatal("no PING sent on a silent busy connection")
		}
		if answered {
			if _, err := b.Write([]byte{0}); err != nil {
				t.Fatal(err)
			}
			testutil.Eventually(t, 10*time.Second, "the answer to wait unread", func() bool { return peerBytesWaiting(a) })
		}
		// Long past the stall timeout and the keepalive timeout.
		ka.pingSent = time.Now().Add(-time.Hour)
		alive, _ := c.keepalive(&ka)
		if answered {
			if !alive || stalls != 0 || !ka.pingSent.IsZero() {
				t.Errorf("answer waiting unread: alive %v, %d stalls, PING outstanding %v; want alive, not stalled, the PING answered", alive, stalls, !ka.pingSent.IsZero())
			}
		} else {
			if alive || stalls != 1 || !errors.Is(c.err, ErrConnLost) {
				t.Errorf("no answer: alive %v, %d stalls, %v; want the peer stalled and the connection lost", alive, stalls, c.err)
			}
		}
		c.shutdown(errors.New("test over"))
	}
}
