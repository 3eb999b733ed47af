package jsconsume

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestBackoffDoublesUpToItsMaximum(t *testing.T) {
	p := Policy{BackoffInitial: 100 * time.Millisecond, BackoffMax: time.Second}
	for failures, want := range map[int]time.Duration{
		0: 100 * time.Millisecond, 1: 100 * time.Millisecond, 2: 200 * time.Millisecond,
		3: 400 * time.Millisecond, 4: 800 * time.Millisecond, 5: time.Second, 60: time.Second,
	} {
		if got := p.Backoff(failures); got != want {
			t.Errorf("Backoff(%d) = %s, want %s", failures, got, want)
		}
	}
	p.BackoffJitter = 0.5
	for range 100 {
		if d := p.Backoff(3); d < 200*time.Millisecond || d > 400*time.Millisecond {
			t.Fatalf("jittered Backoff(3) = %s, want within [200ms, 400ms]", d)
		}
	}
}

func TestDeadLetterHeadersRoundTrip(t *testing.T) {
	info := DeadLetterInfo{
		Queue: "prefill", Group: "worker-group", Subject: "prefill.queue", Reason: ReasonFailed,
		Error: "line one\nline two\x00", Deliveries: 5, StreamSeq: 42,
		Time: time.Date(2025, 7, 1, 12, 0, 0, 5, time.UTC), MsgID: "abc",
	}
	h := nats.Header{}
	info.Header(h)
	got, err := ParseDeadLetter(h)
	if err != nil {
		t.Fatal(err)
	}
	want := info
	want.Error = "line one line two "
	if got != want {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
	long := strings.Repeat("é", 2000)
	if s := oneLine(long, maxErrorHeader); len(s) > maxErrorHeader || !utf8.ValidString(s) || !strings.HasSuffix(s, "...") {
		t.Errorf("oneLine of a long error: %d bytes, valid %v", len(s), utf8.ValidString(s))
	}
}

// FuzzParseDeadLetter: dead-letter headers are read back from the network
// (loom queue dlq).
func FuzzParseDeadLetter(f *testing.F) {
	f.Add("q", "3", "17", "2025-07-01T12:00:00Z", "boom")
	f.Add("q", "-1", "x", "yesterday", "")
	f.Add("", "99999999999999999999", "18446744073709551616", "", "\xff")
	f.Fuzz(func(t *testing.T, queue, deliveries, seq, when, msg string) {
		h := nats.Header{}
		h.Set(HeaderQueue, queue)
		h.Set(HeaderDeliveries, deliveries)
		h.Set(HeaderStreamSeq, seq)
		h.Set(HeaderTime, when)
		h.Set(HeaderError, msg)
		info, err := ParseDeadLetter(h)
		if err != nil {
			return
		}
		if info.Deliveries < 0 {
			t.Fatalf("negative delivery count from %q", deliveries)
		}
		h2 := nats.Header{}
		info.Header(h2)
		if _, err := ParseDeadLetter(h2); err != nil {
			t.Fatalf("headers written from %+v do not parse: %v", info, err)
		}
	})
}
