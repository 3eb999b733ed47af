package mux

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// liveBytes is the heap in use plus goroutine stacks, after a GC.
func liveBytes() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse + m.StackInuse
}

// TestIdleStreamMemory opens 10,000 streams whose handlers wait, over one
// pool, and reports the memory each costs on each side. The server runs in
// a child process (this test binary, see TestMemoryHelperServer) so that
// each side measures only itself.
func TestIdleStreamMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 10,000 streams in a child process")
	}
	const n = 10_000
	cmd := exec.Command(os.Args[0], "-test.run=^TestMemoryHelperServer$", "-test.count=1")
	cmd.Env = append(os.Environ(), "MUX_MEMORY_SERVER="+strconv.Itoa(n))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer stdin.Close()
	lines := bufio.NewScanner(stdout)
	field := func(key string) string {
		for lines.Scan() {
			if k, v, ok := strings.Cut(lines.Text(), " "); ok && k == key {
				return v
			}
		}
		t.Fatalf("child server ended before reporting %q", key)
		return ""
	}
	addr := field("addr")

	// Every stream waits for a first response that never comes: a PING
	// that the loaded server answers late would have stall detection fail
	// them all (and the child wait for handlers that ended). Memory is
	// measured here, not stalls.
	p := newPool(t, ClientConfig{Logger: quiet, StallTimeout: -1})
	// Should the child still never report, fail instead of waiting for
	// the package's timeout: killing it ends the scan below.
	reported := make(chan struct{})
	defer close(reported)
	go func() {
		select {
		case <-reported:
		case <-time.After(2 * time.Minute):
			t.Errorf("the child server did not report within 2 minutes that all %d handlers run: stopping it", n)
			cmd.Process.Kill()
		}
	}()
	warm, err := p.Open(context.Background(), addr, Request{Path: "warm"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := warm.Recv(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	base := liveBytes()
	streams := make([]*ClientStream, n)
	for i := range streams {
		if streams[i], err = p.Open(ctx, addr, Request{Path: "ns/comp/idle", Codec: "msgpack", RequestID: "0123456789abcdef"}); err != nil {
			t.Fatal(err)
		}
	}
	server, _ := strconv.ParseFloat(field("server"), 64) // sent once all n handlers run (or missing if the child was killed above)
	client := float64(liveBytes()-base) / n
	runtime.KeepAlive(streams)
	for _, st := range streams {
		st.Close()
	}
	warm.Close()
	t.Logf("memory per idle open stream: %.0f B on the client, %.0f B on the server (handler goroutine included), %.0f B both sides", client, server, client+server)
	if !raceEnabled && client+server > 8<<10 {
		t.Errorf("an idle stream costs %.0f B on both sides, want under 8 KiB", client+server)
	}
}

// TestMemoryHelperServer is the server side of TestIdleStreamMemory; it
// runs only in the child process.
func TestMemoryHelperServer(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("MUX_MEMORY_SERVER"))
	if n == 0 {
		t.Skip("helper process for TestIdleStreamMemory")
	}
	var live atomic.Int32
	addr, _ := startServer(t, ServerConfig{MaxConcurrentStreams: 2 * n, Logger: quiet}, func(s *ServerStream) error {
		if s.Path() == "warm" {
			return s.Send([]byte("ok"))
		}
		live.Add(1)
		defer live.Add(-1)
		<-s.Context().Done()
		return nil
	})
	base := liveBytes()
	fmt.Printf("addr %s\n", addr)
	for live.Load() < int32(n) {
		time.Sleep(time.Millisecond)
	}
	fmt.Printf("server %.0f\n", float64(liveBytes()-base)/float64(n))
	io.Copy(io.Discard, os.Stdin) // until the parent is done
}

func benchServer(b *testing.B, h HandlerFunc) (*Pool, string) {
	addr, _ := startServer(b, ServerConfig{}, h)
	p := newPool(b, ClientConfig{})
	return p, addr
}

func BenchmarkUnary64(b *testing.B) {
	p, addr := benchServer(b, echo)
	req := Request{Path: "ns/comp/echo", Payload: make([]byte, 64)}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		st, err := p.Open(ctx, addr, req)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := st.Recv(); err != nil {
			b.Fatal(err)
		}
		if _, err := st.Recv(); err != io.EOF {
			b.Fatal(err)
		}
		st.Close()
	}
}

func BenchmarkUnary64Parallel(b *testing.B) {
	p, addr := benchServer(b, echo)
	req := Request{Path: "ns/comp/echo", Payload: make([]byte, 64)}
	b.ReportAllocs()
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			st, err := p.Open(ctx, addr, req)
			if err != nil {
				b.Error(err)
				return
			}
			if _, err := st.Recv(); err != nil {
				b.Error(err)
			}
			st.Recv()
			st.Close()
		}
	})
}

func BenchmarkStream64(b *testing.B) {
	p, addr := benchServer(b, func(s *ServerStream) error {
		n := binary.BigEndian.Uint64(s.Payload())
		msg := make([]byte, 64)
		for range n {
			if err := s.Send(msg); err != nil {
				return err
			}
		}
		return nil
	})
	b.ReportAllocs()
	b.SetBytes(64)
	st, err := p.Open(context.Background(), addr, Request{Path: "ns/comp/stream", Payload: binary.BigEndian.AppendUint64(nil, uint64(b.N))})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	start := time.Now()
	for range b.N {
		if _, err := st.Recv(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "items/s")
	if _, err := st.Recv(); err != io.EOF {
		b.Fatal(err)
	}
}

// BenchmarkRawTCPPingPong64 is the floor: a 4-byte length and 64 bytes
// each way on one TCP connection, no multiplexing.
func BenchmarkRawTCPPingPong64(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 68)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	msg := binary.BigEndian.AppendUint32(nil, 64)
	msg = append(msg, make([]byte, 64)...)
	buf := make([]byte, 68)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
	}
	c.Close()
	<-done
}
