package testutil

import (
	"context"
	"log/slog"
	"testing"
	"time"
)

// Eventually polls cond until it holds, and fails the test if within
// passes first, saying what it waited for. It polls every millisecond at
// first and backs off to every 10 ms: a condition is seen soon after it
// holds, even one that holds only for a moment, without a tight loop over
// a long wait. Tests wait on conditions this way, never on a
// sleep; give within room for a loaded machine (10-30 s).
func Eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	EventuallyNoError(t, within, what, func() error {
		if cond() {
			return nil
		}
		return errNotYet
	})
}

// EventuallyNoError is Eventually for a check that says why it fails: it
// polls f until it returns nil, and the failure gives f's last error.
func EventuallyNoError(t testing.TB, within time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	pause := time.Millisecond
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			if err == errNotYet {
				t.Fatalf("timed out after %s waiting for %s", within, what)
			}
			t.Fatalf("timed out after %s waiting for %s: %v", within, what, err)
		}
		time.Sleep(pause)
		pause = min(2*pause, 10*time.Millisecond)
	}
}

type notYet struct{}

func (notYet) Error() string { return "not yet" }

var errNotYet error = notYet{}

// Timeout returns a context that ends after d, or when the test ends.
func Timeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// Quiet is a logger that discards everything, for the runtimes of tests
// that do not read their logs.
var Quiet = slog.New(slog.DiscardHandler)
