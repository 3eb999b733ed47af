package natsrefusal

import (
	"errors"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/metrics"
)

func TestReadTakesTheKindAndSubjectOfEachRefusal(t *testing.T) {
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
			kind, subject, ok := Read(err)
			if !ok || kind != tt.kind || subject != tt.subject {
				t.Errorf("Read = %q, %q, %v; want a refusal of kind %q on %q", kind, subject, ok, tt.kind, tt.subject)
			}
		})
	}
	for _, err := range []error{nil, errors.New(`Permissions Violation for Publish to "a"`), nats.ErrTimeout} {
		if kind, subject, ok := Read(err); ok {
			t.Errorf("Read(%v) = %q, %q, true; want no refusal", err, kind, subject)
		}
	}
}

// FuzzParse: the text comes from the server; whatever it holds, it is
// read without a panic into a known kind, with no subject for other.
func FuzzParse(f *testing.F) {
	f.Add(`nats: permissions violation: Permissions Violation for Publish to "denied.a"`)
	f.Add(`nats: permissions violation: Permissions Violation for Subscription to "a" using queue "q" (sid "1")`)
	f.Add(`Permissions Violation for Publish with Reply of "`)
	f.Add(`Permissions Violation for Subscription to `)
	f.Fuzz(func(t *testing.T, text string) {
		kind, subject := parse(text)
		switch kind {
		case metrics.PermissionPublish, metrics.PermissionReply, metrics.PermissionSubscribe:
		case metrics.PermissionOther:
			if subject != "" {
				t.Errorf("kind other with subject %q", subject)
			}
		default:
			t.Errorf("kind %q", kind)
		}
	})
}
