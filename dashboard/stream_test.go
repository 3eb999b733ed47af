package dashboard_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ended := make(chan struct{})
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			d.ServeHTTP(w, r)
			close(ended)
		}),
	}
	go func() { _ = srv.Serve(testutil.SmallSendBuffers(ln)) }()
	defer srv.Close()

	conn, err := testutil.SmallReceiveBuffers().Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := fmt.Fprintf(conn, "GET /api/stream HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
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
