//go:build kube

package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/discovery/internal/watchview"
	"github.com/loomrt/loom/internal/kubetest"
	"github.com/loomrt/loom/internal/testutil"
)

// crash stops d as a killed process stops: no more renewals, no watches,
// and its Leases left where they are.
func crash(t *testing.T, d *Discovery) {
	t.Helper()
	d.mu.Lock()
	d.closed = true
	d.owned = nil
	d.mu.Unlock()
	if err := d.tasks.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
}

func testInst(id uint64, addr string) discovery.Instance {
	return discovery.Instance{Namespace: "ns", Component: "worker", Endpoint: "generate", ID: id, Transport: "tcp", Address: addr, Codec: "msgpack"}
}

// churn makes the changes a watch must catch up on: gone is removed,
// added registered, and kept registered again at a new address, which
// churn returns.
func churn(t *testing.T, d *Discovery, gone, added, kept discovery.Instance) discovery.Instance {
	t.Helper()
	if err := d.Unregister(t.Context(), gone); err != nil {
		t.Fatal(err)
	}
	register(t, d, added)
	if err := d.Unregister(t.Context(), kept); err != nil {
		t.Fatal(err)
	}
	moved := kept
	moved.Address = "10.0.0.9:9"
	register(t, d, moved)
	return moved
}

func register(t *testing.T, d *Discovery, inst discovery.Instance) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	if err := d.Register(ctx, inst); err != nil {
		t.Fatalf("Register(%s): %v", inst.Key(), err)
	}
}

func list(t *testing.T, d *Discovery) []discovery.Instance {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	got, err := d.List(ctx, discovery.Query{})
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	return got
}

// watchFrom starts a watch of everything in d's namespace and reads its
// snapshot.
func watchFrom(t *testing.T, d *Discovery) (<-chan discovery.Event, map[string]discovery.Instance) {
	t.Helper()
	ch, err := d.Watch(t.Context(), discovery.Query{})
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	set := map[string]discovery.Instance{}
	for {
		ev := next(t, ch, wait)
		if ev.Kind == discovery.Synced {
			return ch, set
		}
		set[ev.Instance.Key()] = ev.Instance
	}
}

func next(t *testing.T, ch <-chan discovery.Event, within time.Duration) discovery.Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed; want an event")
		}
		return ev
	case <-time.After(within):
		t.Fatalf("no watch event within %v", within)
	}
	panic("unreachable")
}

// expectQuiet fails the test if the watch sends anything for d: after
// the restart, nothing changed that it should report.
func expectQuiet(t *testing.T, ch <-chan discovery.Event, d time.Duration) {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case ev := <-ch:
			t.Fatalf("after the restart the watch sent %v %s; want nothing", ev.Kind, ev.Instance.Key())
		case <-deadline:
			return
		}
	}
}

func expectEvent(t *testing.T, ch <-chan discovery.Event, kind discovery.EventKind, inst discovery.Instance, within time.Duration) {
	t.Helper()
	ev := next(t, ch, within)
	if ev.Kind != kind || !watchview.Same(ev.Instance, inst) {
		t.Fatalf("watch sent %v %+v; want %v %+v", ev.Kind, ev.Instance, kind, inst)
	}
}

// A process that dies without Close leaves its Lease behind, and nothing in
// Kubernetes deletes it: watchers drop the record within the TTL of its last
// renewal by their own clock, List leaves it out, and a watcher deletes the
// Lease one TTL later.
func TestAnOwnerThatStopsRenewingExpiresAndIsReaped(t *testing.T) {
	srv, cs := startAPIServer(t)
	ns := newNamespace(t, cs)
	const ttl = 2 * time.Second
	owner := open(t, srv, Config{Namespace: ns, TTL: ttl})
	watcher := open(t, srv, Config{Namespace: ns, TTL: ttl})
	ch, _ := watchFrom(t, watcher)
	inst := testInst(1, "10.0.0.1:1")
	register(t, owner, inst)
	expectEvent(t, ch, discovery.Added, inst, wait)
	// Past a renewal, so that the watcher times it from one it saw.
	renewed := func() time.Time {
		l, err := cs.CoordinationV1().Leases(ns).Get(t.Context(), LeaseName(inst.Key()), metav1.GetOptions{})
		if err != nil {
			t.Fatalf("get the Lease of %s: %v", inst.Key(), err)
		}
		return l.Spec.RenewTime.Time
	}
	first := renewed()
	testutil.Eventually(t, 2*ttl+wait, "the owner to renew its Lease", func() bool { return renewed().After(first) })
	crash(t, owner)
	died := time.Now()
	expectEvent(t, ch, discovery.Removed, inst, ttl+2*time.Second)
	gone := time.Since(died)
	t.Logf("a crashed owner's record left the watch %v after its last chance to renew (TTL %v)", gone.Round(time.Millisecond), ttl)
	if got := list(t, watcher); len(got) != 0 {
		t.Fatalf("List after the record expired: %+v; want nothing", got)
	}
	testutil.EventuallyNoError(t, 2*ttl+wait, "a watcher to delete the expired Lease", func() error {
		_, err := cs.CoordinationV1().Leases(ns).Get(t.Context(), LeaseName(inst.Key()), metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there %v after the owner died (get: %v)", time.Since(died).Round(time.Millisecond), err)
	})
	t.Logf("the watcher deleted the Lease %v after the owner died; reaps %d", time.Since(died).Round(time.Millisecond), watcher.reaps.Load())
	if watcher.reaps.Load() != 1 {
		t.Fatalf("reaps = %d; want 1", watcher.reaps.Load())
	}
	// The reaper keeps no trace of it: a process up for months reaps
	// many Leases.
	testutil.Eventually(t, wait, "the reaper to forget the Lease it deleted", func() bool {
		watcher.mu.Lock()
		defer watcher.mu.Unlock()
		return len(watcher.reaped) == 0
	})
	// Nothing more about it follows.
	sentinel := testInst(2, "10.0.0.1:2")
	register(t, watcher, sentinel)
	expectEvent(t, ch, discovery.Added, sentinel, wait)
}

// A key whose owner died can be registered again once its Lease expired,
// before anything deleted it; while it is live it is a duplicate.
func TestRegisterReplacesAnExpiredLease(t *testing.T) {
	srv, cs := startAPIServer(t)
	ns := newNamespace(t, cs)
	const ttl = 3 * time.Second // long enough that the Lease is still live when the second Register runs
	owner := open(t, srv, Config{Namespace: ns, TTL: ttl})
	next := open(t, srv, Config{Namespace: ns, TTL: ttl})
	inst := testInst(1, "10.0.0.1:1")
	register(t, owner, inst)
	crash(t, owner)
	err := next.Register(t.Context(), inst)
	if !errors.Is(err, discovery.ErrDuplicate) {
		t.Fatalf("Register of a live key = %v; want ErrDuplicate", err)
	}
	time.Sleep(ttl + 100*time.Millisecond) // let the Lease expire
	moved := inst
	moved.Address = "10.0.0.2:1"
	register(t, next, moved)
	got := list(t, next)
	if len(got) != 1 || !watchview.Same(got[0], moved) {
		t.Fatalf("List = %+v; want only %+v", got, moved)
	}
}

// A record whose content changes under the same key (a new address, the
// Lease edited in place) reaches watchers as a change: the old record
// removed, the new one added. Watching by key alone would swallow it.
func TestARecordChangedInPlaceIsDeliveredAsAChange(t *testing.T) {
	srv, cs := startAPIServer(t)
	ns := newNamespace(t, cs)
	owner := open(t, srv, Config{Namespace: ns})
	watcher := open(t, srv, Config{Namespace: ns})
	old := testInst(5, "10.0.0.1:1")
	register(t, owner, old)
	ch, set := watchFrom(t, watcher)
	if len(set) != 1 {
		t.Fatalf("snapshot %+v; want %s", set, old.Key())
	}
	moved := old
	moved.Address = "10.0.0.9:9"
	value, _ := json.Marshal(moved)
	leases := cs.CoordinationV1().Leases(ns)
	l, err := leases.Get(t.Context(), LeaseName(old.Key()), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	l.Annotations[AnnotationRecord] = string(value)
	l.Spec.RenewTime = ptr.To(metav1.NewMicroTime(time.Now()))
	if _, err := leases.Update(t.Context(), l, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, ch, discovery.Removed, old, wait)
	expectEvent(t, ch, discovery.Added, moved, wait)
	if got := list(t, watcher); len(got) != 1 || !watchview.Same(got[0], moved) {
		t.Fatalf("List = %+v; want %+v", got, moved)
	}
	// The owner's next renewal finds a Lease that is no longer the one it
	// wrote, and leaves it alone from then on.
	testutil.Eventually(t, 2*DefaultTTL, "the owner to give up the edited Lease", func() bool {
		owner.mu.Lock()
		defer owner.mu.Unlock()
		return len(owner.owned) == 0
	})
	if got := list(t, watcher); len(got) != 1 || !watchview.Same(got[0], moved) {
		t.Fatalf("List after the owner gave up = %+v; want the edited %+v", got, moved)
	}
}

// An owner that could not renew for longer than the TTL finds its Lease
// deleted (by a watcher, as expired) and creates it again; an owner whose
// Lease another client deleted while it was renewing respects that.
func TestAnOwnerRecreatesARecordThatExpiredWhileItWasCutOff(t *testing.T) {
	srv, cs := startAPIServer(t)
	ns := newNamespace(t, cs)
	// A long TTL keeps the renewal loop (every TTL/3) out of the way: the
	// test runs a renewal round itself.
	const ttl = 30 * time.Second
	leases := cs.CoordinationV1().Leases(ns)
	owner := open(t, srv, Config{Namespace: ns, TTL: ttl})
	cut, kept := testInst(1, "10.0.0.1:1"), testInst(2, "10.0.0.1:2")
	register(t, owner, cut)
	register(t, owner, kept)
	// The owner last renewed cut long ago, as if it had been cut off.
	owner.mu.Lock()
	owner.owned[LeaseName(cut.Key())].renewed = time.Now().Add(-2 * ttl)
	owner.mu.Unlock()
	for _, inst := range []discovery.Instance{cut, kept} {
		if err := leases.Delete(t.Context(), LeaseName(inst.Key()), metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if !owner.renew(t.Context()) {
		t.Fatal("the renewal round reported a failure to retry")
	}
	if _, err := leases.Get(t.Context(), LeaseName(cut.Key()), metav1.GetOptions{}); err != nil {
		t.Fatalf("the expired record's Lease after the renewal round: %v; want it created again", err)
	}
	if _, err := leases.Get(t.Context(), LeaseName(kept.Key()), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("the removed record's Lease: %v; want it to stay removed", err)
	}
	owner.mu.Lock()
	_, stillCut := owner.owned[LeaseName(cut.Key())]
	_, stillKept := owner.owned[LeaseName(kept.Key())]
	owner.mu.Unlock()
	if !stillCut || stillKept {
		t.Fatalf("after the round the owner renews cut: %v, the removed record: %v; want true, false", stillCut, stillKept)
	}
	if got := list(t, owner); len(got) != 1 || !watchview.Same(got[0], cut) {
		t.Fatalf("List = %+v; want only %+v", got, cut)
	}
}

// A process whose credentials may not read Leases is told what it lacks.
func TestForbiddenSaysWhichRoleIsMissing(t *testing.T) {
	srv, cs := startAPIServer(t)
	ns := newNamespace(t, cs)
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	_, err := Open(ctx, srv.UserConfig(), Config{Namespace: ns, Logger: quiet})
	if err == nil || !apierrors.IsForbidden(errors.Unwrap(err)) && !strings.Contains(err.Error(), "forbidden") {
		t.Fatalf("Open without a RoleBinding = %v; want a forbidden error", err)
	}
	for _, want := range []string{ns, srv.URL(), "coordination.k8s.io leases", "Role"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

// unrelatedWrite writes a Lease Loom does not manage, so that the API
// server's resource version moves past everything a Loom watch has seen.
func unrelatedWrite(t *testing.T, cs kubernetes.Interface, ns, name string) {
	t.Helper()
	leases := cs.CoordinationV1().Leases(ns)
	l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To("other")}}
	if _, err := leases.Create(t.Context(), l, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// The API server restarts while watches run and owners renew, down for
// twice the TTL: watchers neither lose nor invent a record, owners renew
// once it is back, and later changes still arrive.
func TestWatchesAndOwnersSurviveAnAPIServerRestart(t *testing.T) {
	srv, cs := startAPIServer(t)
	ns := newNamespace(t, cs)
	// Owners get one TTL after the watch is back to renew; 4s leaves
	// room for a loaded machine.
	const ttl = 4 * time.Second
	o1 := open(t, srv, Config{Namespace: ns, TTL: ttl})
	o2 := open(t, srv, Config{Namespace: ns, TTL: ttl})
	watcher := open(t, srv, Config{Namespace: ns, TTL: ttl})
	a, b, c := testInst(0xa, "10.0.0.1:1"), testInst(0xb, "10.0.0.2:1"), testInst(0xc, "10.0.0.3:1")
	register(t, o1, a)
	register(t, o2, b)
	ch, set := watchFrom(t, watcher)
	if len(set) != 2 {
		t.Fatalf("snapshot %+v; want a and b", set)
	}
	unrelatedWrite(t, cs, ns, "unrelated-1")

	down := time.Now()
	srv.Stop()
	t.Logf("the API server took %v to stop", time.Since(down).Round(time.Millisecond))
	time.Sleep(2 * ttl)
	select {
	case ev := <-ch:
		t.Fatalf("while the API server was down the watch sent %v %s; records must not expire for an outage", ev.Kind, ev.Instance.Key())
	default:
	}
	srv.Restart()
	back := time.Now()
	t.Logf("API server down %v (restart included)", time.Since(down).Round(time.Millisecond))

	register(t, o1, c)
	expectEvent(t, ch, discovery.Added, c, wait)
	t.Logf("the watch delivered a record registered after the restart %v after the API server was ready again",
		time.Since(back).Round(time.Millisecond))
	// Two more TTLs: the owners renew on the restarted server, so nothing
	// expires.
	expectQuiet(t, ch, 2*ttl)
	got := list(t, watcher)
	if len(got) != 3 {
		t.Fatalf("List after the restart: %+v; want a, b and c", got)
	}
	t.Logf("relists after the restart: %d", watcher.relists.Load())
	// Changes after the restart arrive.
	if err := o2.Unregister(t.Context(), b); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, ch, discovery.Removed, b, wait)
}

// A watch whose resource version the API server no longer has (410 Gone)
// lists the records again and sends the difference from what it had told:
// a record removed meanwhile as Removed, one added as Added, one whose
// address changed as Removed then Added.
func TestAWatchTooOldListsAgainAndSendsTheDifference(t *testing.T) {
	srv, cs := startAPIServer(t)
	ns := newNamespace(t, cs)
	// A TTL far longer than the test, so that no expiry check (which
	// lists too) can stand in for the relist under test, however slow the
	// restart.
	d := open(t, srv, Config{Namespace: ns, TTL: 10 * time.Minute})
	a, b, c := testInst(0xa, "10.0.0.1:1"), testInst(0xb, "10.0.0.2:1"), testInst(0xc, "10.0.0.3:1")
	register(t, d, a)
	register(t, d, b)
	w := newWatch(d, discovery.Query{})
	if err := w.relist(t.Context()); err != nil {
		t.Fatal(err)
	}
	// Changes the watch does not see.
	b2 := churn(t, d, a, c, b)

	// The API server restarts with its history compacted away: its watch
	// cache starts after the watch's version, and etcd no longer has it.
	srv.CompactEtcd()
	srv.Restart()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.run(ctx)
	}()
	defer func() {
		cancel()
		<-done
	}()
	want := []discovery.Event{
		{Kind: discovery.Added, Instance: a},
		{Kind: discovery.Added, Instance: b},
		{Kind: discovery.Synced},
		{Kind: discovery.Removed, Instance: a},
		{Kind: discovery.Removed, Instance: b},
		{Kind: discovery.Added, Instance: b2},
		{Kind: discovery.Added, Instance: c},
	}
	for i, ev := range want {
		got := next(t, w.out, wait)
		if got.Kind != ev.Kind || !watchview.Same(got.Instance, ev.Instance) {
			t.Fatalf("event %d: got %v %+v; want %v %+v", i, got.Kind, got.Instance, ev.Kind, ev.Instance)
		}
	}
	if d.relists.Load() != 1 {
		t.Fatalf("relists = %d; want 1", d.relists.Load())
	}
}

// In a Pod (POD_NAME and POD_UID from the downward API), every Lease is
// owned by the Pod, so Kubernetes' garbage collector deletes the records
// with it. The API server accepts the reference to a real Pod.
func TestLeasesAreOwnedByThePod(t *testing.T) {
	srv, cs := startAPIServer(t)
	ns := newNamespace(t, cs)
	// No controller-manager runs here, so the service account the Pod
	// needs is made by hand; no scheduler either, so the Pod never runs.
	if _, err := cs.CoreV1().ServiceAccounts(ns).Create(t.Context(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod, err := cs.CoreV1().Pods(ns).Create(t.Context(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "worker-0"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "w", Image: "loom-service:latest"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d := open(t, srv, Config{Namespace: ns, PodName: pod.Name, PodUID: string(pod.UID)})
	inst := testInst(1, "10.0.0.1:1")
	register(t, d, inst)
	l, err := cs.CoordinationV1().Leases(ns).Get(t.Context(), LeaseName(inst.Key()), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	refs := l.OwnerReferences
	if len(refs) != 1 || refs[0].Kind != "Pod" || refs[0].APIVersion != "v1" || refs[0].Name != pod.Name || refs[0].UID != pod.UID {
		t.Fatalf("Lease ownerReferences %+v; want the Pod %s (uid %s)", refs, pod.Name, pod.UID)
	}
	if !strings.HasPrefix(ptr.Deref(l.Spec.HolderIdentity, ""), pod.Name+"-") {
		t.Errorf("holderIdentity %q; want the Pod's name and a suffix", ptr.Deref(l.Spec.HolderIdentity, ""))
	}
	// Half a Pod reference is a configuration error.
	if _, err := Open(t.Context(), srv.AdminConfig(), Config{Namespace: ns, PodName: pod.Name}); err == nil || !strings.Contains(err.Error(), "PodUID") {
		t.Fatalf("Open with a Pod name and no uid = %v; want an error naming PodUID", err)
	}
}

// readOnly lets kubetest.User get, list and watch the Leases of ns, and
// nothing else: a watcher with these rights sees records expire but cannot
// delete their Leases.
func readOnly(t *testing.T, cs kubernetes.Interface, ns string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "lease-reader"},
		Rules: []rbacv1.PolicyRule{{
			APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "list", "watch"},
		}},
	}
	if _, err := cs.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "lease-reader"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: kubetest.User}},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
	}
	if _, err := cs.RbacV1().RoleBindings(ns).Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// A record that expired before the API server went away stays expired when
// it is back: the full TTL an outage grants is for the records that were
// live when it began, and a dead owner's record is not brought back. The
// watcher may only read, so the dead record's Lease outlives the outage
// however long the API server takes to stop.
func TestARecordExpiredBeforeAnOutageStaysExpiredAfterIt(t *testing.T) {
	srv, cs := startAPIServer(t)
	ns := newNamespace(t, cs)
	readOnly(t, cs, ns)
	// The living owner gets one TTL after the watch is back to renew, as
	// in the restart test above.
	const ttl = 4 * time.Second
	dying := open(t, srv, Config{Namespace: ns, TTL: ttl})
	living := open(t, srv, Config{Namespace: ns, TTL: ttl})
	// The authorizer learns of the RoleBinding a moment after it is made.
	var watcher *Discovery
	testutil.EventuallyNoError(t, wait, "Open with a read-only Role", func() error {
		ctx, cancel := context.WithTimeout(t.Context(), wait)
		defer cancel()
		var err error
		watcher, err = Open(ctx, srv.UserConfig(), Config{Namespace: ns, TTL: ttl, Logger: quiet})
		return err
	})
	t.Cleanup(func() { _ = watcher.Close() })
	ch, _ := watchFrom(t, watcher)
	dead, kept := testInst(0xd, "10.0.0.1:1"), testInst(0xe, "10.0.0.2:1")
	register(t, dying, dead)
	expectEvent(t, ch, discovery.Added, dead, wait)
	register(t, living, kept)
	expectEvent(t, ch, discovery.Added, kept, wait)
	crash(t, dying)
	expectEvent(t, ch, discovery.Removed, dead, ttl+2*time.Second)

	down := time.Now()
	srv.Stop()
	srv.Restart()
	t.Logf("API server down %v (restart included)", time.Since(down).Round(time.Millisecond))
	if _, err := cs.CoordinationV1().Leases(ns).Get(t.Context(), LeaseName(dead.Key()), metav1.GetOptions{}); err != nil {
		t.Fatalf("the dead record's Lease after the restart: %v; want it still there (nothing here may delete it)", err)
	}
	// The next event is the record registered now: the watch is back, and
	// nothing came before it.
	sentinel := testInst(0xf, "10.0.0.3:1")
	register(t, living, sentinel)
	expectEvent(t, ch, discovery.Added, sentinel, wait)
	// One more TTL: kept is renewed, dead stays gone.
	expectQuiet(t, ch, ttl+time.Second)
	if got := list(t, watcher); len(got) != 2 || !watchview.Same(got[0], kept) || !watchview.Same(got[1], sentinel) {
		t.Fatalf("List after the restart = %+v; want %s and %s", got, kept.Key(), sentinel.Key())
	}
}

// cutter is a TCP proxy to the API server whose connections a test can cut;
// while it is down it also drops every new connection at once.
type cutter struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu        sync.Mutex
	down      bool
	conns     map[net.Conn]bool
	forwarded int // connections let through
}

func newCutter(t *testing.T, target string) *cutter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &cutter{ln: ln, target: target, conns: make(map[net.Conn]bool)}
	c.wg.Go(func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			c.wg.Go(func() { c.forward(in) })
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		c.setDown(true)
		c.wg.Wait()
	})
	return c
}

func (c *cutter) addr() string { return c.ln.Addr().String() }

func (c *cutter) forward(in net.Conn) {
	out, err := net.Dial("tcp", c.target)
	if err != nil {
		_ = in.Close()
		return
	}
	c.mu.Lock()
	if c.down {
		c.mu.Unlock()
		_ = in.Close()
		_ = out.Close()
		return
	}
	c.conns[in], c.conns[out] = true, true
	c.forwarded++
	c.mu.Unlock()
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		_ = dst.Close()
		_ = src.Close()
	}
	var wg sync.WaitGroup
	wg.Go(func() { pipe(out, in) })
	pipe(in, out)
	wg.Wait()
	c.mu.Lock()
	delete(c.conns, in)
	delete(c.conns, out)
	c.mu.Unlock()
}

func (c *cutter) connections() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.forwarded
}

// setDown cuts every connection and drops new ones (true), or lets them
// through again (false).
func (c *cutter) setDown(down bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.down = down
	if down {
		for conn := range c.conns {
			_ = conn.Close()
		}
	}
}

// A watch whose connection drops while the API server stays up resumes
// from the last resource version it saw, without listing again, and the
// changes made while it was cut off arrive, each once: a record removed, one
// added, and one registered again at a new address.
func TestAWatchResumesFromItsResourceVersionAfterADisconnect(t *testing.T) {
	srv, cs := startAPIServer(t)
	ns := newNamespace(t, cs)
	owner := open(t, srv, Config{Namespace: ns})
	proxy := newCutter(t, strings.TrimPrefix(srv.URL(), "https://"))
	rc := srv.AdminConfig()
	rc.Host = "https://" + proxy.addr()
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	watcher, err := Open(ctx, rc, Config{Namespace: ns, Logger: quiet})
	if err != nil {
		t.Fatalf("Open through the proxy: %v", err)
	}
	t.Cleanup(func() { _ = watcher.Close() })
	gone, kept := testInst(0xa, "10.0.0.1:1"), testInst(0xb, "10.0.0.2:1")
	register(t, owner, gone)
	register(t, owner, kept)
	ch, set := watchFrom(t, watcher)
	if len(set) != 2 {
		t.Fatalf("snapshot %+v; want %s and %s", set, gone.Key(), kept.Key())
	}

	before := proxy.connections()
	proxy.setDown(true)
	added := testInst(0xc, "10.0.0.3:1")
	moved := churn(t, owner, gone, added, kept)
	proxy.setDown(false)

	event := func(kind discovery.EventKind, inst discovery.Instance) string {
		return fmt.Sprintf("%v %s at %s", kind, inst.Key(), inst.Address)
	}
	want := map[string]int{
		event(discovery.Removed, gone): 1,
		event(discovery.Added, added):  1,
		event(discovery.Removed, kept): 1,
		event(discovery.Added, moved):  1,
	}
	got := map[string]int{}
	var order []string
	for range 4 {
		ev := next(t, ch, wait)
		got[event(ev.Kind, ev.Instance)]++
		order = append(order, event(ev.Kind, ev.Instance))
	}
	if !maps.Equal(got, want) {
		t.Fatalf("after the disconnect the watch sent %v; want %v", got, want)
	}
	if slices.Index(order, event(discovery.Removed, kept)) > slices.Index(order, event(discovery.Added, moved)) {
		t.Fatalf("after the disconnect the watch sent %q; want the old address removed before the new one is added", order)
	}
	if proxy.connections() == before {
		t.Fatal("the watch sent the changes without connecting again; the cut did not reach it")
	}
	if n := watcher.relists.Load(); n != 0 {
		t.Fatalf("the watch listed the records again %d times; want it to resume from its resource version", n)
	}
	if got := list(t, watcher); len(got) != 2 || !watchview.Same(got[0], moved) || !watchview.Same(got[1], added) {
		t.Fatalf("List = %+v; want %s at its new address and %s", got, moved.Key(), added.Key())
	}
}
