package events_test

import (
	"strings"
	"testing"
	"time"

	"github.com/loomrt/loom/events"
	"github.com/loomrt/loom/internal/testutil"
)

// TestAStreamNameNATSCannotTakeIsRefused: an events.jetstream.stream that
// is not a stream name NATS can take is refused by NewPublisher and
// Subscribe, naming the setting and what to do. A NUL or bytes that are
// not UTF-8 were taken, making a stream no tool can name; the other names
// failed with nats.go's "invalid stream name", naming no setting.
func TestAStreamNameNATSCannotTakeIsRefused(t *testing.T) {
	s := newSystem(t, events.JetStream)
	scope := events.Scope{Namespace: "named"}
	for _, name := range []string{"a\x00b", "a\xffb", "a\x7fb", "a.b", "a b", "a\tb", "a*", "a>", "a/b", `a\b`, strings.Repeat("x", 256)} {
		s.Config.Events.JetStream.Stream = name
		rt := s.Runtime()
		check := func(what string, err error) {
			t.Helper()
			if err == nil || !strings.Contains(err.Error(), "events.jetstream.stream") || !strings.Contains(err.Error(), "letters, digits") {
				t.Errorf("%s with events.jetstream.stream %q: %v; want an error naming the setting and what to do", what, name, err)
			}
		}
		_, err := events.NewPublisher[int](testutil.Timeout(t, 5*time.Second), rt, scope, "t")
		check("NewPublisher", err)
		_, err = events.Subscribe[int](testutil.Timeout(t, 5*time.Second), rt, scope, "t")
		check("Subscribe", err)
	}
	for _, name := range []string{"LOOM_EVENTS", "my-events_2", "ÉVÉNEMENTS", strings.Repeat("x", 255)} {
		s := newSystem(t, events.JetStream) // a stream each: their subjects overlap
		s.Config.Events.JetStream.Stream = name
		rt := s.Runtime()
		sub := subscribe[int](t, rt, scope, "t")
		p := publisher[int](t, rt, scope, "t")
		if err := p.Publish(t.Context(), 1); err != nil {
			t.Fatalf("stream %q: %v", name, err)
		}
		collect(t, sub, 1, 10*time.Second)
	}
}
