package dashboard_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/loomrt/loom/dashboard"
	"github.com/loomrt/loom/internal/testutil"
)

// TestAPageThatStopsReadingIsLetGo: a page whose socket stops taking
// data (a frozen tab, a browser gone without closing the connection) has
// its stream ended after WriteTimeout, and its connection closed.
func TestAPageThatStopsReadingIsLetGo(t *testing.T) {
	s := newSystem(t)
	rt := s.runtime()
	// A short interval: a new state, with a new history point, at each.
	d, err := dashboard.New(context.Background(), rt, dashboard.Config{
		Interval: 20 * time.Millisecond, NATSMonitorURL: "off", WriteTimeout: 300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	conn, ended := requestWithoutReading(t, d, "/api/stream")
	// The page reads nothing: the states fill both sockets' buffers, and
	// the next write waits until WriteTimeout.
	select {
	case <-ended:
	case <-time.After(20 * time.Second):
		t.Fatal("the stream to a page that reads nothing was still open after 20s; want it ended after the 300ms write timeout")
	}
	// What was written before then is still there to read, and then the
	// connection is closed.
	if err := conn.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, conn)
	if err != nil {
		t.Fatalf("after %d bytes: %v; want the connection closed", n, err)
	}
	if n == 0 {
		t.Fatal("the page got no bytes at all")
	}
}

// TestAPageThatStopsReadingIsCutOffAtClose: Server.Close closes the
// connection of a page whose stream is stuck in a write. Close waited 2s
// for it, returned that wait's error, and left the goroutine serving the
// page blocked in its write until WriteTimeout (30s by default; for the
// other answers, which had no deadline, until TCP gave up on the peer).
func TestAPageThatStopsReadingIsCutOffAtClose(t *testing.T) {
	s := newSystem(t)
	rt := s.runtime()
	// A short interval: a new state, with a new history point, at each.
	// WriteTimeout is the default, far longer than the test waits.
	d, err := dashboard.New(context.Background(), rt, dashboard.Config{Interval: 20 * time.Millisecond, NATSMonitorURL: "off"})
	if err != nil {
		t.Fatal(err)
	}
	// The nats-server's, the runtime's and the dashboard's own goroutines
	// are not the point: the ones serving the page are.
	ignore := goleak.IgnoreCurrent()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := dashboard.Serve(d, testutil.SmallSendBuffers(ln))
	closed := false
	defer func() {
		if !closed {
			srv.Close()
		}
	}()
	conn, err := testutil.SmallReceiveBuffers().Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := fmt.Fprintf(conn, "GET /api/stream HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	// The page reads nothing: the states fill both sockets' buffers, and
	// the stream's next write waits.
	waitFor(t, 20*time.Second, "the stream's write to wait for the page", streamWriteBlocked)

	start := time.Now()
	err = srv.Close()
	closed = true
	if err != nil {
		t.Errorf("Close with a page that stopped reading: %v (after %v)", err, time.Since(start))
	}
	// Before the page reads anything, which would let the write go on.
	goleak.VerifyNone(t, ignore)
	if err := conn.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if n, err := io.Copy(io.Discard, conn); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("after %d bytes: %v; want the connection closed by Close", n, err)
	}
}

// streamWriteBlocked reports whether a goroutine is writing an event of
// /api/stream and waits for the socket to take it.
func streamWriteBlocked() bool {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, "dashboard.(*Dashboard).writeEvent") && strings.Contains(g, "waitWrite") {
			return true
		}
	}
	return false
}

// waitFor polls cond until it holds, failing after d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s, still waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestAnIdleConnectionIsClosed: a connection kept open between requests
// (a browser's, gone without closing it) is closed after the idle
// timeout. Without one it stayed open, with its goroutine, for the life
// of the server.
func TestAnIdleConnectionIsClosed(t *testing.T) {
	defer dashboard.SetIdleTimeout(200 * time.Millisecond)()
	srv := newSystem(t).dashboard(dashboard.Config{NATSMonitorURL: "off"})
	conn, err := net.Dial("tcp", strings.TrimPrefix(srv.URL(), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := fmt.Fprintf(conn, "GET /api/state HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if err := conn.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, resp.Body); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /api/state: %s, %v", resp.Status, err)
	}
	resp.Body.Close()
	// The connection is kept for another request; none comes.
	if n, err := io.Copy(io.Discard, conn); n != 0 || err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("an idle connection: %d more bytes, %v; want it closed by the server", n, err)
	}
}

// TestAClientThatStopsReadingAnAnswerIsLetGo: a client that stops
// reading the page's script (or /api/state) has the answer ended after
// WriteTimeout. Only the stream had a deadline: the other answers held
// their goroutine until TCP gave up on the peer, some 15 minutes later.
func TestAClientThatStopsReadingAnAnswerIsLetGo(t *testing.T) {
	s := newSystem(t)
	rt := s.runtime()
	d, err := dashboard.New(context.Background(), rt, dashboard.Config{NATSMonitorURL: "off", WriteTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	// app.js is larger than both sockets' buffers: the answer's write
	// waits for the client, which reads nothing.
	_, ended := requestWithoutReading(t, d, "/app.js")
	select {
	case <-ended:
	case <-time.After(20 * time.Second):
		t.Fatal("the answer to a client that reads nothing was still being written after 20s; want it ended after the 300ms write timeout")
	}
}

// requestWithoutReading serves d on a server of its own with small socket
// buffers, and sends it a GET of path from a connection that reads nothing
// unless the test does. ended is closed when d's handler returns.
func requestWithoutReading(t *testing.T, d *dashboard.Dashboard, path string) (conn net.Conn, ended <-chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			d.ServeHTTP(w, r)
			close(done)
		}),
	}
	go func() { _ = srv.Serve(testutil.SmallSendBuffers(ln)) }()
	t.Cleanup(func() { srv.Close() })
	conn, err = testutil.SmallReceiveBuffers().Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path); err != nil {
		t.Fatal(err)
	}
	return conn, done
}
