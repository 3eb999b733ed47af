package mux

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/loomrt/loom/internal/wire"
)

// A handler starts on its connection's reader. One that waits must not
// stall the connection: after the inline budget another goroutine reads,
// so other streams on the same connection are served, and a kill reaches
// the waiting handler.
func TestAWaitingHandlerDoesNotStallItsConnection(t *testing.T) {
	entered := make(chan struct{}, 1)
	ended := make(chan error, 1)
	addr, _ := startServer(t, ServerConfig{}, func(s *ServerStream) error {
		if s.Path() == "wait" {
			entered <- struct{}{}
			<-s.Context().Done() // only the client's CANCEL, read by the reader, ends this
			ended <- context.Cause(s.Context())
			return nil
		}
		return echo(s)
	})
	p := newPool(t, ClientConfig{ConnsPerHost: 1})
	ctx := ctxTimeout(t, 30*time.Second)
	waiting, err := p.Open(ctx, addr, Request{Path: "wait"})
	if err != nil {
		t.Fatal(err)
	}
	defer waiting.Close()
	select {
	case <-entered:
	case <-ctx.Done():
		t.Fatal("the waiting handler never started")
	}
	for i := range 20 {
		msg := fmt.Appendf(nil, "call %d", i)
		st, err := p.Open(ctx, addr, Request{Path: "echo", Payload: msg})
		if err != nil {
			t.Fatal(err)
		}
		got, err := recvAll(st)
		st.Close()
		if err != nil || len(got) != 1 || !bytes.Equal(got[0], msg) {
			t.Fatalf("call %d beside a waiting handler: got %q, %v", i, got, err)
		}
	}
	waiting.Cancel()
	select {
	case cause := <-ended:
		if !errors.Is(cause, errKilled) {
			t.Fatalf("the waiting handler's context ended with %v, want the client's kill", cause)
		}
	case <-ctx.Done():
		t.Fatal("the client's CANCEL never reached the waiting handler")
	}
}

// A handler that runs out of credit while it still runs on the reader
// hands the reading over before it waits, or the CREDIT it waits for
// would never be read. The budget is long here, so only that handoff can
// keep the stream going.
func TestAnInlineHandlerOutOfCreditHandsOverTheReading(t *testing.T) {
	const n, size = 2000, 100
	addr, _ := startServer(t, ServerConfig{InlineBudget: time.Hour}, func(s *ServerStream) error {
		for i := range n {
			if err := s.Send(bytes.Repeat([]byte{byte(i)}, size)); err != nil {
				return err
			}
		}
		return nil
	})
	p := newPool(t, ClientConfig{ConnsPerHost: 1, InitialWindow: 4 << 10})
	ctx := ctxTimeout(t, 30*time.Second)
	for round := range 3 {
		st, err := p.Open(ctx, addr, Request{Path: "stream"})
		if err != nil {
			t.Fatal(err)
		}
		got, err := recvAll(st)
		st.Close()
		if err != nil || len(got) != n {
			t.Fatalf("round %d: %d of %d items, %v", round, len(got), n, err)
		}
		for i, b := range got {
			if len(b) != size || b[0] != byte(i) || b[size-1] != byte(i) {
				t.Fatalf("round %d: item %d is %d bytes starting %d", round, i, len(b), b[0])
			}
		}
	}
}

// With InlineBudget negative every handler runs on a worker; the results
// are the same.
func TestHandlersOnWorkersOnly(t *testing.T) {
	addr, _ := startServer(t, ServerConfig{InlineBudget: -1}, func(s *ServerStream) error {
		switch s.Path() {
		case "fail":
			return Errorf(wire.CodeBadRequest, "no")
		case "three":
			for range 3 {
				if err := s.Send(s.Payload()); err != nil {
					return err
				}
			}
			return nil
		}
		return echo(s)
	})
	p := newPool(t, ClientConfig{})
	ctx := ctxTimeout(t, 30*time.Second)
	for _, tc := range []struct {
		path  string
		items int
		code  wire.Code
	}{{"echo", 1, wire.CodeOK}, {"three", 3, wire.CodeOK}, {"fail", 0, wire.CodeBadRequest}} {
		st, err := p.Open(ctx, addr, Request{Path: tc.path, Payload: []byte("x")})
		if err != nil {
			t.Fatal(err)
		}
		got, err := recvAll(st)
		st.Close()
		var se *StreamError
		switch {
		case len(got) != tc.items:
			t.Fatalf("%s: %d items, want %d (%v)", tc.path, len(got), tc.items, err)
		case tc.code == wire.CodeOK && err != nil:
			t.Fatalf("%s: %v", tc.path, err)
		case tc.code != wire.CodeOK && (!errors.As(err, &se) || se.Code != tc.code):
			t.Fatalf("%s: ended with %v, want code %v", tc.path, err, tc.code)
		}
	}
}

// Close reaches a handler that waits on its reader, however long the
// budget: the reading is handed over at once, the connection's end is
// read, and the handler's context is cancelled.
func TestCloseReachesAHandlerWaitingOnItsReader(t *testing.T) {
	entered := make(chan struct{}, 1)
	ended := make(chan error, 1)
	srv := NewServer(ServerConfig{InlineBudget: time.Hour, Logger: testLogger()}, HandlerFunc(func(s *ServerStream) error {
		entered <- struct{}{}
		<-s.Context().Done()
		ended <- context.Cause(s.Context())
		return nil
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	p := newPool(t, ClientConfig{})
	ctx := ctxTimeout(t, 30*time.Second)
	st, err := p.Open(ctx, ln.Addr().String(), Request{Path: "wait"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	select {
	case <-entered:
	case <-ctx.Done():
		t.Fatal("the handler never started")
	}
	closed := make(chan struct{})
	go func() { srv.Close(); close(closed) }()
	select {
	case <-closed:
	case <-ctx.Done():
		t.Fatal("Close waited for a handler waiting on its connection's reader")
	}
	select {
	case cause := <-ended:
		if !errors.Is(cause, ErrServerClosed) && !errors.Is(cause, ErrConnLost) {
			t.Fatalf("the handler's context ended with %v, want the server's close", cause)
		}
	case <-ctx.Done():
		t.Fatal("the handler's context was never cancelled")
	}
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve returned %v", err)
	}
}
