package natsconn

import (
	"fmt"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/internal/natsrefusal"
	"github.com/loomrt/loom/metrics"
)

func TestPermissionReadsTheKindAndSubjectOfEachRefusal(t *testing.T) {
	for _, tt := range []struct {
		server        string // the server's -ERR text
		kind, subject string
	}{
		{`Permissions Violation for Publish to "denied.a"`, metrics.PermissionPublish, "denied.a"},
		{`Permissions Violation for Publish with Reply of "_R_.x"`, metrics.PermissionReply, "_R_.x"},
		{`Permissions Violation for Subscription to "denied.>"`, metrics.PermissionSubscribe, "denied.>"},
		{`Permissions Violation for Subscription to "a.b" using queue "q"`, metrics.PermissionSubscribe, "a.b"},
		{`Permissions Violation for Subscription to "a.b" using queue "q" (sid "3")`, metrics.PermissionSubscribe, "a.b"},
		{`Permissions Violation for Subscription to "a.b", too many tokens`, metrics.PermissionSubscribe, "a.b"},
		{`Permissions Violation for Publish to "quote\"d"`, metrics.PermissionPublish, `quote"d`},
		{`Permissions Violation for Publish to unquoted.subject`, metrics.PermissionPublish, "unquoted.subject"},
		{`Permissions Violation for Something Else`, metrics.PermissionOther, ""},
		{`something else entirely`, metrics.PermissionOther, ""},
	} {
		t.Run(tt.server, func(t *testing.T) {
			err := fmt.Errorf("%w: %s", nats.ErrPermissionViolation, tt.server) // as nats.go wraps it
			k := keyOf(nil, err)
			if !k.perm || k.kind != tt.kind || k.subject != tt.subject {
				t.Errorf("key %+v; want a permission violation of kind %q on %q", k, tt.kind, tt.subject)
			}
		})
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
