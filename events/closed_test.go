package events_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/loomrt/loom/events"
	"github.com/loomrt/loom/internal/testutil"
)

// TestNothingStartsOnARuntimeThatWasStopped: after the runtime's Shutdown
// or Close, its publishers refuse to publish and NewPublisher and
// Subscribe refuse to start, each with ErrClosed saying why. NewPublisher
// and Subscribe once went on to use the closed NATS connection and failed
// with "nats: connection closed" (or a stream "create" error), or with the
// supervisor's "group stopped", neither of them ErrClosed.
func TestNothingStartsOnARuntimeThatWasStopped(t *testing.T) {
	for _, tr := range transports {
		for _, how := range []string{"Shutdown", "Close"} {
			t.Run("over "+tr+" after "+how, func(t *testing.T) {
				s := newSystem(t, tr)
				rt := s.Runtime()
				scope := events.Scope{Namespace: "stopped"}
				p := publisher[int](t, rt, scope, "t")
				if how == "Shutdown" {
					if err := rt.Shutdown(testutil.Timeout(t, 5*time.Second)); err != nil {
						t.Fatal(err)
					}
				} else if err := rt.Close(); err != nil {
					t.Fatal(err)
				}
				check := func(what string, err error) {
					t.Helper()
					if !errors.Is(err, events.ErrClosed) || !strings.Contains(err.Error(), "namespace.stopped.t") {
						t.Errorf("%s after the runtime's %s: %v; want ErrClosed naming the subject", what, how, err)
					}
				}
				check("Publish", p.Publish(context.Background(), 1))
				check("Flush", p.Flush(context.Background()))
				_, err := events.NewPublisher[int](testutil.Timeout(t, 5*time.Second), rt, scope, "t")
				check("NewPublisher", err)
				_, err = events.Subscribe[int](testutil.Timeout(t, 5*time.Second), rt, scope, "t")
				check("Subscribe", err)
			})
		}
	}
}
