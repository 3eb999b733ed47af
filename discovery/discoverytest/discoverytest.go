// Package discoverytest is the conformance suite every discovery backend
// passes, in the manner of watermill's pubsub/tests.TestPubSub: a backend's
// tests call [Run] with a [Harness] and nothing else, so the memory, etcd,
// NATS KV and Kubernetes backends are held to one contract.
//
//	func TestConformance(t *testing.T) {
//		discoverytest.Run(t, func(t *testing.T) func() discovery.Discovery {
//			s := memory.NewStore()
//			return s.Connect
//		})
//	}
//
// The suite bounds every wait (see [WithTimeout]), so a backend that loses
// an event fails with a message instead of hanging, and every goroutine it
// starts has ended when Run returns.
package discoverytest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/loomrt/loom/discovery"
)

// Harness starts a fresh, empty store for one subtest and returns connect,
// which returns a new client of that store, as a separate process would
// get. The suite calls connect several times per subtest and closes every
// client it gets. The harness cleans up the store itself (with t.Cleanup).
type Harness func(t *testing.T) (connect func() discovery.Discovery)

// DefaultTimeout is how long the suite waits, unless told otherwise, for an
// event, a call or a channel to close before it fails the test.
const DefaultTimeout = 5 * time.Second

// Option changes how [Run] tests a backend.
type Option func(*config)

type config struct {
	timeout time.Duration
}

// WithTimeout sets how long the suite waits for an event, a call or a
// channel to close before it fails the test (default [DefaultTimeout]).
// Raise it for backends on slow servers.
func WithTimeout(d time.Duration) Option {
	return func(c *config) { c.timeout = d }
}

// Run tests that the clients h connects behave as the discovery.Discovery
// contract says. Each subtest gets a fresh store from h.
func Run(t *testing.T, h Harness, opts ...Option) {
	cfg := config{timeout: DefaultTimeout}
	for _, o := range opts {
		o(&cfg)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.run(&env{t: t, connect: h(t), timeout: cfg.timeout})
		})
	}
}

var tests = []struct {
	name string
	run  func(e *env)
}{
	{"a registered instance is listed by another client", testRegisterList},
	{"List selects by namespace, component and endpoint", testListQuery},
	{"List orders records by key", testListOrder},
	{"registering a key twice fails with ErrDuplicate", testDuplicate},
	{"Unregister removes the record and frees its key", testUnregister},
	{"unregistering a missing record is not an error", testUnregisterMissing},
	{"an invalid instance is rejected", testInvalidInstance},
	{"an invalid query is rejected", testInvalidQuery},
	{"Watch sends the existing records, one Synced, then changes", testWatch},
	{"Watch of an empty store sends Synced at once", testWatchEmpty},
	{"Watch only sends records its query selects", testWatchQuery},
	{"several watchers see the same changes", testSeveralWatchers},
	{"a watch channel closes promptly when its context ends", testWatchCancel},
	{"closing a client removes its records and watchers see each Removed", testCloseRemoves},
	{"a closed client returns ErrClosed", testClosedErrors},
	{"closing a client closes its watch channels", testCloseClosesWatches},
	{"a record's fields round-trip exactly", testFields},
	{"changing metadata after a call does not change the record", testMetadataCopied},
	{"instance ids up to 2^53-1 round-trip", testLargeIDs},
	{"a watcher that does not read neither blocks writers nor misses changes", testSlowWatcher},
	{"concurrent registers and unregisters leave a watcher with the final set", testConcurrent},
}

// env is one subtest's view of a fresh store.
type env struct {
	t       *testing.T
	connect func() discovery.Discovery
	timeout time.Duration
}

// sub returns e for the subtest t.
func (e *env) sub(t *testing.T) *env {
	c := *e
	c.t = t
	return &c
}

// client connects a new client, closed when the test ends.
func (e *env) client() discovery.Discovery {
	e.t.Helper()
	d := e.connect()
	e.t.Cleanup(func() { e.close(d) })
	return d
}

// close closes d, failing the test if that takes longer than the timeout.
// Closing twice must not hang; its result is not checked.
func (e *env) close(d discovery.Discovery) {
	e.t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = d.Close()
	}()
	select {
	case <-done:
	case <-time.After(e.timeout):
		// The goroutine leaks, but only when the backend is broken.
		e.t.Fatalf("Close did not return within %v", e.timeout)
	}
}

// call runs f with a context that ends after the timeout.
func (e *env) call(f func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(e.t.Context(), e.timeout)
	defer cancel()
	return f(ctx)
}

func (e *env) register(d discovery.Discovery, insts ...discovery.Instance) {
	e.t.Helper()
	for _, inst := range insts {
		if err := e.call(func(ctx context.Context) error { return d.Register(ctx, inst) }); err != nil {
			e.t.Fatalf("Register(%s): %v", inst.Key(), err)
		}
	}
}

func (e *env) unregister(d discovery.Discovery, insts ...discovery.Instance) {
	e.t.Helper()
	for _, inst := range insts {
		if err := e.call(func(ctx context.Context) error { return d.Unregister(ctx, inst) }); err != nil {
			e.t.Fatalf("Unregister(%s): %v", inst.Key(), err)
		}
	}
}

func (e *env) list(d discovery.Discovery, q discovery.Query) []discovery.Instance {
	e.t.Helper()
	var got []discovery.Instance
	err := e.call(func(ctx context.Context) (err error) {
		got, err = d.List(ctx, q)
		return err
	})
	if err != nil {
		e.t.Fatalf("List(%+v): %v", q, err)
	}
	return got
}

// wantList fails the test unless got is exactly want, in order.
func (e *env) wantList(what string, got []discovery.Instance, want ...discovery.Instance) {
	e.t.Helper()
	ok := len(got) == len(want)
	for i := 0; ok && i < len(got); i++ {
		ok = equal(got[i], want[i])
	}
	if !ok {
		e.t.Fatalf("%s:\n got  %s\n want %s", what, describe(got), describe(want))
	}
}

// watch starts a watch that ends when the test does, or when stop is
// called.
func (e *env) watch(d discovery.Discovery, q discovery.Query) *watch {
	e.t.Helper()
	ctx, cancel := context.WithCancel(e.t.Context())
	e.t.Cleanup(cancel)
	ch, err := d.Watch(ctx, q)
	if err != nil {
		cancel()
		e.t.Fatalf("Watch(%+v): %v", q, err)
	}
	return &watch{e: e, q: q, ch: ch, stop: cancel}
}

// watch is one Watch channel under test.
type watch struct {
	e    *env
	q    discovery.Query
	ch   <-chan discovery.Event
	stop context.CancelFunc
}

// next returns the next event; it fails the test if none comes in time or
// the channel is closed.
func (w *watch) next() discovery.Event {
	w.e.t.Helper()
	timer := time.NewTimer(w.e.timeout)
	defer timer.Stop()
	select {
	case ev, ok := <-w.ch:
		if !ok {
			w.e.t.Fatalf("watch %+v: channel closed; want an event", w.q)
		}
		return ev
	case <-timer.C:
		w.e.t.Fatalf("watch %+v: no event within %v", w.q, w.e.timeout)
	}
	panic("unreachable")
}

// synced reads the initial snapshot up to its Synced event and returns it
// ordered by key.
func (w *watch) synced() []discovery.Instance {
	w.e.t.Helper()
	seen := map[string]discovery.Instance{}
	for {
		ev := w.next()
		switch ev.Kind {
		case discovery.Synced:
			return sorted(seen)
		case discovery.Added:
			key := ev.Instance.Key()
			if _, dup := seen[key]; dup {
				w.e.t.Fatalf("watch %+v: snapshot sent Added %s twice", w.q, key)
			}
			seen[key] = ev.Instance
		default:
			w.e.t.Fatalf("watch %+v: snapshot sent %v %s; want only Added, then Synced", w.q, ev.Kind, ev.Instance.Key())
		}
	}
}

// expect fails the test unless the next event is kind for inst. Added
// events must carry every field of inst; Removed events its key.
func (w *watch) expect(kind discovery.EventKind, inst discovery.Instance) {
	w.e.t.Helper()
	ev := w.next()
	switch {
	case ev.Kind != kind || ev.Instance.Key() != inst.Key():
		w.e.t.Fatalf("watch %+v: got %v %s; want %v %s", w.q, ev.Kind, ev.Instance.Key(), kind, inst.Key())
	case kind == discovery.Added && !equal(ev.Instance, inst):
		w.e.t.Fatalf("watch %+v: Added event\n got  %+v\n want %+v", w.q, ev.Instance, inst)
	}
}

// closed drains the channel and fails the test unless it closes in time.
func (w *watch) closed(why string) {
	w.e.t.Helper()
	timer := time.NewTimer(w.e.timeout)
	defer timer.Stop()
	for {
		select {
		case _, ok := <-w.ch:
			if !ok {
				return
			}
		case <-timer.C:
			w.e.t.Fatalf("watch %+v: channel still open %v after %s", w.q, w.e.timeout, why)
		}
	}
}

// apply applies a live event to set. It returns an error for an event that
// does not follow from what the watcher was told: an Added for a record it
// has (a Removed was lost), a Removed for one it lacks, or a second Synced.
func apply(set map[string]discovery.Instance, ev discovery.Event) error {
	key := ev.Instance.Key()
	switch ev.Kind {
	case discovery.Added:
		if _, ok := set[key]; ok {
			return fmt.Errorf("got Added %s, which the watcher already has: a Removed was lost", key)
		}
		set[key] = ev.Instance
	case discovery.Removed:
		if _, ok := set[key]; !ok {
			return fmt.Errorf("got Removed %s, which the watcher does not have", key)
		}
		delete(set, key)
	default:
		return fmt.Errorf("got %v after the snapshot; want only Added and Removed", ev.Kind)
	}
	return nil
}

// converge applies events to set until it holds exactly want, failing the
// test if that takes longer than the timeout.
func (w *watch) converge(set map[string]discovery.Instance, want map[string]discovery.Instance) {
	w.e.t.Helper()
	timer := time.NewTimer(w.e.timeout)
	defer timer.Stop()
	for !sameSet(set, want) {
		select {
		case ev, ok := <-w.ch:
			if !ok {
				w.e.t.Fatalf("watch %+v: channel closed before the watcher saw the final set", w.q)
			}
			if err := apply(set, ev); err != nil {
				w.e.t.Fatalf("watch %+v: %v", w.q, err)
			}
		case <-timer.C:
			w.e.t.Fatalf("watch %+v: after %v the watcher has\n %s\nwant\n %s", w.q, w.e.timeout, describe(sorted(set)), describe(sorted(want)))
		}
	}
}

// inst returns a valid instance with every field set.
func inst(ns, component, endpoint string, id uint64) discovery.Instance {
	return discovery.Instance{
		Namespace: ns,
		Component: component,
		Endpoint:  endpoint,
		ID:        id,
		Transport: "tcp",
		Address:   fmt.Sprintf("10.0.0.1:%d", 1024+id%60000),
		Codec:     "msgpack",
		Metadata:  map[string]string{"id": fmt.Sprint(id)},
	}
}

// equal compares every field; nil and empty Metadata are equal, since a
// JSON backend cannot tell them apart.
func equal(a, b discovery.Instance) bool {
	if !maps.Equal(a.Metadata, b.Metadata) {
		return false
	}
	a.Metadata, b.Metadata = nil, nil
	return reflect.DeepEqual(a, b) // every other field, including ones added later
}

func sameSet(a, b map[string]discovery.Instance) bool {
	return maps.EqualFunc(a, b, equal)
}

func byKey(a, b discovery.Instance) int { return cmp.Compare(a.Key(), b.Key()) }

func sorted(set map[string]discovery.Instance) []discovery.Instance {
	return slices.SortedFunc(maps.Values(set), byKey)
}

func setOf(insts ...discovery.Instance) map[string]discovery.Instance {
	set := make(map[string]discovery.Instance, len(insts))
	for _, inst := range insts {
		set[inst.Key()] = inst
	}
	return set
}

func describe(insts []discovery.Instance) string {
	if len(insts) == 0 {
		return "[]"
	}
	s := make([]string, len(insts))
	for i, inst := range insts {
		s[i] = fmt.Sprintf("%+v", inst)
	}
	return "[" + strings.Join(s, "\n  ") + "]"
}

func testRegisterList(e *env) {
	a, b := e.client(), e.client()
	i := inst("ns", "worker", "generate", 1)
	e.register(a, i)
	e.wantList("List from another client", e.list(b, discovery.Query{}), i)
	e.wantList("List from the registering client", e.list(a, discovery.Query{Namespace: "ns"}), i)
}

func testListQuery(e *env) {
	d := e.client()
	var (
		ace1  = inst("a", "c", "e", 1)
		ace2  = inst("a", "c", "e", 2)
		acf3  = inst("a", "c", "f", 3)
		ade4  = inst("a", "d", "e", 4)
		abce5 = inst("ab", "c", "e", 5)
		nest6 = inst("a.b", "c", "e", 6)
		nest7 = inst("a.b.c", "c", "e", 7)
		bce8  = inst("b", "c", "e", 8)
	)
	all := []discovery.Instance{ace1, ace2, acf3, ade4, abce5, nest6, nest7, bce8}
	e.register(d, all...)
	for _, tc := range []struct {
		name string
		q    discovery.Query
		want []discovery.Instance
	}{
		{"an empty query lists every record", discovery.Query{}, all},
		{"namespace a lists neither ab nor a.b", discovery.Query{Namespace: "a"}, []discovery.Instance{ace1, ace2, acf3, ade4}},
		{"a nested namespace lists only itself", discovery.Query{Namespace: "a.b"}, []discovery.Instance{nest6}},
		{"a component lists its endpoints", discovery.Query{Namespace: "a", Component: "c"}, []discovery.Instance{ace1, ace2, acf3}},
		{"an endpoint lists its instances", discovery.Query{Namespace: "a", Component: "c", Endpoint: "e"}, []discovery.Instance{ace1, ace2}},
		{"a component of a nested namespace", discovery.Query{Namespace: "a.b.c", Component: "c"}, []discovery.Instance{nest7}},
		{"a query that matches nothing lists nothing", discovery.Query{Namespace: "zz"}, nil},
	} {
		e.t.Run(tc.name, func(t *testing.T) {
			e := e.sub(t)
			want := slices.SortedFunc(slices.Values(tc.want), byKey)
			e.wantList(fmt.Sprintf("List(%+v)", tc.q), e.list(d, tc.q), want...)
		})
	}
}

func testListOrder(e *env) {
	d := e.client()
	// Hex ids sort as text, not as numbers: 1 < 10 < 2 < a.
	insts := []discovery.Instance{
		inst("ns", "c", "e", 0xa), inst("ns", "c", "e", 0x2), inst("m", "c", "e", 1),
		inst("ns", "c", "e", 0x10), inst("ns", "b", "e", 1), inst("ns", "c", "e", 0x1),
		inst("ns.x", "c", "e", 1),
	}
	e.register(d, insts...)
	e.wantList("List(all)", e.list(d, discovery.Query{}), slices.SortedFunc(slices.Values(insts), byKey)...)
}

func testDuplicate(e *env) {
	a, b := e.client(), e.client()
	first := inst("ns", "c", "e", 7)
	e.register(a, first)
	again := first
	again.Address = "10.9.9.9:1"
	again.Metadata = nil
	for _, tc := range []struct {
		name string
		d    discovery.Discovery
		inst discovery.Instance
	}{
		{"from the same client", a, first},
		{"from another client", b, first},
		{"with other fields", b, again},
	} {
		e.t.Run(tc.name, func(t *testing.T) {
			e := e.sub(t)
			err := e.call(func(ctx context.Context) error { return tc.d.Register(ctx, tc.inst) })
			if !errors.Is(err, discovery.ErrDuplicate) {
				t.Fatalf("second Register(%s) = %v; want an error that is ErrDuplicate", tc.inst.Key(), err)
			}
			e.wantList("List after the failed Register keeps the first record", e.list(b, discovery.Query{}), first)
		})
	}
}

func testUnregister(e *env) {
	a, b := e.client(), e.client()
	keep, drop := inst("ns", "c", "e", 1), inst("ns", "c", "e", 2)
	e.register(a, keep, drop)
	e.unregister(a, drop)
	e.wantList("List after Unregister", e.list(b, discovery.Query{}), keep)
	again := drop
	again.Address = "10.0.0.2:99"
	e.register(b, again)
	e.wantList("List after registering the key again", e.list(a, discovery.Query{}), keep, again)
}

func testUnregisterMissing(e *env) {
	d := e.client()
	i := inst("ns", "c", "e", 1)
	e.unregister(d, i) // never registered
	e.register(d, i)
	e.unregister(d, i)
	e.unregister(d, i) // already gone
	e.wantList("List", e.list(d, discovery.Query{}))
}

func testInvalidInstance(e *env) {
	d := e.client()
	good := inst("ns", "c", "e", 1)
	with := func(f func(*discovery.Instance)) discovery.Instance {
		i := good
		f(&i)
		return i
	}
	for _, tc := range []struct {
		name string
		inst discovery.Instance
	}{
		{"an empty namespace", with(func(i *discovery.Instance) { i.Namespace = "" })},
		{"an uppercase namespace", with(func(i *discovery.Instance) { i.Namespace = "NS" })},
		{"a namespace with an empty part", with(func(i *discovery.Instance) { i.Namespace = "a..b" })},
		{"a namespace with a slash", with(func(i *discovery.Instance) { i.Namespace = "a/b" })},
		{"an empty component", with(func(i *discovery.Instance) { i.Component = "" })},
		{"a component with a dot", with(func(i *discovery.Instance) { i.Component = "a.b" })},
		{"an endpoint with a space", with(func(i *discovery.Instance) { i.Endpoint = "gen erate" })},
		{"an endpoint of 129 characters", with(func(i *discovery.Instance) { i.Endpoint = strings.Repeat("e", 129) })},
		{"id 0", with(func(i *discovery.Instance) { i.ID = 0 })},
	} {
		e.t.Run(tc.name, func(t *testing.T) {
			e := e.sub(t)
			if err := e.call(func(ctx context.Context) error { return d.Register(ctx, tc.inst) }); err == nil {
				t.Errorf("Register(%+v) = nil; want an error", tc.inst)
			}
			if err := e.call(func(ctx context.Context) error { return d.Unregister(ctx, tc.inst) }); err == nil {
				t.Errorf("Unregister(%+v) = nil; want an error", tc.inst)
			}
		})
	}
	e.wantList("List after invalid Registers", e.list(d, discovery.Query{}))
}

func testInvalidQuery(e *env) {
	d := e.client()
	for _, tc := range []struct {
		name string
		q    discovery.Query
	}{
		{"a component without a namespace", discovery.Query{Component: "c"}},
		{"an endpoint without a component", discovery.Query{Namespace: "ns", Endpoint: "e"}},
		{"an uppercase namespace", discovery.Query{Namespace: "NS"}},
		{"a component with a slash", discovery.Query{Namespace: "ns", Component: "c/d"}},
		{"an endpoint with a dot", discovery.Query{Namespace: "ns", Component: "c", Endpoint: "e.f"}},
	} {
		e.t.Run(tc.name, func(t *testing.T) {
			e := e.sub(t)
			if err := e.call(func(ctx context.Context) error {
				_, err := d.List(ctx, tc.q)
				return err
			}); err == nil {
				t.Errorf("List(%+v) = nil error; want an error", tc.q)
			}
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			ch, err := d.Watch(ctx, tc.q)
			if err == nil {
				t.Errorf("Watch(%+v) = nil error; want an error", tc.q)
			}
			if ch != nil && err != nil {
				t.Errorf("Watch(%+v) returned a channel with its error", tc.q)
			}
		})
	}
}

func testWatch(e *env) {
	a, b := e.client(), e.client()
	x, y, z := inst("ns", "c", "e", 0x20), inst("ns", "c", "e", 0x3), inst("ns", "c", "f", 1)
	e.register(a, x, y)
	w := e.watch(b, discovery.Query{Namespace: "ns"})
	e.wantList("snapshot", w.synced(), x, y) // ordered by key: "20" < "3"
	// The first live event, not a second Synced.
	e.register(a, z)
	w.expect(discovery.Added, z)
	e.unregister(a, x)
	w.expect(discovery.Removed, x)
	e.unregister(b, z)
	w.expect(discovery.Removed, z)
	x2 := x
	x2.Codec = "json"
	e.register(b, x2)
	w.expect(discovery.Added, x2)
}

func testWatchEmpty(e *env) {
	d := e.client()
	w := e.watch(d, discovery.Query{})
	if ev := w.next(); ev.Kind != discovery.Synced {
		e.t.Fatalf("first event of a watch on an empty store: got %v %s; want Synced", ev.Kind, ev.Instance.Key())
	}
	i := inst("ns", "c", "e", 1)
	e.register(d, i)
	w.expect(discovery.Added, i)
}

func testWatchQuery(e *env) {
	d := e.client()
	early := inst("a", "c", "e", 1)
	e.register(d, early, inst("a", "d", "e", 1), inst("ab", "c", "e", 1))
	wc := e.watch(d, discovery.Query{Namespace: "a", Component: "c"})
	wn := e.watch(d, discovery.Query{Namespace: "a.b"})
	e.wantList("snapshot of a/c", wc.synced(), early)
	e.wantList("snapshot of a.b", wn.synced())

	others := []discovery.Instance{
		inst("a", "d", "e", 2), inst("ab", "c", "e", 2), inst("b", "c", "e", 1), inst("a.b.c", "c", "e", 1),
	}
	nested := inst("a.b", "c", "e", 1)
	e.register(d, others...)
	e.register(d, nested)
	wn.expect(discovery.Added, nested)
	// Events of one watch arrive in order, so a sentinel that matches
	// proves the records before it were not sent.
	sentinel := inst("a", "c", "x", 9)
	e.register(d, sentinel)
	wc.expect(discovery.Added, sentinel)
	e.unregister(d, others...)
	e.unregister(d, nested)
	wn.expect(discovery.Removed, nested)
	e.unregister(d, sentinel)
	wc.expect(discovery.Removed, sentinel)
}

func testSeveralWatchers(e *env) {
	writer, b, c := e.client(), e.client(), e.client()
	ws := []*watch{
		e.watch(b, discovery.Query{}),
		e.watch(b, discovery.Query{}),
		e.watch(c, discovery.Query{Namespace: "ns"}),
		e.watch(writer, discovery.Query{Namespace: "ns", Component: "c"}),
	}
	for _, w := range ws {
		e.wantList("snapshot", w.synced())
	}
	x, y := inst("ns", "c", "e", 1), inst("ns", "c", "e", 2)
	e.register(writer, x, y)
	e.unregister(writer, x)
	// A watcher that has not been told of x yet when it leaves may never
	// hear of it (a backend may merge changes a reader has not taken), so
	// each watcher must end with y alone through events that follow from
	// one another, not with one exact sequence.
	for _, w := range ws {
		w.converge(map[string]discovery.Instance{}, setOf(y))
	}
}

func testWatchCancel(e *env) {
	d := e.client()
	e.t.Run("after Synced", func(t *testing.T) {
		e := e.sub(t)
		w := e.watch(d, discovery.Query{})
		w.synced()
		w.stop()
		w.closed("its context ended")
	})
	e.t.Run("with events the reader never took", func(t *testing.T) {
		e := e.sub(t)
		const n = 300
		w := e.watch(d, discovery.Query{})
		for i := range n {
			e.register(d, inst("unread", "c", "e", uint64(i+1)))
		}
		start := time.Now()
		w.stop()
		w.closed("its context ended")
		t.Logf("closed %v after cancel with %d unread events", time.Since(start), n)
		// The store still serves other calls.
		e.register(d, inst("after", "c", "e", 1))
		if got := len(e.list(d, discovery.Query{})); got != n+1 {
			t.Fatalf("List after the watch ended has %d records; want %d", got, n+1)
		}
	})
}

func testCloseRemoves(e *env) {
	owner, other, observer := e.client(), e.client(), e.client()
	owned := []discovery.Instance{inst("ns", "c", "e", 1), inst("ns", "c", "f", 2), inst("ns.sub", "d", "e", 3)}
	kept := inst("ns", "c", "e", 4)
	e.register(owner, owned...)
	e.register(other, kept)
	w := e.watch(observer, discovery.Query{})
	set := setOf(w.synced()...)
	if !sameSet(set, setOf(append([]discovery.Instance{kept}, owned...)...)) {
		e.t.Fatalf("snapshot before Close: %s", describe(sorted(set)))
	}
	e.close(owner)
	w.converge(set, setOf(kept))
	e.wantList("List after the owner closed", e.list(other, discovery.Query{}), kept)
	// Nothing more about the closed client's records follows.
	sentinel := inst("ns", "c", "e", 5)
	e.register(observer, sentinel)
	w.expect(discovery.Added, sentinel)
}

func testClosedErrors(e *env) {
	d := e.client()
	i := inst("ns", "c", "e", 1)
	e.register(d, i)
	e.close(d)
	check := func(call string, err error) {
		e.t.Helper()
		if !errors.Is(err, discovery.ErrClosed) {
			e.t.Errorf("%s after Close = %v; want an error that is ErrClosed", call, err)
		}
	}
	check("Register", e.call(func(ctx context.Context) error { return d.Register(ctx, inst("ns", "c", "e", 2)) }))
	check("Unregister", e.call(func(ctx context.Context) error { return d.Unregister(ctx, i) }))
	check("List", e.call(func(ctx context.Context) error {
		_, err := d.List(ctx, discovery.Query{})
		return err
	}))
	check("Watch", e.call(func(ctx context.Context) error {
		_, err := d.Watch(ctx, discovery.Query{})
		return err
	}))
	e.close(d) // a second Close returns
}

func testCloseClosesWatches(e *env) {
	d, writer := e.client(), e.client()
	idle := e.watch(d, discovery.Query{})
	idle.synced()
	unread := e.watch(d, discovery.Query{})
	for i := range 100 {
		e.register(writer, inst("ns", "c", "e", uint64(i+1)))
	}
	e.close(d)
	idle.closed("its client closed")
	unread.closed("its client closed")
	if got := len(e.list(writer, discovery.Query{})); got != 100 {
		e.t.Fatalf("List after another client closed has %d records; want 100", got)
	}
}

func testFields(e *env) {
	a, b := e.client(), e.client()
	full := discovery.Instance{
		Namespace: "prod.eu-west_1",
		Component: "vllm-worker",
		Endpoint:  "generate_v2",
		ID:        0x694d9b6c1ad2b,
		Transport: "nats",
		Address:   "[::1]:4222/loom.prod.eu-west_1.vllm-worker.generate_v2-694d9b6c1ad2b",
		Codec:     "json",
		Metadata: map[string]string{
			"zone":        "eu-west-1b",
			"empty":       "",
			"unicode":     "héllo ✓ 世界",
			"with spaces": " a  b ",
			"json":        `{"q":"\"","n":[1,2]}`,
			"newline":     "a\nb\t",
		},
	}
	bare := discovery.Instance{Namespace: "n", Component: "c", Endpoint: "e", ID: 1}
	w := e.watch(b, discovery.Query{})
	w.synced()
	e.register(a, full, bare)
	w.expect(discovery.Added, full)
	w.expect(discovery.Added, bare)
	e.wantList("List from another client", e.list(b, discovery.Query{}), bare, full)
	w2 := e.watch(b, discovery.Query{})
	e.wantList("snapshot", w2.synced(), bare, full)
}

func testMetadataCopied(e *env) {
	d := e.client()
	i := inst("ns", "c", "e", 1)
	want := i
	want.Metadata = maps.Clone(i.Metadata)
	w := e.watch(d, discovery.Query{})
	w.synced()
	e.register(d, i)
	i.Metadata["id"] = "changed by the caller after Register"
	i.Metadata["new"] = "x"
	got := e.list(d, discovery.Query{})
	e.wantList("List after the caller changed its map", got, want)
	got[0].Metadata["id"] = "changed in a List result"
	e.wantList("List after the caller changed a listed map", e.list(d, discovery.Query{}), want)
	ev := w.next()
	if ev.Kind == discovery.Added && ev.Instance.Metadata != nil {
		ev.Instance.Metadata["id"] = "changed in an event"
	}
	e.wantList("List after the caller changed an event's map", e.list(d, discovery.Query{}), want)
	w2 := e.watch(d, discovery.Query{})
	e.wantList("snapshot after the changes", w2.synced(), want)
}

func testLargeIDs(e *env) {
	a, b := e.client(), e.client()
	w := e.watch(b, discovery.Query{})
	w.synced()
	var insts []discovery.Instance
	for _, id := range []uint64{1, 0xff, 1<<32 - 1, 1 << 32, discovery.MaxID - 1, discovery.MaxID} {
		i := inst("ns", "c", "e", id)
		insts = append(insts, i)
		e.register(a, i)
		w.expect(discovery.Added, i)
	}
	e.wantList("List", e.list(b, discovery.Query{}), slices.SortedFunc(slices.Values(insts), byKey)...)
}

func testSlowWatcher(e *env) {
	writer, reader := e.client(), e.client()
	w := e.watch(reader, discovery.Query{Namespace: "ns"})
	set := setOf(w.synced()...)
	const n = 200
	want := map[string]discovery.Instance{}
	for id := uint64(1); id <= n; id++ {
		i := inst("ns", "c", "e", id)
		e.register(writer, i)
		want[i.Key()] = i
	}
	for id := uint64(2); id <= n; id += 2 {
		i := inst("ns", "c", "e", id)
		e.unregister(writer, i)
		delete(want, i.Key())
	}
	// Replace some records: the reader must see the new fields, which
	// takes a Removed and an Added.
	for id := uint64(1); id <= 21; id += 4 {
		old := inst("ns", "c", "e", id)
		e.unregister(writer, old)
		i := old
		i.Address = "10.0.0.2:1"
		e.register(writer, i)
		want[i.Key()] = i
	}
	// Added then removed before the reader looked.
	e.register(writer, inst("ns", "c", "gone", 1))
	e.unregister(writer, inst("ns", "c", "gone", 1))
	w.converge(set, want)
}

func testConcurrent(e *env) {
	const (
		clients   = 4
		workers   = 16
		perWorker = 30
	)
	observer := e.client()
	var ds []discovery.Discovery
	for range clients {
		ds = append(ds, e.client())
	}
	w := e.watch(observer, discovery.Query{Namespace: "ns"})
	set := setOf(w.synced()...)

	// Each worker owns its ids: it registers them all, unregisters every
	// third and registers every sixth again.
	want := map[string]discovery.Instance{}
	for g := range workers {
		for i := 1; i <= perWorker; i++ {
			if i%3 != 0 || i%6 == 0 {
				in := inst("ns", fmt.Sprintf("c%d", g%3), "e", uint64(g<<16|i))
				want[in.Key()] = in
			}
		}
	}

	var wg sync.WaitGroup
	defer wg.Wait() // before the test ends, even when it fails
	for g := range workers {
		wg.Go(func() {
			d := ds[g%clients]
			do := func(what string, f func(context.Context) error) {
				ctx, cancel := context.WithTimeout(context.Background(), e.timeout)
				defer cancel()
				if err := f(ctx); err != nil {
					e.t.Errorf("worker %d: %s: %v", g, what, err)
				}
			}
			for i := 1; i <= perWorker; i++ {
				in := inst("ns", fmt.Sprintf("c%d", g%3), "e", uint64(g<<16|i))
				do("Register "+in.Key(), func(ctx context.Context) error { return d.Register(ctx, in) })
				if i%3 == 0 {
					do("Unregister "+in.Key(), func(ctx context.Context) error { return d.Unregister(ctx, in) })
				}
				if i%6 == 0 {
					do("Register again "+in.Key(), func(ctx context.Context) error { return d.Register(ctx, in) })
				}
			}
		})
	}
	// Read while the workers write.
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	timer := time.NewTimer(10 * e.timeout)
	defer timer.Stop()
	for running := true; running; {
		select {
		case ev, ok := <-w.ch:
			if !ok {
				e.t.Fatalf("watch closed while workers were writing")
			}
			if err := apply(set, ev); err != nil {
				e.t.Fatalf("watch: %v", err)
			}
		case <-done:
			running = false
		case <-timer.C:
			e.t.Fatalf("workers did not finish within %v", 10*e.timeout)
		}
	}
	if e.t.Failed() {
		return
	}
	w.converge(set, want)
	got := e.list(observer, discovery.Query{})
	e.wantList("List after the workers finished", got, sorted(want)...)
}
