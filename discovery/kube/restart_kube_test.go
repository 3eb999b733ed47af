//go:build kube

package kube

import (
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/loomrt/loom/discovery"
)

// convergesOn reads ch, applying its events to set (the watch's snapshot),
// until set holds exactly want, each at its address, and fails the test if
// that does not happen within the given time.
func convergesOn(t *testing.T, ch <-chan discovery.Event, set map[string]discovery.Instance, within time.Duration, want ...discovery.Instance) {
	t.Helper()
	wantSet := make(map[string]discovery.Instance, len(want))
	for _, inst := range want {
		wantSet[inst.Key()] = inst
	}
	deadline := time.After(within)
	for !maps.EqualFunc(set, wantSet, same) {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatal("watch channel closed before it converged")
			}
			switch ev.Kind {
			case discovery.Added:
				set[ev.Instance.Key()] = ev.Instance
			case discovery.Removed:
				delete(set, ev.Instance.Key())
			}
		case <-deadline:
			t.Fatalf("the watch holds %v %v after the restart; want %v", slices.Sorted(maps.Keys(set)), within, slices.Sorted(maps.Keys(wantSet)))
		}
	}
}

// The API server restarts on an empty store (etcd lost, or rebuilt from
// nothing), faster than the TTL: every Lease is gone, and resource versions
// start over, far below those the clients saw (a store that has served for
// a while is far ahead of a new one). Owners create their records again, a
// watch lists again instead of waiting for a version the new store has not
// reached, lets go of the record whose owner died meanwhile, and gets the
// records registered after the restart.
func TestAnAPIServerRestartedWithoutItsDataGetsTheRecordsBack(t *testing.T) {
	srv, cs := startAPIServer(t)
	// The API server creates namespace "default" again itself; a test
	// namespace would be gone with the data.
	const ns = "default"
	// A TTL longer than the restart, so that the owners find their
	// Leases gone while their last renewal is still recent: nothing
	// expired, the store lost them.
	const ttl = 30 * time.Second
	// A store that has served for a while: its resource version is far
	// past where a new one starts.
	var writes sync.WaitGroup
	for w := range 10 {
		writes.Go(func() {
			for i := range 20 {
				l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("unrelated-%d-%d", w, i)}}
				if _, err := cs.CoordinationV1().Leases(ns).Create(t.Context(), l, metav1.CreateOptions{}); err != nil {
					t.Errorf("create an unrelated Lease: %v", err)
					return
				}
			}
		})
	}
	writes.Wait()
	if t.Failed() {
		t.FailNow()
	}
	o1 := open(t, srv, Config{Namespace: ns, TTL: ttl})
	o2 := open(t, srv, Config{Namespace: ns, TTL: ttl})
	dying := open(t, srv, Config{Namespace: ns, TTL: ttl})
	watcher := open(t, srv, Config{Namespace: ns, TTL: ttl})
	a, b, ghost := testInst(0xa, "10.0.0.1:1"), testInst(0xb, "10.0.0.2:1"), testInst(0xd, "10.0.0.4:1")
	register(t, o1, a)
	register(t, o2, b)
	ch, set := watchFrom(t, watcher)
	register(t, dying, ghost)
	expectEvent(t, ch, discovery.Added, ghost, wait)
	set[ghost.Key()] = ghost
	crash(t, dying)

	down := time.Now()
	srv.RestartWithoutData()
	back := time.Now()
	t.Logf("API server down %v (restart on an empty store included)", back.Sub(down).Round(time.Millisecond))

	c := testInst(0xc, "10.0.0.3:1")
	register(t, o1, c)
	convergesOn(t, ch, set, ttl/3+wait, a, b, c)
	t.Logf("the watch converged %v after the API server was ready again", time.Since(back).Round(time.Millisecond))
	for _, inst := range []discovery.Instance{a, b, c} {
		if _, err := cs.CoordinationV1().Leases(ns).Get(t.Context(), LeaseName(inst.Key()), metav1.GetOptions{}); err != nil {
			t.Fatalf("the Lease of %s on the new store: %v", inst.Key(), err)
		}
	}
	if got := list(t, watcher); len(got) != 3 || !same(got[0], a) || !same(got[1], b) || !same(got[2], c) {
		t.Fatalf("List after the restart = %+v; want a, b and c", got)
	}
	// Changes after the restart arrive.
	if err := o2.Unregister(t.Context(), b); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, ch, discovery.Removed, b, wait)
}
