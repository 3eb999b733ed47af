package zmtp

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
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
// connections. It waits for the goroutines that end once a peer is
// connected (the one that sends the socket's greeting) to end.
func quietPeers(t *testing.T, s *Socket, addr net.Addr, n int, handshake bool) (perPeer int64, conns []net.Conn) {
	t.Helper()
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	before := memInUse()
	goroutines := runtime.NumGoroutine()
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
	// A quiet peer holds one goroutine, the one that reads it: a writer
	// runs only while something waits to be written.
	testutil.EventuallyNoError(t, 10*time.Second, "one goroutine per quiet peer", func() error {
		if per := float64(runtime.NumGoroutine()-goroutines) / float64(n); per > 1 {
			return fmt.Errorf("%d quiet peers hold %.2f goroutines each, want 1", n, per)
		}
		return nil
	})
	return (int64(memInUse()) - int64(before)) / int64(n), conns
}

// maxQuietPeer is what a quiet peer may cost (4 to 7 KiB, 6 to 11 KiB
// with the race detector).
const maxQuietPeer = 24 << 10

// TestAQuietPeerCostsLittle measures what a peer that connects and
// says nothing, or finishes the handshake and then says nothing, costs a
// listening socket, in bytes and in goroutines.
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

// rawPeer is a peer that speaks the protocol by hand over a connection of
// its own.
type rawPeer struct {
	t *testing.T
	c net.Conn
}

// dialRaw connects to addr; with handshake it sends a SUB's greeting and
// READY and reads the socket's.
func dialRaw(t *testing.T, addr net.Addr, handshake bool) *rawPeer {
	t.Helper()
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	p := &rawPeer{t: t, c: c}
	if handshake {
		hello := append(greeting[:], AppendReady(nil, SUB)...)
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(hello); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, len(hello))); err != nil {
			t.Fatalf("no greeting and READY from the socket: %v", err)
		}
		_ = c.SetDeadline(time.Time{})
	}
	return p
}

// refused reports whether the socket closed the connection without a
// byte, as it does at accept beyond MaxPeers.
func (p *rawPeer) refused() bool {
	p.t.Helper()
	_ = p.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := p.c.Read(make([]byte, 1))
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		p.t.Fatalf("the socket neither served nor closed %s within 10s", p.c.LocalAddr())
	}
	return n == 0 && err != nil
}

// receives subscribes the peer to topic, waits for the socket to see it,
// sends a message and checks that the peer reads it whole.
func (p *rawPeer) receives(s *Socket, topic string) {
	p.t.Helper()
	if _, err := p.c.Write(AppendSubscription(nil, []byte(topic), true)); err != nil {
		p.t.Fatal(err)
	}
	testutil.Eventually(p.t, 10*time.Second, "the subscription to "+topic, func() bool { return s.Subscribers([]byte(topic)) == 1 })
	want := AppendMessage(nil, []byte(topic), []byte("hello"))
	if q, _ := s.Send([]byte(topic), want); q != 1 {
		p.t.Fatalf("a message to %s queued for %d peers, want 1", topic, q)
	}
	got := make([]byte, len(want))
	_ = p.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(p.c, got); err != nil || string(got) != string(want) {
		p.t.Fatalf("peer %s read %q, %v; want %q", p.c.LocalAddr(), got, err, want)
	}
}

// A socket holds at most MaxPeers accepted connections, those in the
// handshake included: one more is closed at once and counted, the peers
// it holds go on working, and a peer that leaves frees its place.
func TestMaxPeersRefusesTheExtraAndFreesThePlaceOfOneGone(t *testing.T) {
	const limit, extra = 6, 4
	s := NewSocket(Options{Type: PUB, MaxPeers: limit, HandshakeTimeout: time.Minute})
	defer s.Close()
	addr, err := s.Listen("tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held []*rawPeer
	for i := range limit {
		held = append(held, dialRaw(t, addr, i%2 == 0)) // half stay in the handshake
	}
	// Connections are accepted in order: once the last one is served,
	// every one before it is held.
	testutil.Eventually(t, 10*time.Second, "the peers to be held", func() bool {
		return len(s.Peers()) == limit/2 && s.accepted.Load() == limit
	})
	for i := range extra {
		if p := dialRaw(t, addr, false); !p.refused() {
			t.Fatalf("connection %d beyond MaxPeers %d was not closed", i+1, limit)
		}
	}
	if got := s.Refused(); got != extra {
		t.Fatalf("Refused() = %d, want %d", got, extra)
	}
	for i, p := range held {
		if i%2 == 0 {
			p.receives(s, fmt.Sprintf("t%d", i))
		}
	}
	// One leaves: a new peer takes its place, and the next is refused.
	held[0].c.Close()
	testutil.Eventually(t, 10*time.Second, "the place of the peer gone to be free", func() bool { return s.accepted.Load() == limit-1 })
	dialRaw(t, addr, true).receives(s, "free.1")
	if p := dialRaw(t, addr, false); !p.refused() {
		t.Fatal("a connection beyond MaxPeers after a place was taken again was not closed")
	}
	// A peer in the handshake that gives up frees its place too.
	held[1].c.Close()
	testutil.Eventually(t, 10*time.Second, "the place of the peer gone in the handshake", func() bool { return s.accepted.Load() == limit-1 })
	dialRaw(t, addr, true).receives(s, "free.2")
	if got := s.Refused(); got != extra+1 {
		t.Fatalf("Refused() = %d, want %d", got, extra+1)
	}
}

func TestMaxPeersDefaultsAndNoLimit(t *testing.T) {
	if got := NewSocket(Options{Type: PUB}).opts.MaxPeers; got != DefaultMaxPeers {
		t.Errorf("MaxPeers unset is %d, want DefaultMaxPeers %d", got, DefaultMaxPeers)
	}
	s := NewSocket(Options{Type: PUB, MaxPeers: -1})
	defer s.Close()
	addr, err := s.Listen("tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		dialRaw(t, addr, true)
	}
	testutil.Eventually(t, 10*time.Second, "three peers", func() bool { return len(s.Peers()) == 3 })
	if s.Refused() != 0 {
		t.Fatalf("a socket without a limit refused %d peers", s.Refused())
	}
}

// A flood of refused connections logs a line a second at most, naming
// the limit and the setting the caller says it came from (a broker's
// limit is not events.zmq.max_peers, a publisher's).
func TestRefusalsAreLoggedAtMostOnceASecond(t *testing.T) {
	for _, tc := range []struct{ setting, want string }{
		{"events.zmq.max_peers", "(events.zmq.max_peers)"},
		{"--zmq-broker-max-peers", "(--zmq-broker-max-peers)"},
		{"", "(Options.MaxPeers)"},
	} {
		t.Run("set by "+tc.want, func(t *testing.T) {
			var logs testutil.SyncBuffer
			s := NewSocket(Options{Type: PUB, MaxPeers: 1, MaxPeersSetting: tc.setting, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			defer s.Close()
			addr, err := s.Listen("tcp://127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			dialRaw(t, addr, true)
			testutil.Eventually(t, 10*time.Second, "the first peer", func() bool { return len(s.Peers()) == 1 })
			start := time.Now()
			const n = 50
			for range n {
				if !dialRaw(t, addr, false).refused() {
					t.Fatal("a connection beyond MaxPeers 1 was not closed")
				}
			}
			elapsed := time.Since(start)
			lines := strings.Count(logs.String(), "peer refused")
			if lines < 1 || lines > 1+int(elapsed/time.Second) {
				t.Fatalf("%d refusals in %v logged %d lines:\n%s", n, elapsed, lines, logs.String())
			}
			if strings.Count(logs.String(), tc.want) != lines || !strings.Contains(logs.String(), "max=1") {
				t.Fatalf("the refusal does not name the limit and the setting %s:\n%s", tc.want, logs.String())
			}
			if s.Refused() != n {
				t.Fatalf("Refused() = %d, want %d", s.Refused(), n)
			}
		})
	}
}
