package mux

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/internal/wire"
)

// These tests attack a server from hand-written peers that speak the wire
// as docs/protocol.md describes it, and bound what each attack costs in
// counts: bytes of heap, goroutines, handler slots. Each also checks that
// the limit it trips is logged with the peer's address and reported to
// OnLimit.

// heapInUse is the live heap after two GCs.
func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// limitLog captures a server's log and its OnLimit calls.
type limitLog struct {
	buf  testutil.SyncBuffer
	mu   sync.Mutex
	hits map[string]int
}

func (l *limitLog) config(cfg ServerConfig) ServerConfig {
	l.hits = map[string]int{}
	cfg.Logger = slog.New(slog.NewTextHandler(&l.buf, nil))
	cfg.OnLimit = func(limit string) {
		l.mu.Lock()
		l.hits[limit]++
		l.mu.Unlock()
	}
	return cfg
}

func (l *limitLog) count(limit string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.hits[limit]
}

func TestHalfSentMaximumFramesCostLittleAndAreDropped(t *testing.T) {
	const conns = 100
	var ll limitLog
	addr, srv := startServer(t, ll.config(ServerConfig{FrameTimeout: 5 * time.Second}), echo)
	g0 := runtime.NumGoroutine()
	h0 := heapInUse()
	peers := make([]*rawConn, conns)
	for i := range peers {
		peers[i] = dialRaw(t, addr, true)
		// An OPEN announcing the largest frame, and 10 bytes of it.
		peers[i].write(header(wire.TypeOpen, 0, 1, wire.DefaultMaxFrameSize))
		peers[i].write(make([]byte, 10))
	}
	testutil.Eventually(t, 10*time.Second, "every connection to be served", func() bool { return srv.nconns.Load() == conns })
	grown := int64(heapInUse()) - int64(h0)
	goroutines := runtime.NumGoroutine() - g0
	t.Logf("%d connections with a half-sent 4 MiB frame: heap +%d bytes (%d each), goroutines +%d", conns, grown, grown/conns, goroutines)
	// Each connection: its reader's first buffer (32 KiB), its writer's
	// batch, the connection state; not the 4 MiB announced.
	if perConn := grown / conns; perConn > 64<<10 {
		t.Errorf("%d half-sent 4 MiB frames grew the heap by %d bytes, %d per connection; want at most 64 KiB each", conns, grown, perConn)
	}
	if goroutines > 2*conns+10 {
		t.Errorf("%d connections added %d goroutines, want at most 2 each", conns, goroutines)
	}
	for _, p := range peers {
		p.expectClosed()
	}
	testutil.Eventually(t, 10*time.Second, "the server to let go of every connection", func() bool { return srv.nconns.Load() == 0 })
	if n := ll.count("frame_timeout"); n != conns {
		t.Errorf("OnLimit(frame_timeout) called %d times, want %d", n, conns)
	}
	if !strings.Contains(ll.buf.String(), "limit=frame_timeout remote=127.0.0.1:") {
		t.Errorf("no log line names the limit and the peer:\n%s", ll.buf.String())
	}
}

func TestATrickledFrameIsDroppedAlthoughBytesKeepArriving(t *testing.T) {
	var ll limitLog
	addr, _ := startServer(t, ll.config(ServerConfig{FrameTimeout: 300 * time.Millisecond}), echo)
	r := dialRaw(t, addr, true)
	r.write(header(wire.TypeOpen, 0, 1, 100))
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		r.expectClosed()
	}()
	// One byte every 20 ms: each resets keepalive, none completes the
	// frame. The server must close before the 100 bytes are in.
	sent := 0
	for ; sent < 100; sent++ {
		select {
		case <-closed:
		case <-time.After(20 * time.Millisecond):
			if _, err := r.nc.Write([]byte{0}); err == nil {
				continue
			}
		}
		break
	}
	<-closed
	if sent == 100 {
		t.Fatal("the whole frame was trickled in before the server closed the connection")
	}
	if ll.count("frame_timeout") != 1 {
		t.Errorf("OnLimit(frame_timeout) called %d times, want 1", ll.count("frame_timeout"))
	}
}

func TestAPingFloodWithoutReadingIsDropped(t *testing.T) {
	var ll limitLog
	addr, _ := startServer(t, ll.config(ServerConfig{MaxQueuedPongs: 64}), echo)
	r := dialRaw(t, addr, true)
	h0 := heapInUse()
	var ping []byte
	for range 4096 {
		ping = append(ping, header(wire.TypePing, 0, 0, 8)...)
		ping = append(ping, 1, 2, 3, 4, 5, 6, 7, 8)
	}
	// Send PINGs, never read a PONG, until the server hangs up; the
	// kernel buffers a few MB of PONGs first. At most 4 million PINGs.
	var werr error
	for i := 0; i < 1000 && werr == nil; i++ {
		_, werr = r.nc.Write(ping)
	}
	if werr == nil {
		t.Fatal("4 million PINGs without reading a PONG, and the server still reads them")
	}
	testutil.Eventually(t, 10*time.Second, "the limit to be reported", func() bool { return ll.count("max_queued_pongs") == 1 })
	grown := int64(heapInUse()) - int64(h0)
	t.Logf("PING flood: heap +%d bytes when the server hung up", grown)
	if grown > 8<<20 {
		t.Errorf("the flood grew the heap by %d bytes, want under 8 MiB", grown)
	}
	if !strings.Contains(ll.buf.String(), "limit=max_queued_pongs remote=127.0.0.1:") {
		t.Errorf("no log line names the limit and the peer:\n%s", ll.buf.String())
	}
}

func TestConnectionsBeyondMaxConnsAreRefused(t *testing.T) {
	var ll limitLog
	addr, srv := startServer(t, ll.config(ServerConfig{MaxConns: 5}), echo)
	for range 5 {
		dialRaw(t, addr, true)
	}
	testutil.Eventually(t, 10*time.Second, "5 connections", func() bool { return srv.nconns.Load() == 5 })
	over := dialRaw(t, addr, false)
	over.expectClosed()
	if ll.count("max_conns") != 1 {
		t.Errorf("OnLimit(max_conns) called %d times, want 1", ll.count("max_conns"))
	}
	if !strings.Contains(ll.buf.String(), "max_conns") || !strings.Contains(ll.buf.String(), "remote=127.0.0.1:") {
		t.Errorf("no log line names the limit and the peer:\n%s", ll.buf.String())
	}
}

// A connection that opens streams without ever granting credit holds
// their handlers in Send. It gets its share of the handler slots, no more:
// a legitimate caller on another connection is served at once, and is
// not refused.
func TestOneConnectionCannotTakeEveryHandlerSlot(t *testing.T) {
	const slots = 100
	var ll limitLog
	addr, srv := startServer(t, ll.config(ServerConfig{MaxConcurrentStreams: slots, QueueSize: 10}), func(s *ServerStream) error {
		if s.Path() == "hog" {
			return s.Send(bytes.Repeat([]byte("x"), 100)) // no credit: waits until killed
		}
		return s.Send(s.Payload())
	})
	// The attacker announces an initial window of 0.
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.Write(wire.AppendPreface(nil, wire.Preface{Version: wire.Version, MaxFrameSize: wire.DefaultMaxFrameSize}))
	if _, err := wire.ReadPreface(nc); err != nil {
		t.Fatal(err)
	}
	var w wire.Writer
	for id := uint32(1); id <= 1000; id++ {
		w.Open(id, &wire.OpenHeader{Path: "hog"}, nil)
	}
	if _, err := nc.Write(w.Bytes()); err != nil {
		t.Fatal(err)
	}
	// Of 1000 OPENs, the attacker's share (half the slots) runs; the rest
	// are refused with Overloaded.
	rd := wire.NewReader(nc, wire.DefaultMaxFrameSize)
	refused := 0
	for refused < 1000-slots/2 {
		f, err := rd.ReadFrame()
		if err != nil {
			t.Fatalf("after %d refusals: %v", refused, err)
		}
		if code, _, _ := wire.ParseEnd(f.Payload); f.Type == wire.TypeEnd && code == wire.CodeOverloaded {
			refused++
		}
	}
	if running := srv.adm.Running(); running != slots/2 {
		t.Fatalf("%d handlers run for the attacker, want its share %d", running, slots/2)
	}
	p := newPool(t, ClientConfig{})
	for i := range 20 {
		st, err := p.Open(context.Background(), addr, Request{Path: "echo", Payload: []byte("hi")})
		if err != nil {
			t.Fatal(err)
		}
		msgs, err := recvAll(st)
		if err != nil || len(msgs) != 1 {
			t.Fatalf("legitimate call %d during the attack: %q, %v", i, msgs, err)
		}
	}
	if ll.count("max_streams_per_conn") != 1000-slots/2 {
		t.Errorf("OnLimit(max_streams_per_conn) called %d times, want %d", ll.count("max_streams_per_conn"), 1000-slots/2)
	}
	nc.Close()
	testutil.Eventually(t, 10*time.Second, "the attacker's handlers to end", func() bool { return srv.adm.Running() == 0 })
}
