package loomtest_test

import (
	"context"
	"iter"
	"testing"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/loomtest"
)

// A test of a server and a client in two runtimes that find each other
// through the system's discovery store and talk over Loom's TCP request
// plane. (An example cannot be given a test's t; in a test file this is
// the body of a func TestX(t *testing.T).)
func Example() {
	_ = func(t *testing.T) {
		sys := loomtest.New(t, loomtest.Options{Plane: "tcp"})
		server, caller := sys.Runtime(), sys.Runtime()

		ep, err := server.Endpoint("demo/greeter/greet")
		if err != nil {
			t.Fatal(err)
		}
		hello := loom.EngineFunc[string, string](func(ctx context.Context, name string) iter.Seq2[string, error] {
			return func(yield func(string, error) bool) { yield("hello "+name, nil) }
		})
		if err := loom.Serve(t.Context(), ep, hello); err != nil {
			t.Fatal(err)
		}
		cep, err := caller.Endpoint("demo/greeter/greet")
		if err != nil {
			t.Fatal(err)
		}
		client, err := loom.NewClient[string, string](t.Context(), cep)
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		for greeting, err := range client.Generate(t.Context(), "loom") {
			if err != nil || greeting != "hello loom" {
				t.Fatalf("got %q, %v", greeting, err)
			}
		}
	}
}
