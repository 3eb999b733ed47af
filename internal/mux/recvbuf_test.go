package mux

import (
	"runtime"
	"testing"
)

func TestBufListKeepsBuffersAcrossCollections(t *testing.T) {
	l := bufList{max: 4 << 20}
	b := &recvBuf{b: make([]byte, 0, 1<<20)}
	l.put(b)
	// A sync.Pool is empty after two collections; the list is not.
	runtime.GC()
	runtime.GC()
	if got := l.get(1 << 20); got != b {
		t.Fatalf("after two collections get = %p, want the buffer put (%p)", got, b)
	}
	if got := l.get(1); got != nil {
		t.Fatalf("get from an empty list = %p, want nil", got)
	}
}

func TestBufListTakesTheLatestLargeEnough(t *testing.T) {
	l := bufList{max: 8 << 20}
	small := &recvBuf{b: make([]byte, 0, 256<<10)}
	big := &recvBuf{b: make([]byte, 0, 1<<20)}
	l.put(big)
	l.put(small)
	if got := l.get(512 << 10); got != big {
		t.Fatalf("get(512 KiB) = %p, want the 1 MiB buffer %p (the latest is too small)", got, big)
	}
	if got := l.get(512 << 10); got != nil {
		t.Fatalf("get(512 KiB) with only 256 KiB left = %p, want nil", got)
	}
	if got := l.get(1); got != small {
		t.Fatalf("get(1) = %p, want the 256 KiB buffer %p", got, small)
	}
	if l.bytes != 0 || len(l.bufs) != 0 {
		t.Fatalf("emptied list holds %d bytes in %d buffers", l.bytes, len(l.bufs))
	}
}

func TestBufListLetsTheOldestGoBeyondItsBudget(t *testing.T) {
	l := bufList{max: 3 << 20}
	var bufs []*recvBuf
	for range 4 {
		b := &recvBuf{b: make([]byte, 0, 1<<20)}
		bufs = append(bufs, b)
		l.put(b)
	}
	if l.bytes != 3<<20 || len(l.bufs) != 3 {
		t.Fatalf("list holds %d bytes in %d buffers, want 3 MiB in 3", l.bytes, len(l.bufs))
	}
	for i := 3; i >= 1; i-- {
		if got := l.get(1); got != bufs[i] {
			t.Fatalf("get = %p, want buffer %d (%p): the newest first, the oldest gone", got, i, bufs[i])
		}
	}
	if got := l.get(1); got != nil {
		t.Fatalf("get = %p, want nil: the oldest buffer went over the budget", got)
	}
	l.put(&recvBuf{b: make([]byte, 0, 4<<20)})
	if len(l.bufs) != 0 {
		t.Fatal("a buffer above the whole budget was kept")
	}
}
