package mux

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var quiet = slog.New(slog.DiscardHandler)

func testLogger() *slog.Logger {
	if os.Getenv("MUX_DEBUG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return quiet
}

// startServer serves h on a fresh 127.0.0.1 port until the test ends.
func startServer(t testing.TB, cfg ServerConfig, h HandlerFunc) (string, *Server) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	srv := NewServer(cfg, h)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return ln.Addr().String(), srv
}

func newPool(t testing.TB, cfg ClientConfig) *Pool {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	p := NewPool(cfg)
	t.Cleanup(func() { p.Close() })
	return p
}

// openOn opens a stream for path "p" at addr through a new pool; the
// stream is closed when the test ends.
func openOn(t *testing.T, addr string) *ClientStream {
	t.Helper()
	st, err := newPool(t, ClientConfig{}).Open(ctxTimeout(t, 10*time.Second), addr, Request{Path: "p"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// echo answers with the request payload.
func echo(s *ServerStream) error { return s.Send(s.Payload()) }

// recvAll reads a stream to its end.
func recvAll(s *ClientStream) ([][]byte, error) {
	var out [][]byte
	for {
		p, err := s.Recv()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, append([]byte(nil), p...))
	}
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
