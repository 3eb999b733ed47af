package loomtest_test

import (
	"context"
	"iter"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/loomtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestRuntimesOfASystemCallEachOtherOnEveryPlane(t *testing.T) {
	for _, plane := range []string{"local", "tcp", "nats"} {
		t.Run("over "+plane, func(t *testing.T) {
			sys := loomtest.New(t, loomtest.Options{Plane: plane})
			if (sys.NATS != nil) != (plane == "nats") {
				t.Fatalf("plane %s: NATS server %v", plane, sys.NATS)
			}
			server, caller := sys.Runtime(), sys.Runtime()
			ep, err := server.Endpoint("loomtest/echo/id")
			if err != nil {
				t.Fatal(err)
			}
			id := loom.EngineFunc[int, uint64](func(ctx context.Context, _ int) iter.Seq2[uint64, error] {
				return func(yield func(uint64, error) bool) { yield(server.ID(), nil) }
			})
			if err := loom.Serve(t.Context(), ep, id); err != nil {
				t.Fatal(err)
			}
			cep, err := caller.Endpoint("loomtest/echo/id")
			if err != nil {
				t.Fatal(err)
			}
			client, err := loom.NewClient[int, uint64](t.Context(), cep)
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			for got, err := range client.Generate(ctx, 0) {
				if err != nil || got != server.ID() {
					t.Fatalf("got %x, %v; want the server's id %x", got, err, server.ID())
				}
			}
			if inst := client.Instances(); len(inst) != 1 || inst[0].ID != server.ID() {
				t.Errorf("the client sees %+v; want the one server", inst)
			}
		})
	}
}

func TestJetStreamKeepsQueuesAndStreamsInMemory(t *testing.T) {
	sys := loomtest.New(t, loomtest.Options{JetStream: true})
	if sys.NATS == nil || !sys.NATS.Server().JetStreamEnabled() {
		t.Fatal("no JetStream server")
	}
	if sys.Config.NATS.URL != sys.NATS.ClientURL() || sys.Config.Queue.Storage != "memory" || sys.Config.Events.JetStream.Storage != "memory" {
		t.Fatalf("config: nats %s, queue storage %s, event storage %s", sys.Config.NATS.URL, sys.Config.Queue.Storage, sys.Config.Events.JetStream.Storage)
	}
}
