package loom_test

import (
	"context"
	"iter"
	"testing"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/internal/testutil"
)

// Lookahead.Ready is true while responses the handler sent wait to be
// taken, and at the stream's end; false once they are taken and the
// handler sends nothing more, outside the loop, and always for a call
// served in this process. A call made inside the loop with the same
// context reports on itself, then hands the Lookahead back.
func TestLookaheadReportsWaitingResponses(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		remote := !c.cfg.Client.LocalFastPath
		srv, cli := c.runtime(), c.runtime()
		more, finish := make(chan struct{}), make(chan struct{})
		serve(t, srv, "ns/ahead/burst", func(ctx context.Context, n int) iter.Seq2[int, error] {
			return func(yield func(int, error) bool) {
				for i := range n {
					if !yield(i, nil) {
						return
					}
				}
				select {
				case <-more:
				case <-ctx.Done():
					return
				}
				if !yield(n, nil) {
					return
				}
				select {
				case <-finish:
				case <-ctx.Done():
				}
			}
		})
		serve(t, srv, "ns/ahead/one", func(ctx context.Context, n int) iter.Seq2[int, error] {
			return func(yield func(int, error) bool) { yield(n, nil) }
		})
		burst := client[int, int](t, cli, "ns/ahead/burst")
		one := client[int, int](t, cli, "ns/ahead/one")
		waitInstances(t, burst, 1)
		waitInstances(t, one, 1)

		var la loom.Lookahead
		if la.Ready() {
			t.Fatal("Ready before any call")
		}
		ctx := loom.WithLookahead(testutil.Timeout(t, 20*time.Second), &la)
		// ready asks, of a remote call, that Ready become true (the
		// response is on its way); of a local one, that it stay false.
		ready := func(what string) {
			t.Helper()
			if remote {
				testutil.Eventually(t, 10*time.Second, what, la.Ready)
			} else if la.Ready() {
				t.Fatalf("Ready for a call served in this process (%s)", what)
			}
		}
		var got []int
		for v, err := range burst.Generate(ctx, 3) {
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, v)
			switch v {
			case 0:
				ready("item 1 waiting")
			case 1:
				ready("item 2 waiting")
				for w, err := range one.Generate(ctx, 7) {
					if err != nil || w != 7 {
						t.Fatalf("nested call: %d, %v", w, err)
					}
				}
				if la.Ready() != remote {
					t.Fatalf("after a nested call, Ready = %v, want %v: item 2 still waits", la.Ready(), remote)
				}
			case 2:
				if la.Ready() {
					t.Fatal("Ready while the handler sends nothing")
				}
				close(more)
				ready("item 3 waiting")
			case 3:
				if la.Ready() {
					t.Fatal("Ready while the handler waits to finish")
				}
				close(finish)
				ready("the end waiting")
			}
		}
		if len(got) != 4 {
			t.Fatalf("got %v, want [0 1 2 3]", got)
		}
		if la.Ready() {
			t.Fatal("Ready after the loop")
		}
	})
}
