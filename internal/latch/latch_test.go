package latch

import (
	"sync"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestALatchFiresOnceWhoeverAsksFirst(t *testing.T) {
	t.Run("asked, then fired", func(t *testing.T) {
		var l Latch
		done := l.Done()
		if l.Fired() {
			t.Fatal("fired before Fire")
		}
		l.Fire()
		l.Fire()
		<-done
	})
	t.Run("fired, then asked", func(t *testing.T) {
		var l Latch
		l.Fire()
		<-l.Done()
		if !l.Fired() {
			t.Fatal("not fired after Fire")
		}
	})
	t.Run("concurrently", func(t *testing.T) {
		var l Latch
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() { l.Fire(); <-l.Done() })
		}
		wg.Wait()
	})
}
