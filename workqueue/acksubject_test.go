package workqueue

import (
	"strings"
	"testing"
)

func TestAckSubject(t *testing.T) {
	for _, c := range []struct {
		subject, prefix, stream, consumer string
	}{
		{"$JS.ACK.jobs.workers.1.2.3.1700000000000000000.0", "$JS.ACK.jobs.workers.", "jobs", "workers"},
		{"$JS.ACK._.ACCHASH.jobs.workers.1.2.3.1700000000000000000.0.TOKEN", "$JS.ACK._.ACCHASH.jobs.workers.", "jobs", "workers"},
		{"$JS.ACK.hub.ACCHASH.jobs.workers.1.2.3.1700000000000000000.0", "$JS.ACK.hub.ACCHASH.jobs.workers.", "jobs", "workers"}, // no token: still v2
		{"$JS.ACK._.ACCHASH.jobs.workers.1.2.3.1700000000000000000.0.TOKEN.more", "$JS.ACK._.ACCHASH.jobs.workers.", "jobs", "workers"},
	} {
		prefix, stream, consumer, ok := ackSubject(c.subject)
		if !ok || prefix != c.prefix || stream != c.stream || consumer != c.consumer {
			t.Errorf("ackSubject(%q) = %q, %q, %q, %v; want %q, %q, %q", c.subject, prefix, stream, consumer, ok, c.prefix, c.stream, c.consumer)
		}
	}
	for _, bad := range []string{
		"",
		"$JS.ACK.",
		"$JS.ACK.jobs.workers",
		"$JS.ACK.jobs.workers.1.2.3.4",            // 8 tokens: neither form
		"$JS.ACK.a.b.jobs.workers.1.2.3.4",        // 10 tokens: neither form
		"$JS.API.jobs.workers.1.2.3.4.5",          // not an ack
		"$JS.ACK.jobs..1.2.3.4.5",                 // an empty token
		"_INBOX.jobs.workers.1.2.3.4.5.6.7.8.9.0", // not an ack
	} {
		if prefix, stream, consumer, ok := ackSubject(bad); ok {
			t.Errorf("ackSubject(%q) = %q, %q, %q, true; want not an ack subject", bad, prefix, stream, consumer)
		}
	}
}

// FuzzAckSubject: any subject, as a refusal's text may carry, reads as an
// ack subject whose prefix it starts with and whose stream and consumer
// tokens end that prefix, or as none.
func FuzzAckSubject(f *testing.F) {
	f.Add("$JS.ACK.jobs.workers.1.2.3.1700000000000000000.0")
	f.Add("$JS.ACK._.ACCHASH.jobs.workers.1.2.3.1700000000000000000.0.TOKEN")
	f.Add("$JS.ACK.a.b")
	f.Fuzz(func(t *testing.T, subject string) {
		prefix, stream, consumer, ok := ackSubject(subject)
		if !ok {
			return
		}
		if !strings.HasPrefix(subject, prefix) || !strings.HasSuffix(prefix, "."+stream+"."+consumer+".") {
			t.Fatalf("ackSubject(%q) = %q, %q, %q", subject, prefix, stream, consumer)
		}
		if stream == "" || consumer == "" || strings.Contains(stream, ".") || strings.Contains(consumer, ".") {
			t.Fatalf("ackSubject(%q): stream %q, consumer %q", subject, stream, consumer)
		}
	})
}
