package mux

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// TestPoolCloseReturnsWithFramesStillBuffered: Close shuts a connection
// down while frames the server sent last (a cancelled call's end) may still
// sit in the connection's read buffer. The background reader, woken by the
// close, reads them first; with no stream left it used to give the read
// role up as on an idle connection and wait for a caller or a keepalive
// tick to hand it back, neither of which comes to a closed connection, so
// Close waited for it forever (about once in a few hundred closes). Close
// must return every time.
func TestPoolCloseReturnsWithFramesStillBuffered(t *testing.T) {
	var release atomic.Pointer[chan struct{}]
	addr, _ := startServer(t, ServerConfig{}, func(s *ServerStream) error {
		if string(s.Payload()) == "wait" {
			select {
			case <-*release.Load():
			case <-s.Context().Done():
			}
		}
		return s.Send(s.Payload())
	})
	for i := range 1000 {
		r := make(chan struct{})
		release.Store(&r)
		// Not newPool: its cleanup would wait on the same Close.
		p := NewPool(ClientConfig{Logger: testLogger()})
		st, err := p.Open(context.Background(), addr, Request{Path: "t", Payload: []byte("now")})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := recvAll(st); err != nil {
			t.Fatal(err)
		}
		st.Close()
		st, err = p.Open(context.Background(), addr, Request{Path: "t", Payload: []byte("wait")})
		if err != nil {
			t.Fatal(err)
		}
		st.Cancel()
		st.Close()
		close(r) // the held call's last frames come as the pool closes
		closed := make(chan struct{})
		go func() {
			p.Close()
			close(closed)
		}()
		select {
		case <-closed:
		case <-time.After(10 * time.Second):
			t.Fatalf("close %d: Pool.Close has not returned after 10s", i+1)
		}
	}
}
