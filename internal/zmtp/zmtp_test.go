package zmtp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"go.uber.org/goleak"

	"github.com/loomrt/loom/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestReaderReadsMessagesAndCommands(t *testing.T) {
	var wire []byte
	wire = AppendMessage(wire, []byte("topic"), bytes.Repeat([]byte{'x'}, 300))
	wire = AppendSubscription(wire, []byte("pre"), true)
	wire = AppendReady(wire, PUB)
	r := NewReader(bytes.NewReader(wire), 1024)
	parts, cmd, err := r.Next()
	if err != nil || cmd || len(parts) != 2 || string(parts[0]) != "topic" || len(parts[1]) != 300 {
		t.Fatalf("message: %q %v %v", parts, cmd, err)
	}
	parts, cmd, err = r.Next()
	if err != nil || cmd || len(parts) != 1 || string(parts[0]) != "\x01pre" {
		t.Fatalf("subscription: %q %v %v", parts, cmd, err)
	}
	parts, cmd, err = r.Next()
	if err != nil || !cmd {
		t.Fatalf("command: %v %v", cmd, err)
	}
	if typ, err := ParseReady(parts[0]); err != nil || typ != PUB {
		t.Fatalf("READY: %v %v", typ, err)
	}
	if _, _, err := r.Next(); err != io.EOF {
		t.Fatalf("at the end: %v", err)
	}
}

func TestReaderRefusesHostileFrames(t *testing.T) {
	for name, data := range map[string][]byte{
		"long frame claiming 2^63 bytes": {flagLong, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
		"message over the limit":         AppendMessage(nil, make([]byte, 2000)),
		"parts over the limit together":  AppendMessage(nil, make([]byte, 600), make([]byte, 600)),
		"reserved flag bits":             {0x80, 0},
		"command inside a message":       {flagMore, 1, 'a', flagCommand, 1, 'b'},
		"huge command":                   {flagCommand | flagLong, 0, 0, 0, 0, 0, 2, 0, 0},
		"too many frames":                bytes.Repeat([]byte{flagMore, 0}, MaxFrames+1),
	} {
		_, _, err := NewReader(bytes.NewReader(data), 1024).Next()
		if !errors.Is(err, ErrProtocol) && !errors.Is(err, ErrTooLarge) {
			t.Errorf("%s: %v, want ErrProtocol or ErrTooLarge", name, err)
		}
	}
	if _, _, err := NewReader(bytes.NewReader([]byte{flagMore, 1, 'a'}), 1024).Next(); err != io.ErrUnexpectedEOF {
		t.Errorf("cut message: %v, want io.ErrUnexpectedEOF", err)
	}
}

func FuzzReader(f *testing.F) {
	f.Add(AppendMessage(nil, []byte("a"), []byte("b")))
	f.Add(AppendReady(nil, SUB))
	f.Add([]byte{flagLong, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Add(append([]byte{flagCommand, 10, 4}, "PING\x00\x10ab"...))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewReader(bytes.NewReader(data), 4096)
		for range 100 {
			parts, cmd, err := r.Next()
			if err != nil {
				return
			}
			total := 0
			for _, p := range parts {
				total += len(p)
			}
			if total > 4096 && !cmd {
				t.Fatalf("message of %d bytes over the limit", total)
			}
			if cmd {
				if c, err := ParseCommand(parts[0]); err == nil && c.Name == "READY" {
					_, _ = ParseReady(parts[0])
				}
			}
		}
	})
}

// FuzzMessageRoundTrip: the parts of any message within the limits read
// back as they were written, whatever their sizes (short and long
// frames), however the bytes arrive, and a message over the limit is
// refused with ErrTooLarge.
func FuzzMessageRoundTrip(f *testing.F) {
	f.Add([]byte("topic"), []byte("payload"), uint16(300), uint8(3), uint16(1))
	f.Add([]byte{}, []byte{}, uint16(0), uint8(1), uint16(7))
	f.Add([]byte("t"), bytes.Repeat([]byte{1}, 256), uint16(4000), uint8(64), uint16(4096))
	f.Fuzz(func(t *testing.T, a, b []byte, long uint16, nparts uint8, chunk uint16) {
		const limit = 8 << 10
		parts := [][]byte{a, b, bytes.Repeat([]byte{'L'}, int(long%(limit/2)))}
		for len(parts) < int(nparts%MaxFrames)+1 {
			parts = append(parts, []byte{byte(len(parts))})
		}
		parts = parts[:int(nparts%MaxFrames)+1]
		total := 0
		for _, p := range parts {
			total += len(p)
		}
		in := AppendMessage(nil, parts...)
		if len(in) != MessageSize(parts...) {
			t.Fatalf("MessageSize %d, AppendMessage wrote %d bytes", MessageSize(parts...), len(in))
		}
		r := NewReader(iotest.OneByteReader(bytes.NewReader(in)), limit)
		if chunk%2 == 0 {
			r = NewReader(bytes.NewReader(in), limit)
		}
		got, cmd, err := r.Next()
		if total > limit {
			if !errors.Is(err, ErrTooLarge) {
				t.Fatalf("a message of %d bytes over the limit %d: %v", total, limit, err)
			}
			return
		}
		if err != nil || cmd || len(got) != len(parts) {
			t.Fatalf("read %d parts (command %v), %v; wrote %d", len(got), cmd, err, len(parts))
		}
		for i := range parts {
			if !bytes.Equal(got[i], parts[i]) {
				t.Fatalf("part %d: read %d bytes, wrote %d", i, len(got[i]), len(parts[i]))
			}
		}
		if _, _, err := r.Next(); err != io.EOF {
			t.Fatalf("after the message: %v, want io.EOF", err)
		}
	})
}

func FuzzHandshake(f *testing.F) {
	f.Add(append(greeting[:], AppendReady(nil, PUB)...))
	f.Add(append(greeting[:], AppendReady(nil, XSUB)...))
	f.Add(greeting[:10])
	f.Add(append(append(greeting[:], AppendReady(nil, PUB)...), AppendMessage(nil, []byte("topic"), []byte("frame"))...))
	// The parsing half of Handshake, on bytes in memory: no connection,
	// no goroutine, no deadline per input.
	f.Fuzz(func(t *testing.T, peer []byte) {
		typ, r, err := readHandshake(bytes.NewReader(peer), 1024)
		if err != nil {
			if r != nil || typ != "" {
				t.Fatalf("a failed handshake returned %q and a reader", typ)
			}
			return
		}
		if err := checkPeer(SUB, typ); err == nil && typ != PUB && typ != XPUB {
			t.Fatalf("a SUB accepted a %q peer", typ)
		}
		// What follows the handshake is read within the limit.
		for range 16 {
			parts, cmd, err := r.Next()
			if err != nil {
				return
			}
			total := 0
			for _, p := range parts {
				total += len(p)
			}
			if total > 1024 && !cmd {
				t.Fatalf("message of %d bytes over the limit after the handshake", total)
			}
		}
	})
}

func TestHandshakeRefusesIncompatibleAndForeignPeers(t *testing.T) {
	for name, c := range map[string]struct {
		peer []byte
		want string
	}{
		"two SUBs":        {append(greeting[:], AppendReady(nil, SUB)...), "cannot talk"},
		"HTTP":            {[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n" + string(make([]byte, 64))), "signature"},
		"ZMTP 2":          {func() []byte { g := greeting; g[10] = 2; return g[:] }(), "ZMTP 2"},
		"CURVE":           {func() []byte { g := greeting; copy(g[12:32], "CURVE\x00\x00\x00"); return g[:] }(), "CURVE"},
		"message first":   {append(greeting[:], AppendMessage(nil, []byte("x"))...), "before READY"},
		"no Socket-Type":  {append(greeting[:], appendFrame(nil, flagCommand, []byte("\x05READY"))...), "Socket-Type"},
		"ERROR":           {append(greeting[:], appendFrame(nil, flagCommand, []byte("\x05ERROR\x03bad"))...), "bad"},
		"truncated READY": {append(greeting[:], appendFrame(nil, flagCommand, []byte("\x05READY\x0bSocket-Type\x00\x00\x00\x09PUB"))...), "claims"},
	} {
		t.Run(name, func(t *testing.T) {
			a, b := net.Pipe()
			go func() {
				_, _ = b.Write(c.peer)
				_, _ = io.Copy(io.Discard, b)
			}()
			_, _, err := Handshake(a, SUB, 1024, time.Second)
			a.Close()
			b.Close()
			if err == nil || !bytes.Contains([]byte(err.Error()), []byte(c.want)) {
				t.Fatalf("got %v, want an error mentioning %q", err, c.want)
			}
		})
	}
}

// pubSub is a PUB socket listening and a SUB socket dialing it.
func pubSub(t *testing.T, pubOpts Options, onMsg func(parts [][]byte)) (*Socket, *Socket) {
	t.Helper()
	pubOpts.Type = PUB
	pub := NewSocket(pubOpts)
	addr, err := pub.Listen("tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sub := NewSocket(Options{Type: SUB, OnMessage: func(_ *Peer, parts [][]byte) {
		cp := make([][]byte, len(parts))
		for i, p := range parts {
			cp[i] = bytes.Clone(p)
		}
		onMsg(cp)
	}})
	t.Cleanup(func() { sub.Close(); pub.Close() })
	if _, err := sub.Dial("tcp://" + addr.String()); err != nil {
		t.Fatal(err)
	}
	return pub, sub
}

func TestPubSubDeliversByPrefixInOrder(t *testing.T) {
	var mu sync.Mutex
	var got []string
	pub, sub := pubSub(t, Options{}, func(parts [][]byte) {
		mu.Lock()
		got = append(got, string(parts[0])+"="+string(parts[1]))
		mu.Unlock()
	})
	sub.Subscribe([]byte("a."))
	testutil.Eventually(t, 10*time.Second, "the subscription", func() bool { return pub.Subscribers([]byte("a.x")) == 1 })
	for i := range 1000 {
		for _, topic := range []string{"a.x", "b.x"} {
			pub.Send([]byte(topic), AppendMessage(nil, []byte(topic), []byte(fmt.Sprint(i))))
		}
	}
	testutil.Eventually(t, 10*time.Second, "1000 messages", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) >= 1000 })
	mu.Lock()
	defer mu.Unlock()
	for i, g := range got {
		if g != fmt.Sprintf("a.x=%d", i) {
			t.Fatalf("message %d is %q", i, g)
		}
	}
	sub.Unsubscribe([]byte("a."))
	testutil.Eventually(t, 10*time.Second, "the cancellation", func() bool { return pub.Subscribers([]byte("a.x")) == 0 })
}

func TestSlowSubscriberQueueIsBoundedAndCounted(t *testing.T) {
	release := make(chan struct{})
	var n int
	pub, sub := pubSub(t, Options{SendQueue: 16}, func([][]byte) {
		<-release
		n++
	})
	sub.Subscribe(nil)
	testutil.Eventually(t, 10*time.Second, "the subscription", func() bool { return pub.Subscribers([]byte("t")) == 1 })
	msg := AppendMessage(nil, []byte("t"), make([]byte, 64<<10))
	sent := 0
	for pub.Dropped() == 0 {
		if q, _ := pub.Send([]byte("t"), msg); q == 1 {
			sent++
		}
		if sent > 1<<16 {
			t.Fatal("a subscriber that does not read never made the publisher drop")
		}
	}
	close(release)
	t.Logf("queued %d 64 KiB messages before the first drop", sent)
}

func TestCloseEndsEveryGoroutineWithPeersConnected(t *testing.T) {
	pub, sub := pubSub(t, Options{}, func([][]byte) {})
	sub.Subscribe(nil)
	testutil.Eventually(t, 10*time.Second, "the subscription", func() bool { return pub.Subscribers(nil) == 1 })
	pub.Close()
	sub.Close()
	if err := pub.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestCloseDoesNotWaitForAPeerStuckInTheHandshake(t *testing.T) {
	s := NewSocket(Options{Type: PUB})
	addr, err := s.Listen("tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", addr.String()) // says nothing
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The socket has accepted it and is in the handshake: its greeting
	// arrives, and the peer never answers.
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatalf("no greeting from the socket: %v", err)
	}
	start := time.Now()
	s.Close()
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Close took %v with a silent peer", d)
	}
}

// A frame's length costs nothing until its bytes arrive: a peer that
// announces a frame at the message limit and sends 10 bytes of it gets a
// buffer the size of what it sent, not of what it announced.
func TestReaderGrowsWithTheBytesNotWithTheAnnouncedLength(t *testing.T) {
	for name, head := range map[string][]byte{
		"a message frame at the limit":   {flagLong, 0, 0, 0, 0, 0, DefaultMaxMessage >> 16, 0, 0},
		"the first of several frames":    {flagLong | flagMore, 0, 0, 0, 0, 0, DefaultMaxMessage >> 16, 0, 0},
		"a frame after a complete frame": {flagMore, 1, 't', flagLong, 0, 0, 0, 0, 0, DefaultMaxMessage>>16 - 1, 0, 0},
	} {
		t.Run(name, func(t *testing.T) {
			r := NewReader(bytes.NewReader(append(head, make([]byte, 10)...)), DefaultMaxMessage)
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, _, err := r.Next()
			runtime.ReadMemStats(&after)
			if err != io.ErrUnexpectedEOF {
				t.Fatalf("a frame cut short: %v, want io.ErrUnexpectedEOF", err)
			}
			if grown := after.TotalAlloc - before.TotalAlloc; grown > 256<<10 {
				t.Fatalf("10 bytes of a frame announcing %d allocated %d bytes", DefaultMaxMessage, grown)
			}
		})
	}
	// Frames that arrive whole are read whole, however large.
	big := bytes.Repeat([]byte{'x'}, DefaultMaxMessage-10)
	parts, _, err := NewReader(bytes.NewReader(AppendMessage(nil, []byte("topic"), big)), DefaultMaxMessage).Next()
	if err != nil || len(parts) != 2 || string(parts[0]) != "topic" || !bytes.Equal(parts[1], big) {
		t.Fatalf("a message at the limit: %d parts, %v", len(parts), err)
	}
}

// heapInUse is the live heap after two GCs.
func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// A peer that sends PINGs and never reads the PONGs is disconnected once
// a bounded number of PONGs wait for it, instead of queueing them without
// end.
func TestAPeerPingingWithoutReadingIsDisconnected(t *testing.T) {
	pub := NewSocket(Options{Type: PUB})
	defer pub.Close()
	addr, err := pub.Listen("tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(append(greeting[:], AppendReady(nil, SUB)...)); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the peer to be connected", func() bool { return len(pub.Peers()) == 1 })
	h0 := heapInUse()
	ping := appendFrame(nil, flagCommand, append([]byte("\x04PING\x00\x00"), bytes.Repeat([]byte{'c'}, 16)...))
	batch := bytes.Repeat(ping, 4096)
	// The kernel buffers a few MB of PONGs before the socket's writes
	// block; at most 4 million PINGs (100 MB).
	var werr error
	for i := 0; i < 1000 && werr == nil; i++ {
		_, werr = c.Write(batch)
	}
	if werr == nil {
		t.Fatal("4 million PINGs without reading a PONG, and the socket still reads them")
	}
	testutil.Eventually(t, 10*time.Second, "the peer to be gone", func() bool { return len(pub.Peers()) == 0 })
	grown := int64(heapInUse()) - int64(h0)
	t.Logf("PING flood: heap +%d bytes when the socket hung up (%v)", grown, werr)
	if grown > 8<<20 {
		t.Errorf("the flood grew the heap by %d bytes, want under 8 MiB", grown)
	}
}

// Subscriptions made before a peer connects reach it when it does.
func TestSubscriptionsMadeBeforeConnectingReachThePeer(t *testing.T) {
	pub := NewSocket(Options{Type: PUB})
	defer pub.Close()
	addr, err := pub.Listen("tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sub := NewSocket(Options{Type: SUB})
	defer sub.Close()
	for _, prefix := range []string{"a.", "b.", "c."} {
		sub.Subscribe([]byte(prefix))
	}
	if _, err := sub.Dial("tcp://" + addr.String()); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the three subscriptions", func() bool {
		return pub.Subscribers([]byte("a.x")) == 1 && pub.Subscribers([]byte("b.x")) == 1 && pub.Subscribers([]byte("c.x")) == 1
	})
	if pub.Subscribers([]byte("d.x")) != 0 {
		t.Fatal("a prefix never subscribed to is subscribed")
	}
}

// subscriber connects to a publishing socket as a SUB peer that sends its
// own bytes and never reads.
func subscriber(t *testing.T, pub *Socket, addr net.Addr) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(append(greeting[:], AppendReady(nil, SUB)...)); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the peer to be connected", func() bool { return len(pub.Peers()) == 1 })
	return c
}

// What a peer's subscriptions cost the socket grows with the bytes the
// peer sends, not with their square, and is bounded.
func TestSubscriptionsCostLinearlyAndAreBounded(t *testing.T) {
	pub := NewSocket(Options{Type: PUB})
	defer pub.Close()
	addr, err := pub.Listen("tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := subscriber(t, pub, addr)
	// 1000 distinct prefixes of 1000 bytes: 1 MB sent.
	prefix := func(i int) []byte { return fmt.Appendf(bytes.Repeat([]byte{'p'}, 990), "%010d", i) }
	var subs []byte
	for i := range 1000 {
		subs = AppendSubscription(subs, prefix(i), true)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if _, err := c.Write(subs); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the 1000 subscriptions", func() bool { return pub.Subscribers(prefix(999)) == 1 })
	runtime.ReadMemStats(&after)
	if grown := after.TotalAlloc - before.TotalAlloc; grown > 32<<20 {
		t.Errorf("1000 subscriptions of 1000 bytes allocated %d bytes", grown)
	}
	// Cancelling one, subscribing again and cancelling again cost as much.
	runtime.ReadMemStats(&before)
	var toggles []byte
	for range 1000 {
		toggles = AppendSubscription(toggles, prefix(0), false)
		toggles = AppendSubscription(toggles, prefix(0), true)
	}
	toggles = AppendSubscription(toggles, prefix(1), false)
	if _, err := c.Write(toggles); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the cancellation", func() bool { return pub.Subscribers(prefix(1)) == 0 })
	runtime.ReadMemStats(&after)
	if grown := after.TotalAlloc - before.TotalAlloc; grown > 32<<20 {
		t.Errorf("2000 changes to 1000 subscriptions allocated %d bytes", grown)
	}
	for _, i := range []int{0, 2, 998, 999} {
		if pub.Subscribers(prefix(i)) != 1 {
			t.Fatalf("subscription %d lost", i)
		}
	}
	// A peer's subscriptions hold at most maxSubscriptionBytes: beyond
	// it, new prefixes are ignored.
	c.Close()
	testutil.Eventually(t, 10*time.Second, "the first peer to be gone", func() bool { return len(pub.Peers()) == 0 })
	c = subscriber(t, pub, addr)
	big := func(i int) []byte { return fmt.Appendf(bytes.Repeat([]byte{'b'}, 60<<10), "%010d", i) }
	var bigs []byte
	n := 2*maxSubscriptionBytes/len(big(0)) + 1
	for i := range n {
		bigs = AppendSubscription(bigs, big(i), true)
	}
	bigs = AppendSubscription(bigs, []byte("last"), false) // a marker that it was all read
	bigs = AppendSubscription(bigs, []byte("last"), true)
	if _, err := c.Write(bigs); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the marker", func() bool { return pub.Subscribers([]byte("last")) == 1 })
	held := 0
	for i := range n {
		held += pub.Subscribers(big(i))
	}
	if held == 0 || held*len(big(0)) > maxSubscriptionBytes {
		t.Fatalf("%d prefixes of %d bytes held, want some and at most %d bytes", held, len(big(0)), maxSubscriptionBytes)
	}
}

// TestDocumentedBounds holds the figures docs/events.md gives for a peer:
// 1024 control messages waiting, 4096 subscription prefixes, 1 MiB of them;
// 4096 peers a socket accepts; a read buffer of 1 KiB growing to 64 KiB.
func TestDocumentedBounds(t *testing.T) {
	if maxQueuedControl != 1024 || maxSubscriptions != 4096 || maxSubscriptionBytes != 1<<20 {
		t.Errorf("control %d, prefixes %d, prefix bytes %d; docs/events.md says 1024, 4096, 1 MiB",
			maxQueuedControl, maxSubscriptions, maxSubscriptionBytes)
	}
	if DefaultMaxPeers != 4096 || minReadBuffer != 1<<10 || maxReadBuffer != 64<<10 {
		t.Errorf("peers %d, read buffer %d to %d; docs/events.md says 4096, 1 KiB to 64 KiB",
			DefaultMaxPeers, minReadBuffer, maxReadBuffer)
	}
}
