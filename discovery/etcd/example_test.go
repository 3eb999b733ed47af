package etcd_test

import (
	"context"
	"fmt"
	"time"

	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/discovery/etcd"
	"github.com/loomrt/loom/embedded/etcdserver"
)

func Example() {
	// A real etcd in this process; production points Endpoints at a cluster.
	srv, err := etcdserver.Start(etcdserver.Options{TickMs: 10, ElectionMs: 50})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer srv.Close()

	ctx := context.Background()
	cfg := etcd.Config{Endpoints: []string{srv.ClientURL()}, LeaseTTL: 5 * time.Second}
	server, err := etcd.New(ctx, cfg)
	if err != nil {
		fmt.Println(err)
		return
	}
	client, err := etcd.New(ctx, cfg)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer client.Close()

	worker := discovery.Instance{
		Namespace: "demo", Component: "backend", Endpoint: "generate",
		ID:        server.ID(), // the lease id is the instance id
		Transport: "tcp", Address: "127.0.0.1:9000", Codec: "msgpack",
	}
	if err := server.Register(ctx, worker); err != nil {
		fmt.Println(err)
		return
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events, _ := client.Watch(ctx, discovery.Query{Namespace: "demo", Component: "backend"})
	for ev := range events {
		switch ev.Kind {
		case discovery.Added:
			fmt.Println("added", ev.Instance.Path(), ev.Instance.Address, ev.Instance.ID == server.ID())
		case discovery.Synced:
			fmt.Println("synced")
			server.Close() // revokes the lease: the record goes at once
		case discovery.Removed:
			fmt.Println("removed", ev.Instance.Path())
			cancel()
		}
	}

	// Output:
	// added demo/backend/generate 127.0.0.1:9000 true
	// synced
	// removed demo/backend/generate
}
