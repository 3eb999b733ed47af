package events_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/codec"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/events"
)

// A subscriber that keeps state learns of each gap in a publisher's
// sequence and asks for a snapshot of that publisher's state. Here the
// events are published raw, skipping sequence 2 as a lossy link would.
func ExampleOnGap() {
	ns, _ := embedded.StartNATS(embedded.NATSOptions{})
	defer ns.Shutdown()
	cfg := config.Default()
	cfg.NATS.URL = ns.ClientURL()
	ctx := context.Background()
	rt, _ := loom.NewRuntime(ctx, loom.WithConfig(cfg), loom.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	defer rt.Shutdown(ctx)

	resync := make(chan events.Gap, 16)
	scope := events.Scope{Namespace: "dynamo", Component: "worker"}
	sub, err := events.Subscribe[string](ctx, rt, scope, "kv_events",
		events.OnGap(func(g events.Gap) {
			select {
			case resync <- g: // another goroutine fetches the snapshot
			default: // one pending request is enough
			}
		}))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer sub.Close()

	nc, _ := nats.Connect(ns.ClientURL())
	defer nc.Close()
	subject, _ := events.Subject(scope, "kv_events")
	for _, seq := range []uint64{0, 1, 3} {
		payload, _ := codec.MsgPack.Marshal(nil, fmt.Sprint("stored block ", seq))
		env := events.Envelope{PublisherID: 7, InstanceID: 0xabc, Sequence: seq, Topic: "kv_events", Payload: payload}
		_ = nc.Publish(subject, env.AppendMsgPack(nil))
	}
	for ev, err := range sub.Events(ctx) {
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println(ev.Value)
		if ev.Sequence == 3 {
			break
		}
	}
	g := <-resync
	fmt.Printf("instance %x: expected %d, got %d: fetch its snapshot\n", g.InstanceID, g.Expected, g.Got)
	// Output:
	// stored block 0
	// stored block 1
	// stored block 3
	// instance abc: expected 2, got 3: fetch its snapshot
}
