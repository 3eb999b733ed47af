package natsplane

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/internal/plane"
)

// BenchmarkUnary measures one request and one response per operation,
// against nats.go's own request/reply on the same server for reference.
func BenchmarkUnary(b *testing.B) {
	p := newPair(b)
	srv := serve(b, p.snc, ServerConfig{}, echo)
	c := newClient(b, p.cnc, ClientConfig{})
	req := plane.Request{Path: "ns/c/echo", Codec: "raw", Payload: make([]byte, 64)}
	call := func(b *testing.B) {
		st, err := c.Open(context.Background(), srv.Address(), req)
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
	b.Run("natsplane/sequential", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			call(b)
		}
	})
	b.Run("natsplane/parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				call(b)
			}
		})
	})

	sub, err := p.snc.Subscribe("bench.request", func(m *nats.Msg) { m.Respond(m.Data) })
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Unsubscribe()
	p.snc.Flush()
	request := func(b *testing.B) {
		if _, err := p.cnc.Request("bench.request", req.Payload, 5*time.Second); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("nats-request/sequential", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			request(b)
		}
	})
	b.Run("nats-request/parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				request(b)
			}
		})
	})
}

// BenchmarkStream measures one streamed response message per operation.
func BenchmarkStream(b *testing.B) {
	p := newPair(b)
	srv := serve(b, p.snc, ServerConfig{}, func(s *ServerStream) error {
		n, _ := strconv.Atoi(s.Header("n"))
		size, _ := strconv.Atoi(s.Header("size"))
		msg := make([]byte, size)
		for range n {
			if err := s.Send(msg); err != nil {
				return err
			}
		}
		return nil
	})
	c := newClient(b, p.cnc, ClientConfig{})
	for _, size := range []int{64, 1 << 10, 16 << 10} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(size))
			req := plane.Request{Path: "ns/c/stream", Headers: map[string]string{"n": strconv.Itoa(b.N), "size": strconv.Itoa(size)}}
			st, err := c.Open(context.Background(), srv.Address(), req)
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			for range b.N {
				if _, err := st.Recv(); err != nil {
					b.Fatal(err)
				}
			}
			if _, err := st.Recv(); err != io.EOF {
				b.Fatal(err)
			}
		})
	}
}
