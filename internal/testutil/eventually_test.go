package testutil_test

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/loomrt/loom/internal/testutil"
)

// recorder is a testing.TB that records a failure instead of ending the
// test, so that the helpers' failures can be checked.
type recorder struct {
	testing.TB
	failed string
}

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = fmt.Sprintf(format, args...)
	panic(r)
}

// run calls f with a recorder and returns what it failed with, or "".
func run(t *testing.T, f func(tb testing.TB)) (failed string) {
	r := &recorder{TB: t}
	defer func() {
		if p := recover(); p != nil && p != any(r) {
			panic(p)
		}
		failed = r.failed
	}()
	f(r)
	return ""
}

func TestEventuallyWaitsForTheCondition(t *testing.T) {
	var n atomic.Int32
	if failed := run(t, func(tb testing.TB) {
		testutil.Eventually(tb, 10*time.Second, "the fifth poll", func() bool { return n.Add(1) == 5 })
	}); failed != "" {
		t.Fatalf("failed: %s", failed)
	}
	if n.Load() != 5 {
		t.Fatalf("polled %d times, want 5", n.Load())
	}
}

func TestEventuallyFailsNamingWhatItWaitedFor(t *testing.T) {
	failed := run(t, func(tb testing.TB) {
		testutil.Eventually(tb, 20*time.Millisecond, "a condition that never holds", func() bool { return false })
	})
	if !strings.Contains(failed, "timed out after 20ms waiting for a condition that never holds") {
		t.Fatalf("failed with %q", failed)
	}
	failed = run(t, func(tb testing.TB) {
		testutil.EventuallyNoError(tb, 20*time.Millisecond, "the record", func() error { return errors.New("key not found") })
	})
	if !strings.Contains(failed, "waiting for the record: key not found") {
		t.Fatalf("failed with %q", failed)
	}
}
