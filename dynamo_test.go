package loom_test

import (
	"context"
	"errors"
	"iter"
	"testing"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/discovery"
)

// TestClientsNeverRouteToDynamoInstances: an instance read from a Dynamo
// record (its request plane is Dynamo's, which Loom does not speak) is in
// discovery but never in a client's routing set.
func TestClientsNeverRouteToDynamoInstances(t *testing.T) {
	c := newClusterOn(t, "tcp")
	rt := c.runtime()
	dyn := discovery.Instance{Namespace: "mixed", Component: "backend", Endpoint: "generate", ID: 0x694d9a3e2b,
		Transport: discovery.DynamoTransportPrefix + "tcp", Address: "127.0.0.1:9", Metadata: map[string]string{"origin": "dynamo"}}
	if err := rt.Discovery().Register(t.Context(), dyn); err != nil {
		t.Fatal(err)
	}
	cl := client[int, int](t, rt, "mixed/backend/generate", loom.WithWaitTimeout(200*time.Millisecond))
	_, err := collect(cl.Generate(context.Background(), 1))
	if !errors.Is(err, loom.ErrNoInstances) {
		t.Fatalf("a call with only a Dynamo instance: %v, want ErrNoInstances", err)
	}
	// A Loom instance beside it gets every call.
	serve(t, rt, "mixed/backend/generate", func(_ context.Context, req int) iter.Seq2[int, error] {
		return func(yield func(int, error) bool) { yield(req+1, nil) }
	})
	for range 5 {
		if _, err := collect(cl.Generate(context.Background(), 1)); err != nil {
			t.Fatalf("a call with a Loom instance beside the Dynamo one: %v", err)
		}
	}
}
