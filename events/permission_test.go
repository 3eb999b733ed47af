package events_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/events"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/loomtest"
)

// denied is the namespace whose events the NATS user of permittedRuntime
// may neither publish nor subscribe to.
var denied = events.Scope{Namespace: "denied"}

// permittedRuntime is a runtime on a NATS server (with JetStream) whose
// user may do everything but publish and subscribe to the events of
// namespace denied, on core NATS and JetStream.
func permittedRuntime(t *testing.T, transport string) *loom.Runtime {
	t.Helper()
	deny := []string{"namespace.denied.>", events.DurablePrefix + "namespace.denied.>"}
	ns := testutil.StartNATS(t, embedded.NATSOptions{JetStream: true, Configure: func(o *server.Options) {
		o.Users = []*server.User{{Username: "worker", Password: "pw", Permissions: &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{">"}, Deny: deny},
			Subscribe: &server.SubjectPermission{Allow: []string{">"}, Deny: deny},
		}}}
	}})
	s := loomtest.New(t, loomtest.Options{})
	s.Config.NATS.URL = ns.ClientURL()
	s.Config.NATS.User, s.Config.NATS.Password = "worker", "pw"
	s.Config.Events.Transport = transport
	s.Config.Events.JetStream.Storage = "memory"
	s.Config.Events.JetStream.MaxPending = 2
	return s.Runtime()
}

// TestASubscriptionTheServerRefusesIsAnError: a NATS user without
// subscribe permission on an event subject gets an error from Subscribe
// naming the subject and the permission. The server refuses the
// subscription only in an asynchronous error on the connection:
// Subscribe once returned a subscription that silently received nothing.
func TestASubscriptionTheServerRefusesIsAnError(t *testing.T) {
	rt := permittedRuntime(t, events.NATS)
	for range 2 { // a second refusal is reported too
		s, err := events.Subscribe[int](t.Context(), rt, denied, "t")
		if err == nil {
			_ = s.Close()
		}
		if err == nil || !strings.Contains(err.Error(), "namespace.denied.t") || !strings.Contains(err.Error(), "subscribe permission") ||
			!errors.Is(err, nats.ErrPermissionViolation) {
			t.Fatalf("Subscribe without subscribe permission: %v; want an error naming the subject and the permission", err)
		}
	}
	// A refusal of another subject, still the connection's last error,
	// does not fail a permitted subscription.
	allowed := events.Scope{Namespace: "allowed"}
	sub := subscribe[int](t, rt, allowed, "t")
	p := publisher[int](t, rt, allowed, "t")
	if err := p.Publish(t.Context(), 1); err != nil {
		t.Fatal(err)
	}
	collect(t, sub, 1, 10*time.Second)
}

// TestAPublishTheServerRefusesIsReported: a NATS user without publish
// permission on an event subject is told by Flush and Shutdown, naming
// the subject and the permission. On core NATS the server drops such an
// event and reports it only in an asynchronous error on the connection,
// so Publish (which does not wait for the server) cannot say, and Flush
// once returned nil; on JetStream Flush, and Publish once
// events.jetstream.max_pending events awaited their acknowledgement,
// waited out their context for acknowledgements that never come and
// named no cause.
func TestAPublishTheServerRefusesIsReported(t *testing.T) {
	for _, tr := range []string{events.NATS, events.JetStream} {
		t.Run("over "+tr, func(t *testing.T) {
			rt := permittedRuntime(t, tr)
			ok := publisher[int](t, rt, events.Scope{Namespace: "allowed"}, "t")
			if err := ok.Publish(t.Context(), 1); err != nil {
				t.Fatal(err)
			}
			if err := ok.Flush(testutil.Timeout(t, 10*time.Second)); err != nil {
				t.Fatalf("a permitted subject: %v", err)
			}
			p, err := events.NewPublisher[int](testutil.Timeout(t, 5*time.Second), rt, denied, "t")
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			if err := p.Publish(t.Context(), 1); err != nil {
				t.Fatalf("Publish: %v (it does not wait for the server)", err)
			}
			check := func(what string, err error) {
				t.Helper()
				if err == nil || !strings.Contains(err.Error(), "namespace.denied.t") || !strings.Contains(err.Error(), "publish permission") ||
					!errors.Is(err, nats.ErrPermissionViolation) {
					t.Fatalf("%s without publish permission: %v; want an error naming the subject and the permission", what, err)
				}
			}
			check("Flush", p.Flush(testutil.Timeout(t, 2*time.Second)))
			if err := ok.Flush(testutil.Timeout(t, 10*time.Second)); err != nil {
				t.Fatalf("a permitted subject, after another's refusal: %v", err)
			}
			if err := p.Publish(t.Context(), 2); err != nil {
				t.Fatalf("Publish: %v", err)
			}
			if tr == events.JetStream {
				// Two events await their acknowledgement: the window
				// (events.jetstream.max_pending) is full.
				check("Publish", p.Publish(testutil.Timeout(t, time.Second), 3))
			}
			check("Shutdown", p.Shutdown(testutil.Timeout(t, 2*time.Second)))
		})
	}
}
