//go:build kube

package kube

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/discovery/internal/watchview"
	"github.com/loomrt/loom/internal/testutil"
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
	for !maps.EqualFunc(set, wantSet, watchview.Same) {
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
	srv.AdvanceResourceVersion(500)
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
	if got := list(t, watcher); len(got) != 3 || !watchview.Same(got[0], a) || !watchview.Same(got[1], b) || !watchview.Same(got[2], c) {
		t.Fatalf("List after the restart = %+v; want a, b and c", got)
	}
	// Changes after the restart arrive.
	if err := o2.Unregister(t.Context(), b); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, ch, discovery.Removed, b, wait)
}

// An owner cut off from the API server for longer than the TTL, while a
// watcher still reaches it: the watcher drops the owner's record within the
// TTL and deletes its Lease a TTL later; when the owner is back it creates
// the record again and the watcher gets it back.
func TestAnOwnerCutOffForLongerThanTheTTLComesBack(t *testing.T) {
	srv, cs := startAPIServer(t)
	ns := newNamespace(t, cs)
	const ttl = 2 * time.Second
	proxy := newCutter(t, strings.TrimPrefix(srv.URL(), "https://"))
	rc := srv.AdminConfig()
	rc.Host = "https://" + proxy.addr()
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	owner, err := Open(ctx, rc, Config{Namespace: ns, TTL: ttl, Logger: quiet})
	if err != nil {
		t.Fatalf("Open through the proxy: %v", err)
	}
	t.Cleanup(func() { _ = owner.Close() })
	watcher := open(t, srv, Config{Namespace: ns, TTL: ttl})
	ch, _ := watchFrom(t, watcher)
	inst := testInst(1, "10.0.0.1:1")
	register(t, owner, inst)
	expectEvent(t, ch, discovery.Added, inst, wait)

	proxy.setDown(true)
	cut := time.Now()
	expectEvent(t, ch, discovery.Removed, inst, ttl+wait)
	t.Logf("the watcher dropped the cut-off owner's record %v after the cut", time.Since(cut).Round(time.Millisecond))
	testutil.EventuallyNoError(t, 2*ttl+wait, "the watcher to delete the expired Lease", func() error {
		_, err := cs.CoordinationV1().Leases(ns).Get(t.Context(), LeaseName(inst.Key()), metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there (get: %v)", err)
	})
	proxy.setDown(false)
	back := time.Now()
	expectEvent(t, ch, discovery.Added, inst, wait)
	t.Logf("the owner's record was back %v after its connection was", time.Since(back).Round(time.Millisecond))
	if got := list(t, watcher); len(got) != 1 || !watchview.Same(got[0], inst) {
		t.Fatalf("List = %+v; want %s", got, inst.Key())
	}
	// It is renewed from then on: another two TTLs change nothing.
	expectQuiet(t, ch, 2*ttl)
}

// An Unregister that fails because the API server is down is an error, and
// the record it could not delete is not renewed any more. The owner deletes
// it once the API server is back, within a second, rather than leaving it
// to expire: the TTL here is longer than the test waits.
func TestARecordWhoseUnregisterFailedIsRemovedAfterTheOutage(t *testing.T) {
	srv, cs := startAPIServer(t)
	ns := newNamespace(t, cs)
	const ttl = 10 * wait
	owner := open(t, srv, Config{Namespace: ns, TTL: ttl})
	watcher := open(t, srv, Config{Namespace: ns, TTL: ttl})
	gone, kept := testInst(1, "10.0.0.1:1"), testInst(2, "10.0.0.1:2")
	register(t, owner, gone)
	register(t, owner, kept)
	ch, set := watchFrom(t, watcher)
	if len(set) != 2 {
		t.Fatalf("snapshot %v; want two records", slices.Sorted(maps.Keys(set)))
	}

	srv.Stop()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	err := owner.Unregister(ctx, gone)
	cancel()
	if err == nil {
		t.Fatal("Unregister with the API server stopped succeeded")
	}
	srv.Restart()
	back := time.Now()
	expectEvent(t, ch, discovery.Removed, gone, wait)
	t.Logf("the record whose Unregister failed left the watch %v after the API server was back", time.Since(back).Round(time.Millisecond))
	if _, err := cs.CoordinationV1().Leases(ns).Get(t.Context(), LeaseName(gone.Key()), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("the Lease of the record whose Unregister failed: %v, want NotFound", err)
	}
	if got := list(t, watcher); len(got) != 1 || !watchview.Same(got[0], kept) {
		t.Fatalf("List = %+v; want only %s", got, kept.Key())
	}
	register(t, owner, gone) // and its key is free again
}
