package memory

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/discovery/discoverytest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestConformance(t *testing.T) {
	discoverytest.Run(t, func(t *testing.T) func() discovery.Discovery {
		return NewStore().Connect
	})
}

func TestNewStoresArePrivate(t *testing.T) {
	a, b := New(), New()
	defer a.Close()
	defer b.Close()
	ctx := t.Context()
	inst := discovery.Instance{Namespace: "ns", Component: "c", Endpoint: "e", ID: 1}
	if err := a.Register(ctx, inst); err != nil {
		t.Fatal(err)
	}
	if err := b.Register(ctx, inst); err != nil {
		t.Fatalf("Register of the same key in another New store: %v", err)
	}
	got, err := b.List(ctx, discovery.Query{})
	if err != nil || len(got) != 1 {
		t.Fatalf("List = %v, %v; want only b's record", got, err)
	}
}

func TestDefaultIsOneStore(t *testing.T) {
	//lint:ignore SA4000 two calls must return one store
	if Default() != Default() {
		t.Fatal("Default returned two stores")
	}
	a, b := Default().Connect(), Default().Connect()
	defer b.Close()
	ctx := t.Context()
	inst := discovery.Instance{Namespace: "default-test", Component: "c", Endpoint: "e", ID: 1}
	if err := a.Register(ctx, inst); err != nil {
		t.Fatal(err)
	}
	if got, _ := b.List(ctx, discovery.Query{Namespace: "default-test"}); len(got) != 1 {
		t.Fatalf("another client of Default lists %v; want the record", got)
	}
	a.Close()
	if got, _ := b.List(ctx, discovery.Query{Namespace: "default-test"}); len(got) != 0 {
		t.Fatalf("after Close another client of Default lists %v; want nothing", got)
	}
}

// A watcher that never reads holds at most one pending change per record,
// however many changes happen.
func TestStalledWatcherMemoryIsBounded(t *testing.T) {
	s := NewStore()
	d := s.Connect()
	defer d.Close()
	ctx := t.Context()
	if _, err := d.Watch(ctx, discovery.Query{}); err != nil {
		t.Fatal(err)
	}
	const records, rounds = 10, 1000
	start := time.Now()
	for r := range rounds {
		for id := uint64(1); id <= records; id++ {
			inst := discovery.Instance{Namespace: "ns", Component: "c", Endpoint: "e", ID: id, Address: string(rune('a' + r%26))}
			if err := d.Register(ctx, inst); err != nil {
				t.Fatal(err)
			}
			if r < rounds-1 {
				if err := d.Unregister(ctx, inst); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	t.Logf("%d changes with a stalled watcher took %v", 2*records*rounds, time.Since(start))
	s.mu.Lock()
	defer s.mu.Unlock()
	for w := range s.watchers {
		if n := len(w.pending); n > records {
			t.Errorf("stalled watcher holds %d pending changes; want at most %d", n, records)
		}
		if n := len(w.told); n > records {
			t.Errorf("stalled watcher remembers %d records; want at most %d", n, records)
		}
	}
}

// A watch on a client that is closed while the caller's context is still
// live ends, and Close does not return before its goroutine has.
func TestCloseWaitsForWatchGoroutines(t *testing.T) {
	s := NewStore()
	d := s.Connect()
	ch, err := d.Watch(context.Background(), discovery.Query{})
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	s.mu.Lock()
	n := len(s.watchers)
	s.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d watchers still attached after Close", n)
	}
	for range ch {
	}
}
