package events

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/loomrt/loom/config"
)

func TestMatchSubjectFollowsNATSRules(t *testing.T) {
	for _, c := range []struct {
		pattern, subject string
		want             bool
	}{
		{"namespace.a.kv", "namespace.a.kv", true},
		{"namespace.a.kv", "namespace.a.kvx", false},
		{"namespace.a.component.*.kv", "namespace.a.component.w.kv", true},
		{"namespace.a.component.*.kv", "namespace.a.component.w.endpoint.e.kv", false},
		{"namespace.a.>", "namespace.a.component.w.endpoint.e.kv", true},
		{"namespace.a.>", "namespace.a", false},
		{"namespace.*.kv", "namespace.a%2Eb.kv", true},
		{"namespace.a.*", "namespace.a.kv", true},
		{"namespace.a.*", "namespace.a.component.w.kv", false},
		{"namespace.a.kv", "namespace.a", false},
		{"namespace.a", "namespace.a.kv", false},
	} {
		if got := matchSubject(c.pattern, c.subject); got != c.want {
			t.Errorf("matchSubject(%q, %q) = %v, want %v", c.pattern, c.subject, got, c.want)
		}
	}
}

func TestLiteralPrefixStopsAtTheFirstWildcard(t *testing.T) {
	for pattern, want := range map[string]string{
		"namespace.a.component.w.kv":  "namespace.a.component.w.kv",
		"namespace.a.component.*.kv":  "namespace.a.component.",
		"namespace.*.kv":              "namespace.",
		"namespace.a.>":               "namespace.a.",
		"namespace.a.component.w.*":   "namespace.a.component.w.",
		"namespace.a.component.w*.kv": "namespace.a.component.w*.kv",
	} {
		if got := literalPrefix(pattern); got != want {
			t.Errorf("literalPrefix(%q) = %q, want %q", pattern, got, want)
		}
	}
}

func TestTrackerClassifiesEachArrival(t *testing.T) {
	tr := newTracker()
	type step struct {
		pub, seq     uint64
		want         verdict
		from, missed uint64
	}
	for i, s := range []step{
		{1, 5, inOrder, 0, 0}, // first heard: the baseline, not a loss
		{1, 6, inOrder, 0, 0},
		{1, 9, gap, 7, 2},
		{1, 8, late, 0, 0},
		{1, 8, duplicate, 0, 0},
		{1, 6, duplicate, 0, 0},
		{1, 7, late, 0, 0},
		{1, 10, inOrder, 0, 0},
		{1, 4, inOrder, 0, 0}, // from before the baseline: not counted
		{2, 0, inOrder, 0, 0}, // a new publisher (a restart) starts afresh
		{2, 1, inOrder, 0, 0},
		{1, 10 + trackWindow + 5, gap, 11, trackWindow + 4},
		{1, 12, duplicate, 0, 0}, // older than the window
	} {
		v, from, missed := tr.observe(s.pub, 0, s.seq)
		if v != s.want || from != s.from || missed != s.missed {
			t.Fatalf("step %d (%d/%d): got %v from %d missed %d, want %v %d %d", i, s.pub, s.seq, v, from, missed, s.want, s.from, s.missed)
		}
	}
	tr.unobserve(2, 1)
	if v, _, _ := tr.observe(2, 0, 1); v != late {
		t.Fatalf("an unobserved event came back as %v, want late (not a duplicate)", v)
	}
	tr.forget(2)
	if tr.publishers() != 1 {
		t.Fatalf("tracking %d publishers after forgetting one of two", tr.publishers())
	}
}

func TestTrackerForgetsThePublishersOfAnInstance(t *testing.T) {
	tr := newTracker()
	tr.observe(1, 10, 0) // two publishers of instance 10
	tr.observe(2, 10, 0)
	tr.observe(3, 11, 0)
	tr.observe(4, 0, 0) // one that did not say
	tr.forgetInstance(10)
	tr.forgetInstance(0) // names no instance: forgets nothing
	if n := tr.publishers(); n != 2 {
		t.Fatalf("tracking %d publishers after forgetting the two of instance 10 among four, want 2", n)
	}
	if v, _, _ := tr.observe(1, 10, 5); v != inOrder {
		t.Fatalf("a forgotten publisher heard again: %v, want inOrder (followed afresh)", v)
	}
}

func TestTrackerForgetsTheLeastRecentPublisherPastItsBound(t *testing.T) {
	tr := newTracker()
	for id := range uint64(maxPublishers + 10) {
		tr.observe(id+1, 0, 0)
	}
	if n := tr.publishers(); n != maxPublishers {
		t.Fatalf("tracking %d publishers, want the bound %d", n, maxPublishers)
	}
}

func items(n int, from uint64) []item {
	out := make([]item, n)
	for i := range out {
		out[i].env.Sequence = from + uint64(i)
	}
	return out
}

func seqs(it []item) []uint64 {
	var out []uint64
	for _, i := range it {
		out = append(out, i.env.Sequence)
	}
	return out
}

func TestRingPolicies(t *testing.T) {
	for _, c := range []struct {
		policy  Overflow
		want    string
		dropped int
	}{
		{DropOldest, "[6 7 8 9]", 6},
		{DropNewest, "[0 1 2 3]", 6},
	} {
		t.Run(string(c.policy), func(t *testing.T) {
			r := newRing(4, c.policy)
			r.reportDrops = true
			dropped := 0
			for _, it := range items(10, 0) {
				if r.push(it) {
					dropped++
				}
			}
			got, err := r.pop(context.Background(), make([]item, 0, 16))
			if err != nil || len(got) != 5 || got[0].loss == nil || fmt.Sprint(seqs(got[1:])) != c.want || dropped != c.dropped {
				t.Fatalf("got %v (dropped %d, err %v), want a notice then %s with %d dropped", seqs(got), dropped, err, c.want, c.dropped)
			}
			if n := got[0].loss; n.Dropped != uint64(c.dropped) || !errors.Is(n, ErrLost) {
				t.Fatalf("notice %+v", n)
			}
		})
	}
}

func TestRingKeepsNoticesInPlaceAndNeverDropsThem(t *testing.T) {
	r := newRing(3, DropOldest)
	r.reportDrops = true
	r.push(items(1, 0)[0])
	r.notice(LossError{PublisherID: 1, From: 1, Lost: 2})
	r.push(items(1, 3)[0])
	got, _ := r.pop(context.Background(), make([]item, 0, 16))
	if len(got) != 3 || got[1].loss == nil || got[1].loss.Lost != 2 || got[2].env.Sequence != 3 {
		t.Fatalf("got %+v: want event 0, the notice, event 3", got)
	}
	// Pushed out by drop-oldest, a notice is merged into the next pop's
	// first notice.
	r.notice(LossError{PublisherID: 1, From: 4, Lost: 1})
	for _, it := range items(4, 6) {
		r.push(it)
	}
	got, _ = r.pop(context.Background(), make([]item, 0, 16))
	if got[0].loss == nil || got[0].loss.Lost != 1 || got[0].loss.Dropped != 1 || len(got) != 4 {
		t.Fatalf("got %+v", got)
	}
}

func TestRingBlocksUntilRoomAndCloseReleases(t *testing.T) {
	r := newRing(2, Block)
	r.push(item{})
	r.push(item{})
	pushed := make(chan bool)
	go func() { pushed <- r.push(item{}) }()
	waitPusher(t, r)
	select {
	case <-pushed:
		t.Fatal("push into a full blocking ring returned")
	default:
	}
	if n := r.len(); n != 3 {
		t.Fatalf("a full ring of 2 with a blocked push holds %d, want 3", n)
	}
	if got, _ := r.pop(context.Background(), make([]item, 0, 1)); len(got) != 1 {
		t.Fatalf("popped %d", len(got))
	}
	if dropped := <-pushed; dropped {
		t.Fatal("a blocked push reported a drop")
	}
	go func() { pushed <- r.push(item{}) }()
	waitPusher(t, r)
	r.close(nil)
	<-pushed
	got, err := r.pop(context.Background(), make([]item, 0, 8))
	if len(got) != 2 || err != nil {
		t.Fatalf("after close: %d items, %v; want the 2 buffered", len(got), err)
	}
	if _, err := r.pop(context.Background(), make([]item, 0, 8)); !errors.Is(err, errRingClosed) {
		t.Fatalf("drained closed ring: %v", err)
	}
}

// waitPusher waits until a push is blocked for room in r.
func waitPusher(t *testing.T, r *ring) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; {
		r.mu.Lock()
		n := r.pusherWaiting
		r.mu.Unlock()
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no push blocked for room after 10s")
		}
		runtime.Gosched()
	}
}

func TestRingUnpopPutsBackInOrder(t *testing.T) {
	r := newRing(8, DropOldest)
	for _, it := range items(6, 0) {
		r.push(it)
	}
	got, _ := r.pop(context.Background(), make([]item, 0, 4))
	r.push(items(1, 6)[0])
	if n := r.unpop(got[2:]); n != 0 {
		t.Fatalf("unpop dropped %d", n)
	}
	all, _ := r.pop(context.Background(), make([]item, 0, 16))
	if fmt.Sprint(seqs(all)) != "[2 3 4 5 6]" {
		t.Fatalf("after unpop: %v", seqs(all))
	}
}

func TestWallClockFollowsTheWallClock(t *testing.T) {
	var c wallClock
	// Read it across several re-anchorings, as a publisher does.
	// Bracketed by time.Now, so that being descheduled between the reads
	// cannot look like drift.
	const slack = int64(5 * time.Millisecond)
	for end := time.Now().Add(3 * clockAnchor); time.Now().Before(end); {
		before := time.Now().UnixNano()
		got := c.now()
		after := time.Now().UnixNano()
		if got < before-slack || got > after+slack {
			t.Fatalf("wall clock read %d, between %d and %d", got, before, after)
		}
		runtime.Gosched()
	}
}

// FuzzSplitZMQMessage feeds the ZeroMQ message splitter any parts: it
// never panics, accepts only 2 or 4 parts with 8-byte id and sequence, and
// every error wraps ErrEnvelope.
func FuzzSplitZMQMessage(f *testing.F) {
	f.Add([]byte("namespace.a.t"), []byte{0, 0, 0, 0, 0, 0, 0, 7}, []byte{0, 0, 0, 0, 0, 0, 0, 1}, []byte{1, 0, 0, 0, 0}, uint8(4))
	f.Add([]byte("namespace.a.t"), []byte{1, 0, 0, 0, 0}, []byte{}, []byte{}, uint8(2))
	f.Add([]byte{}, []byte{1}, []byte{2}, []byte{3}, uint8(3))
	f.Fuzz(func(t *testing.T, a, b, c, d []byte, n uint8) {
		parts := [][]byte{a, b, c, d, a}[:min(int(n%6), 5)]
		subject, frame, err := splitZMQMessage(parts)
		if err != nil {
			if !errors.Is(err, ErrEnvelope) {
				t.Fatalf("error %v does not wrap ErrEnvelope", err)
			}
			return
		}
		switch len(parts) {
		case 2:
			if subject != string(a) || !bytes.Equal(frame, b) {
				t.Fatal("2 parts split wrong")
			}
		case 4:
			if len(b) != 8 || len(c) != 8 || subject != string(a) || !bytes.Equal(frame, d) {
				t.Fatal("4 parts split wrong")
			}
		default:
			t.Fatalf("%d parts accepted", len(parts))
		}
	})
}

// TestOptionsOutOfRangeAreRefusedNamingTheOption: a value no option can
// take is an error that names the option and what to use; a zero or
// empty WithBuffer value keeps the configured one.
func TestOptionsOutOfRangeAreRefusedNamingTheOption(t *testing.T) {
	cfg := config.Default().Events
	cfg.BufferSize, cfg.Overflow = 100, string(Block)
	for _, tc := range []struct {
		name string
		opts []Option
		want string // in the error; "" for none
	}{
		{"a negative buffer size", []Option{WithBuffer(-1, DropOldest)}, "WithBuffer(-1"},
		{"DeliverFrom(0)", []Option{WithTransport(JetStream), DeliverFrom(0)}, "DeliverFrom(0)"},
		{"an unknown overflow policy", []Option{WithBuffer(10, "drop_some")}, "events.overflow"},
		{"an unknown codec", []Option{WithCodec("xml")}, "events.codec"},
		{"an unknown envelope", []Option{WithEnvelope("array")}, "events.envelope"},
		{"a durable name with a dot", []Option{WithTransport(JetStream), Durable("a.b")}, "durable name"},
		{"DeliverFrom(1)", []Option{WithTransport(JetStream), DeliverFrom(1)}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := buildOptions(cfg, tc.opts)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("got %v, want no error", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want an error naming %s", err, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		size     int
		overflow Overflow
		wantSize int
		wantOver Overflow
	}{
		{0, "", 100, Block},
		{0, DropNewest, 100, DropNewest},
		{7, "", 7, Block},
	} {
		o, err := buildOptions(cfg, []Option{WithBuffer(tc.size, tc.overflow)})
		if err != nil || o.bufferSize != tc.wantSize || o.overflow != tc.wantOver {
			t.Errorf("WithBuffer(%d, %q) over events.buffer_size 100 and overflow block: size %d, overflow %q, %v; want %d, %q",
				tc.size, tc.overflow, o.bufferSize, o.overflow, err, tc.wantSize, tc.wantOver)
		}
	}
}
