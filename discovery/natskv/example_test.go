package natskv_test

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/discovery/natskv"
	"github.com/loomrt/loom/embedded"
)

func Example() {
	ctx := context.Background()
	srv, err := embedded.StartNATS(embedded.NATSOptions{JetStream: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer srv.Shutdown()
	// Two processes, each with its own connection.
	serverConn, _ := nats.Connect(srv.ClientURL())
	defer serverConn.Close()
	clientConn, _ := nats.Connect(srv.ClientURL())
	defer clientConn.Close()

	// A worker that dies without Close leaves discovery within 2s.
	server, err := natskv.New(ctx, serverConn, natskv.Config{TTL: 2 * time.Second})
	if err != nil {
		fmt.Println(err)
		return
	}
	client, err := natskv.New(ctx, clientConn, natskv.Config{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer client.Close()

	worker := discovery.Instance{
		Namespace: "demo", Component: "backend", Endpoint: "generate", ID: 0x2a,
		Transport: "tcp", Address: "127.0.0.1:9000", Codec: "msgpack",
	}
	if err := server.Register(ctx, worker); err != nil {
		fmt.Println(err)
		return
	}

	list, _ := client.List(ctx, discovery.Query{Namespace: "demo"})
	for _, inst := range list {
		fmt.Println("listed", inst.Key(), inst.Address)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events, _ := client.Watch(ctx, discovery.Query{Namespace: "demo", Component: "backend"})
	for ev := range events {
		switch ev.Kind {
		case discovery.Added:
			fmt.Println("added", ev.Instance.Key())
		case discovery.Synced: // the snapshot is complete
			fmt.Println("synced")
			server.Close() // the worker shuts down and removes its record
		case discovery.Removed:
			fmt.Println("removed", ev.Instance.Key())
			cancel() // ends the watch and closes events
		}
	}

	// Output:
	// listed v1/instances/demo/backend/generate/2a 127.0.0.1:9000
	// added v1/instances/demo/backend/generate/2a
	// synced
	// removed v1/instances/demo/backend/generate/2a
}
