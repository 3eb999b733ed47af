package mux_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"

	"github.com/loomrt/loom/internal/mux"
)

// A server that streams three responses per request and a pool that
// calls it.
func Example() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	srv := mux.NewServer(mux.ServerConfig{Logger: slog.New(slog.DiscardHandler)}, mux.HandlerFunc(func(s *mux.ServerStream) error {
		for i := range 3 {
			if err := s.Send(fmt.Appendf(nil, "%s #%d", s.Payload(), i)); err != nil {
				return err
			}
		}
		return nil
	}))
	go srv.Serve(ln)
	defer srv.Close()

	pool := mux.NewPool(mux.ClientConfig{})
	defer pool.Close()
	st, err := pool.Open(context.Background(), ln.Addr().String(), mux.Request{Path: "demo/echo/generate", Payload: []byte("token")})
	if err != nil {
		panic(err)
	}
	defer st.Close()
	for {
		msg, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			panic(err)
		}
		fmt.Println(string(msg))
	}
	// Output:
	// token #0
	// token #1
	// token #2
}
