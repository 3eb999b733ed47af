package bench

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

const (
	natsUnary  = "bench.echo.unary"
	natsStream = "bench.echo.stream"
)

// startNATS starts an embedded nats-server on a loopback TCP port and two
// connections to it, one serving and one calling, so that every message
// crosses the server: caller -> nats-server -> responder and back.
//
// Unary is nats.go's request/reply (one shared response subscription).
// Streaming: the caller subscribes to a fresh inbox and publishes the
// request with that inbox as its reply subject; the responder publishes
// every item to the inbox, then an empty message that ends the stream.
// NATS has no flow control; 100,000 items of 64 bytes fit well within the
// default slow-consumer limits (512Ki messages, 64 MiB), and a dropped
// item would fail the sequence check.
func startNATS(tb testing.TB) *peer {
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
	if err != nil {
		tb.Fatalf("nats: %v", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		tb.Fatal("nats: server not ready after 10s")
	}
	var conns []*nats.Conn
	closeAll := func() {
		for _, nc := range conns {
			nc.Close()
		}
		ns.Shutdown()
		ns.WaitForShutdown()
	}
	connect := func() *nats.Conn {
		nc, err := nats.Connect(ns.ClientURL(), nats.Name("bench"))
		if err != nil {
			closeAll()
			tb.Fatalf("nats: connect: %v", err)
		}
		conns = append(conns, nc)
		return nc
	}
	srv, cli := connect(), connect()
	subscribe := func(subject string, h nats.MsgHandler) {
		if _, err := srv.Subscribe(subject, h); err != nil {
			closeAll()
			tb.Fatalf("nats: subscribe %s: %v", subject, err)
		}
	}
	subscribe(natsUnary, func(m *nats.Msg) { _ = m.Respond(m.Data) })
	subscribe(natsStream, func(m *nats.Msg) {
		item := make([]byte, 0, msgSize)
		for i := range seqOf(m.Data) {
			item = fill(item, i) // Publish copies it into its buffer
			if err := srv.Publish(m.Reply, item); err != nil {
				return
			}
		}
		_ = srv.Publish(m.Reply, nil)
	})
	if err := srv.Flush(); err != nil {
		closeAll()
		tb.Fatalf("nats: flush: %v", err)
	}
	return &peer{
		unary: func(ctx context.Context, req, _ []byte) ([]byte, error) {
			m, err := cli.RequestWithContext(ctx, natsUnary, req)
			if err != nil {
				return nil, err
			}
			return m.Data, nil
		},
		stream: func(ctx context.Context, req []byte, item func([]byte) error) error {
			inbox := nats.NewInbox()
			sub, err := cli.SubscribeSync(inbox)
			if err != nil {
				return err
			}
			defer sub.Unsubscribe()
			if err := cli.PublishRequest(natsStream, inbox, req); err != nil {
				return err
			}
			for {
				m, err := sub.NextMsgWithContext(ctx)
				if err != nil {
					return fmt.Errorf("nats: stream: %w", err)
				}
				if len(m.Data) == 0 {
					return nil
				}
				if err := item(m.Data); err != nil {
					return err
				}
			}
		},
		close: closeAll,
	}
}
