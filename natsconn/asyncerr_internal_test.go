package natsconn

import (
	"fmt"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/internal/natsrefusal"
	"github.com/loomrt/loom/metrics"
)

// TestKeyOfARefusalIsItsKindAndSubject: natsrefusal reads every form of
// refusal (its own tests hold the table); a key holds what it read, and
// any other error is no refusal.
func TestKeyOfARefusalIsItsKindAndSubject(t *testing.T) {
	err := fmt.Errorf("%w: %s", nats.ErrPermissionViolation, `Permissions Violation for Subscription to "a.b" using queue "q"`)
	if k := keyOf(nil, err); !k.perm || k.kind != metrics.PermissionSubscribe || k.subject != "a.b" {
		t.Errorf("key %+v; want a refusal of kind %q on %q", k, metrics.PermissionSubscribe, "a.b")
	}
	if k := keyOf(nil, nats.ErrSlowConsumer); k.perm {
		t.Errorf("key %+v of %v; want no refusal", k, nats.ErrSlowConsumer)
	}
}

// FuzzPermission: the text comes from the server; whatever it holds, a
// refusal's key has a bounded subject, the start of the one read.
func FuzzPermission(f *testing.F) {
	f.Add(`Permissions Violation for Publish to "denied.a"`)
	f.Add(`Permissions Violation for Subscription to "a" using queue "q" (sid "1")`)
	f.Add(`Permissions Violation for Publish with Reply of "`)
	f.Add(`Permissions Violation for Subscription to `)
	f.Fuzz(func(t *testing.T, text string) {
		err := fmt.Errorf("%w: %s", nats.ErrPermissionViolation, text)
		_, subject, _ := natsrefusal.Read(err)
		k := keyOf(nil, err)
		if !k.perm || len(k.subject) > maxKeySubject || !strings.HasPrefix(subject, k.subject) {
			t.Errorf("key %+v of a refusal on %q", k, subject)
		}
	})
}
