package events_test

import (
	"strings"
	"testing"
	"time"

	"github.com/loomrt/loom/events"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/loomtest"
)

// TestTheJetStreamTransportWithoutJetStreamSaysWhatToDo: against a NATS
// server without JetStream, NewPublisher and Subscribe on the jetstream
// transport fail naming JetStream and what to do, not with nats.go's bare
// "nats: no responders available for request", which they once returned
// (the server answers no JetStream API request at all).
func TestTheJetStreamTransportWithoutJetStreamSaysWhatToDo(t *testing.T) {
	s := loomtest.New(t, loomtest.Options{NATS: true})
	s.Config.Events.Transport = events.JetStream
	rt := s.Runtime()
	check := func(what string, err error) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), "no JetStream") || !strings.Contains(err.Error(), "-js") ||
			!strings.Contains(err.Error(), "events.transport") {
			t.Fatalf("%s against a server without JetStream: %v; want an error naming JetStream and what to do", what, err)
		}
	}
	_, err := events.NewPublisher[int](testutil.Timeout(t, 5*time.Second), rt, events.Scope{Namespace: "x"}, "t")
	check("NewPublisher", err)
	_, err = events.Subscribe[int](testutil.Timeout(t, 5*time.Second), rt, events.Scope{Namespace: "x"}, "t")
	check("Subscribe", err)
}
