package loom_test

import (
	"context"
	"errors"
	"iter"
	"strings"
	"testing"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/discovery"
)

func TestWaitForInstanceWaitsForTheOneAskedFor(t *testing.T) {
	c := newCluster(t)
	echo := loom.EngineFunc[int, int](func(_ context.Context, n int) iter.Seq2[int, error] {
		return func(yield func(int, error) bool) { yield(n, nil) }
	})
	serveModel := func(model string) {
		ep := endpoint(t, c.runtime(), "wait/for/it")
		if err := loom.Serve(context.Background(), ep, echo, loom.WithMetadata(map[string]string{"model": model})); err != nil {
			t.Fatal(err)
		}
	}
	model := func(m string) func(discovery.Instance) bool {
		return func(i discovery.Instance) bool { return i.Metadata["model"] == m }
	}
	serveModel("a")
	cl := client[int, int](t, c.runtime(), "wait/for/it")
	waitInstances(t, cl, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := cl.WaitForInstance(ctx, model("a")); err != nil {
		t.Fatalf("waiting for an instance the client knows: %v", err)
	}

	// No instance serves b yet: the wait ends with its context, saying
	// how many instances it saw.
	short, cancelShort := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancelShort()
	err := cl.WaitForInstance(short, model("b"))
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "none of 1 instances") || !strings.Contains(err.Error(), "wait/for/it") {
		t.Fatalf("waiting for an instance nobody serves: %v; want the deadline, the endpoint and the count", err)
	}

	done := make(chan error, 1)
	go func() { done <- cl.WaitForInstance(ctx, model("b")) }()
	serveModel("b")
	if err := <-done; err != nil {
		t.Fatalf("waiting for an instance that registers: %v", err)
	}
	found := false
	for _, i := range cl.Instances() {
		found = found || model("b")(i)
	}
	if !found {
		t.Fatalf("WaitForInstance returned, but the client does not list model b: %v", cl.Instances())
	}

	_ = cl.Close()
	if err := cl.WaitForInstance(ctx, model("c")); !errors.Is(err, loom.ErrClosed) {
		t.Fatalf("waiting on a closed client: %v, want ErrClosed", err)
	}
}
