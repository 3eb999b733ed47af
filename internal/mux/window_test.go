package mux

import (
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/internal/wire"
)

// creditOf returns what the server counts of s's credit, and whether its
// Send waits for more.
func creditOf(s *ServerStream) (credit int64, waiting bool) {
	c := s.conn.conn
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return s.credit, s.waiting
}

// A stream that moved a whole window and whose caller then finds nothing
// to read doubles its window, up to the pool's MaxWindow: the server may
// then send that much to a caller that reads nothing. At MaxWindow equal
// to the initial window it keeps its window.
func TestAStreamThatRunsDryAfterAWindowWidensIt(t *testing.T) {
	const window, msg = 32 << 10, 1 << 10
	const cost = wire.HeaderSize + msg // what one message costs in credit
	for _, tc := range []struct {
		name      string
		maxWindow int
		grows     bool
	}{
		{"widens", 4 * window, true},
		{"capped", window, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := ctxTimeout(t, 20*time.Second)
			gate := make(chan struct{})
			streams := make(chan *ServerStream, 1)
			var sent atomic.Int64 // bytes of credit spent after the gate
			addr, _ := startServer(t, ServerConfig{}, func(s *ServerStream) error {
				streams <- s
				p := make([]byte, msg)
				// One window and a message past it (credit may go
				// negative by one message), then a pause.
				for range window / msg {
					if err := s.Send(p); err != nil {
						return err
					}
				}
				select {
				case <-gate:
				case <-s.Context().Done():
					return nil
				}
				for { // as much as credit lets through, until the caller leaves
					if err := s.Send(p); err != nil {
						return nil
					}
					sent.Add(cost)
				}
			})
			p := newPool(t, ClientConfig{InitialWindow: window, MaxWindow: tc.maxWindow})
			st, err := p.Open(ctx, addr, Request{Path: "s"})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			srv := <-streams
			for i := range window / msg {
				if _, err := st.Recv(); err != nil {
					t.Fatalf("message %d: %v", i, err)
				}
			}
			// The stream moved a whole window (with the frame headers)
			// only with its last message, and runs dry: the next Recv
			// waits, widening the window first if it may. Every consumed
			// byte has been granted back by then (two grants of half a
			// window), so the server holds exactly the new window.
			got := recvAsync(st)
			if tc.grows {
				testutil.Eventually(t, 10*time.Second, "the server to hold the doubled window as credit", func() bool {
					credit, _ := creditOf(srv)
					return credit == 2*window
				})
			}
			close(gate)
			if err := await(t, got, "the Recv after the pause"); err != nil {
				t.Fatal(err)
			}
			// Nobody reads now: the server sends until its credit is
			// spent, then waits.
			testutil.Eventually(t, 10*time.Second, "the server to wait for credit", func() bool {
				credit, waiting := creditOf(srv)
				return waiting && credit <= 0
			})
			n := sent.Load()
			if tc.grows && (n <= window || n > 2*window+cost) {
				t.Errorf("the server sent %d bytes to a caller that read one message; the widened window is %d", n, 2*window)
			}
			if !tc.grows && n > window+cost {
				t.Errorf("the server sent %d bytes to a caller that read one message; the window is %d and may not grow", n, window)
			}
		})
	}
}

// A stream that never moves a whole window keeps its window however often
// its caller waits: a unary call, a slow trickle of items.
func TestAStreamBelowAWindowKeepsIt(t *testing.T) {
	const window = 32 << 10
	ctx := ctxTimeout(t, 20*time.Second)
	items := make(chan struct{})
	streams := make(chan *ServerStream, 1)
	addr, _ := startServer(t, ServerConfig{}, func(s *ServerStream) error {
		streams <- s
		for range items {
			if err := s.Send(make([]byte, 1<<10)); err != nil {
				return err
			}
		}
		return nil
	})
	p := newPool(t, ClientConfig{InitialWindow: window, MaxWindow: 4 * window})
	st, err := p.Open(ctx, addr, Request{Path: "s"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	srv := <-streams
	for i := range 20 { // each Recv waits for its item: 20 KiB in all
		got := recvAsync(st)
		items <- struct{}{}
		if err := await(t, got, "an item"); err != nil {
			t.Fatalf("item %d: %v", i, err)
		}
	}
	close(items)
	if _, err := recvAll(st); err != nil {
		t.Fatal(err)
	}
	if credit, _ := creditOf(srv); credit > window {
		t.Errorf("the server holds %d bytes of credit; the window is %d and the stream moved less", credit, window)
	}
}

// The default MaxWindow lets windows grow only where the caller and the
// server can run side by side.
func TestMaxWindowDefault(t *testing.T) {
	for _, procs := range []int{1, 2} {
		prev := runtime.GOMAXPROCS(procs)
		p := NewPool(ClientConfig{Logger: quiet})
		runtime.GOMAXPROCS(prev)
		p.Close()
		want := DefaultInitialWindow
		if procs > 1 {
			want = DefaultMaxWindowFactor * DefaultInitialWindow
		}
		if p.cfg.MaxWindow != want {
			t.Errorf("GOMAXPROCS %d: MaxWindow %d, want %d", procs, p.cfg.MaxWindow, want)
		}
	}
	if p := NewPool(ClientConfig{Logger: quiet, InitialWindow: 1 << 20, MaxWindow: 1 << 10}); p.cfg.MaxWindow != 1<<20 {
		t.Errorf("MaxWindow below InitialWindow became %d, want the initial window %d", p.cfg.MaxWindow, 1<<20)
	} else {
		p.Close()
	}
}
