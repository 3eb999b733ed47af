package natsplane_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/internal/natsplane"
	"github.com/loomrt/loom/internal/plane"
)

func Example() {
	ns, err := embedded.StartNATS(embedded.NATSOptions{})
	if err != nil {
		log.Fatal(err)
	}
	defer ns.Shutdown()
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()

	// The server: one subject per instance; the handler streams words.
	srv, err := natsplane.NewServer(nc, "loom.rpc.5eed", natsplane.ServerConfig{}, natsplane.HandlerFunc(func(s *natsplane.ServerStream) error {
		for w := range strings.FieldsSeq(string(s.Payload())) {
			if err := s.Send([]byte(strings.ToUpper(w))); err != nil {
				return err
			}
		}
		return nil
	}))
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Shutdown(context.Background())

	// The caller.
	c := natsplane.NewClient(nc, natsplane.ClientConfig{})
	defer c.Close()
	st, err := c.Open(context.Background(), srv.Address(), plane.Request{Path: "demo/shout/generate", Payload: []byte("hello over nats")})
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()
	for {
		p, err := st.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(string(p))
	}
	// Output:
	// HELLO
	// OVER
	// NATS
}
