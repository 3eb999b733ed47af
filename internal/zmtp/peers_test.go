package zmtp

import (
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/loomrt/loom/internal/testutil"
)

// memInUse is the live heap and the goroutine stacks after two GCs.
func memInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse + m.StackInuse
}

// quietPeers connects n peers to a PUB socket that each do what quiet
// does (nothing, or the handshake then nothing) and returns what one
// costs the process, both ends of its connection included, and the
// connections.
func quietPeers(t *testing.T, s *Socket, addr net.Addr, n int, handshake bool) (perPeer int64, conns []net.Conn) {
	t.Helper()
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	before := memInUse()
	hello := append(greeting[:], AppendReady(nil, SUB)...)
	for range n {
		c, err := net.Dial("tcp", addr.String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		// The socket's greeting and READY: it has accepted the peer.
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, make([]byte, len(hello))); err != nil {
			t.Fatalf("peer %d: no greeting from the socket: %v", len(conns), err)
		}
		if handshake {
			if _, err := c.Write(hello); err != nil {
				t.Fatal(err)
			}
		}
	}
	if handshake {
		testutil.Eventually(t, 10*time.Second, "every peer to be connected", func() bool { return len(s.Peers()) == n })
	}
	return (int64(memInUse()) - int64(before)) / int64(n), conns
}

// maxQuietPeer is what a quiet peer may cost (about 5 KiB, 10 KiB with
// the race detector).
const maxQuietPeer = 24 << 10

// TestAQuietPeerCostsLittle measures what a peer that connects and
// says nothing, or finishes the handshake and then says nothing, costs a
// listening socket.
func TestAQuietPeerCostsLittle(t *testing.T) {
	const n = 200
	for _, c := range []struct {
		name      string
		handshake bool
	}{{"silent", false}, {"after the handshake", true}} {
		t.Run(c.name, func(t *testing.T) {
			s := NewSocket(Options{Type: PUB, HandshakeTimeout: time.Minute})
			defer s.Close()
			addr, err := s.Listen("tcp://127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			per, _ := quietPeers(t, s, addr, n, c.handshake)
			t.Logf("a quiet peer (%s) costs %d bytes (heap and stacks, both ends)", c.name, per)
			// A 64 KiB read buffer from the start cost 65 to 70 KiB.
			if per > maxQuietPeer {
				t.Errorf("a quiet peer (%s) costs %d bytes, want at most %d", c.name, per, maxQuietPeer)
			}
		})
	}
}
