package owned

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
)

func TestForEachCallsEveryItemAtMostWritersAtOnce(t *testing.T) {
	items := make([]int, 100)
	for i := range items {
		items[i] = i
	}
	var running, peak, sum atomic.Int64
	release := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		ForEach(context.Background(), items, func(i int) {
			n := running.Add(1)
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
			<-release
			sum.Add(int64(i))
			running.Add(-1)
		})
	}()
	close(release)
	<-done
	if got := sum.Load(); got != 99*100/2 {
		t.Errorf("sum of the items seen %d, want %d: some item was skipped or seen twice", got, 99*100/2)
	}
	if p := peak.Load(); p > Writers {
		t.Errorf("%d calls ran at once, want at most %d", p, Writers)
	}
}

func TestForEachStartsNothingOnceTheContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var calls atomic.Int64
	ForEach(ctx, []int{1, 2, 3}, func(int) { calls.Add(1) })
	if n := calls.Load(); n != 0 {
		t.Errorf("%d calls after ctx ended, want none", n)
	}
}

func TestRemoveAllCountsAndJoinsTheFailuresInOrder(t *testing.T) {
	n, err := RemoveAll(context.Background(), []int{3, 1, 2, 4}, func(_ context.Context, i int) error {
		if i%2 == 1 {
			return fmt.Errorf("record %d", i)
		}
		return nil
	})
	if n != 2 || err == nil || err.Error() != "record 1\nrecord 3" {
		t.Errorf("RemoveAll = %d, %v; want 2 failures, record 1 then record 3", n, err)
	}
	n, err = RemoveAll(context.Background(), []int{2, 4}, func(context.Context, int) error { return nil })
	if n != 0 || err != nil {
		t.Errorf("RemoveAll of removable records = %d, %v; want 0, nil", n, err)
	}
}
