package natsplane

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func testLogger() *slog.Logger {
	if os.Getenv("NATSPLANE_DEBUG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// startNATS runs a nats-server in the test process until the test ends.
func startNATS(t testing.TB) *embedded.NATS {
	t.Helper()
	ns := testutil.StartNATS(t, embedded.NATSOptions{})
	return ns
}

// connect opens a NATS connection that the test closes at its end.
func connect(t testing.TB, ns *embedded.NATS) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(ns.ClientURL(), nats.NoReconnect())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

var subjects atomic.Int64

// serve starts a Server for h on a fresh subject over nc, closed when the
// test ends.
func serve(t testing.TB, nc *nats.Conn, cfg ServerConfig, h HandlerFunc) *Server {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	srv, err := NewServer(nc, fmt.Sprintf("loom.rpc.test%d", subjects.Add(1)), cfg, h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

func newClient(t testing.TB, nc *nats.Conn, cfg ClientConfig) *Client {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	c := NewClient(nc, cfg)
	t.Cleanup(func() { c.Close() })
	return c
}

// pair is a NATS server with one connection for the server side and one
// for the client side.
type pair struct {
	ns       *embedded.NATS
	snc, cnc *nats.Conn
}

func newPair(t testing.TB) pair {
	ns := startNATS(t)
	return pair{ns: ns, snc: connect(t, ns), cnc: connect(t, ns)}
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
		out = append(out, p)
	}
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// recvWithin runs Recv and fails the test if it takes longer than d.
func recvWithin(t testing.TB, s *ClientStream, d time.Duration) ([]byte, error) {
	t.Helper()
	type result struct {
		p   []byte
		err error
	}
	ch := make(chan result, 1)
	go func() {
		p, err := s.Recv()
		ch <- result{p, err}
	}()
	select {
	case r := <-ch:
		return r.p, r.err
	case <-time.After(d):
		s.Cancel()
		<-ch
		t.Fatalf("Recv did not return within %v", d)
		return nil, nil
	}
}
