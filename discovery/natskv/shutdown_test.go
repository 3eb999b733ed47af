package natskv

import (
	"context"
	"iter"
	"strings"
	"testing"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/embedded"
)

// A Runtime on natskv shutting down with NATS gone does not wait for NATS
// to unregister its endpoints (each Unregister was given 5s): the records
// expire with their TTL, and Shutdown says that NATS was unreachable.
func TestRuntimeShutdownWithNATSGoneDoesNotWaitForIt(t *testing.T) {
	srv := startNATS(t, embedded.NATSOptions{JetStream: true})
	rt, err := loom.NewRuntime(t.Context(), loom.WithLogger(quiet), loom.WithLoadOptions(
		config.WithEnv(func(string) (string, bool) { return "", false }),
		config.WithValue("discovery.backend", "natskv"),
		config.WithValue("nats.url", srv.ClientURL()),
	))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	echo := loom.EngineFunc[string, string](func(ctx context.Context, s string) iter.Seq2[string, error] {
		return func(yield func(string, error) bool) { yield(s, nil) }
	})
	for _, path := range []string{"ns/c/a", "ns/c/b"} {
		ep, err := rt.Endpoint(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := loom.Serve(t.Context(), ep, echo); err != nil {
			t.Fatal(err)
		}
	}
	srv.Shutdown()
	start := time.Now()
	err = rt.Shutdown(context.Background())
	took := time.Since(start)
	t.Logf("Shutdown: %v after %v", err, took.Round(time.Millisecond))
	if took > 4*time.Second {
		t.Fatalf("Shutdown with NATS gone took %v; want it not to wait for NATS (5s per Unregister)", took)
	}
	if err == nil || !strings.Contains(err.Error(), "unregister ns/c/a") || !strings.Contains(err.Error(), "unregister ns/c/b") ||
		!strings.Contains(err.Error(), "NATS unreachable") {
		t.Fatalf("Shutdown with NATS gone = %v; want an error saying each Unregister failed as NATS is unreachable", err)
	}
}
