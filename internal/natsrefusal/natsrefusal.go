// Package natsrefusal reads a NATS server's refusal of an operation for
// want of permission out of the error a connection reports. The server
// says it refused a publish or a subscription only to the connection, as
// an asynchronous error whose text names the operation and the subject;
// the parts of Loom that wait for an answer that never comes (an enqueue,
// an ack, a subscription) ask whether this is why, and natsconn counts
// refusals by kind.
package natsrefusal

import (
	"errors"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/metrics"
)

// Read reads err, an error a connection reported (nc.LastError, or
// its error handler's), as a NATS server's refusal of an operation for
// want of permission: the kind of operation (metrics.PermissionPublish,
// PermissionReply, PermissionSubscribe, or PermissionOther for a form
// not recognised) and its subject. ok is false for any other error. The
// server reports a refusal only to the connection, asynchronously, so a
// caller whose request timed out asks whether this is why.
func Read(err error) (kind, subject string, ok bool) {
	if !errors.Is(err, nats.ErrPermissionViolation) {
		return "", "", false
	}
	kind, subject = parse(err.Error())
	return kind, subject, true
}

// parse reads the kind and subject of a permission violation from
// its text, which nats.go takes from the server:
//
//	nats: permissions violation: Permissions Violation for Publish to "a.b"
//	... for Publish with Reply of "_INBOX.x"
//	... for Subscription to "a.>" using queue "q" (sid "3")
func parse(text string) (kind, subject string) {
	const marker = "Permissions Violation for "
	i := strings.Index(text, marker)
	if i < 0 {
		return metrics.PermissionOther, ""
	}
	rest := text[i+len(marker):]
	for _, f := range []struct{ prefix, kind string }{
		{"Publish to ", metrics.PermissionPublish},
		{"Publish with Reply of ", metrics.PermissionReply},
		{"Subscription to ", metrics.PermissionSubscribe},
	} {
		if r, ok := strings.CutPrefix(rest, f.prefix); ok {
			if q, err := strconv.QuotedPrefix(r); err == nil {
				if s, err := strconv.Unquote(q); err == nil {
					return f.kind, s
				}
			}
			s, _, _ := strings.Cut(r, " ")
			return f.kind, s
		}
	}
	return metrics.PermissionOther, ""
}
