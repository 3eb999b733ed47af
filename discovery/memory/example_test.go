package memory_test

import (
	"context"
	"fmt"

	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/discovery/memory"
)

func Example() {
	ctx := context.Background()
	store := memory.NewStore()
	server, client := store.Connect(), store.Connect()
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
			server.Close() // the serving process dies
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
