package natskv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/discovery/discoverytest"
	"github.com/loomrt/loom/discovery/internal/watchview"
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/internal/testutil"
)

func TestMain(m *testing.M) {
	if os.Getenv(ownerEnv) != "" {
		os.Exit(runOwner())
	}
	goleak.VerifyTestMain(m)
}

// Every subtest gets a fresh bucket on one server; each client has its own
// connection, as a separate process would. The TTL is the default: the
// tests below check expiry and refreshes with short TTLs. Buckets are left
// for the server's shutdown to remove: deleting one races, in the server,
// with creating the next.
func TestConformance(t *testing.T) {
	srv := startNATS(t, embedded.NATSOptions{JetStream: true})
	var n atomic.Int64
	discoverytest.Run(t, func(t *testing.T) func() discovery.Discovery {
		bucket := fmt.Sprintf("conformance_%d", n.Add(1))
		return func() discovery.Discovery {
			return open(t, srv.ClientURL(), Config{Bucket: bucket})
		}
	})
}

// An owner that dies without Close keeps its key until the TTL runs out
// after its last refresh; then every watcher sees Removed.
func TestAnOwnerThatDiesWithoutCloseExpires(t *testing.T) {
	t.Parallel()
	srv := startNATS(t, embedded.NATSOptions{JetStream: true})
	const ttl = 2 * time.Second
	for _, tc := range []struct {
		name  string
		start func(t *testing.T, bucket string, i discovery.Instance) (die func())
	}{
		{"its NATS connection closes", func(t *testing.T, bucket string, i discovery.Instance) func() {
			d := open(t, srv.ClientURL(), Config{Bucket: bucket, TTL: ttl})
			register(t, d, i)
			return d.nc.Close
		}},
		{"its process is killed with SIGKILL", func(t *testing.T, bucket string, i discovery.Instance) func() {
			return startOwner(t, ownerSpec{URL: srv.ClientURL(), Bucket: bucket, TTL: ttl, Inst: i})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			bucket := "dies_" + strings.NewReplacer(" ", "_").Replace(tc.name)
			observer := open(t, srv.ClientURL(), Config{Bucket: bucket, TTL: ttl})
			x := inst("ns", "c", "e", 0x2a)
			die := tc.start(t, bucket, x)
			w := startWatch(t, observer, discovery.Query{Namespace: "ns"})
			if got := w.synced(); len(got) != 1 || !watchview.Same(got[0], x) {
				t.Fatalf("snapshot: %v; want %s", keys(got), x.Key())
			}

			die()
			died := time.Now()
			// Until the TTL runs out the key is taken: ids are random, so
			// a collision is a real duplicate.
			ctx, cancel := context.WithTimeout(t.Context(), wait)
			defer cancel()
			if err := observer.Register(ctx, x); !errors.Is(err, discovery.ErrDuplicate) {
				t.Fatalf("Register of the dead owner's key before it expired = %v; want ErrDuplicate", err)
			}
			w.expect(ttl+time.Second, discovery.Removed, x)
			t.Logf("Removed %v after the owner died (TTL %v, refresh every %v)", time.Since(died).Round(time.Millisecond), ttl, ttl/3)
			if got := list(t, observer, discovery.Query{}); len(got) != 0 {
				t.Fatalf("List after expiry: %v; want nothing", keys(got))
			}
			register(t, observer, x)
			w.expect(wait, discovery.Added, x)
		})
	}
}

// Refreshes rewrite the record; watchers must not hear of them.
func TestRefreshesAreInvisibleToWatchers(t *testing.T) {
	t.Parallel()
	srv := startNATS(t, embedded.NATSOptions{JetStream: true})
	cfg := Config{Bucket: "refresh", TTL: time.Second}
	owner, observer := open(t, srv.ClientURL(), cfg), open(t, srv.ClientURL(), cfg)
	x := inst("ns", "c", "e", 1)
	x.Metadata = map[string]string{"zone": "a"}
	register(t, owner, x)
	w := startWatch(t, observer, discovery.Query{})
	w.synced()
	kv := rawKV(t, observer.nc, cfg.Bucket)
	first, err := kv.Get(t.Context(), kvKey(x))
	if err != nil {
		t.Fatal(err)
	}

	w.quietFor(2500 * time.Millisecond) // 2.5 TTLs: the record would be gone without refreshes

	last, err := kv.Get(t.Context(), kvKey(x))
	if err != nil {
		t.Fatalf("record after 2.5 TTLs: %v", err)
	}
	if last.Revision() <= first.Revision() {
		t.Fatalf("record revision %d after 2.5 TTLs, was %d: no refresh happened", last.Revision(), first.Revision())
	}
	t.Logf("revision %d -> %d in 2.5s", first.Revision(), last.Revision())
	if got := list(t, observer, discovery.Query{}); len(got) != 1 || !watchview.Same(got[0], x) {
		t.Fatalf("List: %v; want %s", keys(got), x.Key())
	}
}

// Records written by someone else that are not instance records are
// skipped with a warning, in List, in a snapshot and live.
func TestMalformedRecordsAreSkipped(t *testing.T) {
	t.Parallel()
	srv := startNATS(t, embedded.NATSOptions{JetStream: true})
	logs := &logBuffer{}
	d := open(t, srv.ClientURL(), Config{Bucket: "malformed", Logger: slog.New(slog.NewTextHandler(logs, nil))})
	good := inst("ns", "c", "e", 1)
	register(t, d, good)
	// A record from a newer writer, with a field this version lacks.
	extra := inst("ns", "c", "e", 0xb)
	extraJSON, _ := json.Marshal(extra)
	extraJSON = append(extraJSON[:len(extraJSON)-1], `,"load":{"gpu":0.5}}`...)

	kv := rawKV(t, d.nc, "malformed")
	put := func(key, value string) {
		t.Helper()
		if _, err := kv.Put(t.Context(), key, []byte(value)); err != nil {
			t.Fatalf("Put(%s): %v", key, err)
		}
	}
	valueOf := func(i discovery.Instance) string {
		b, _ := json.Marshal(i)
		return string(b)
	}
	put(kvKey(extra), string(extraJSON))
	bad := []struct{ key, value string }{
		{"v1.instances.ns.c.e.2", `{"namespace":`},
		{"v1.instances.ns.c.e.3", `[1,2,3]`},
		{"v1.instances.ns.c.e.4", `null`},
		{"v1.instances.ns.c.e.5", valueOf(inst("ns", "c", "e", 6))},
		{"v1.instances.ns.c.e.7", valueOf(inst("other", "c", "e", 7))},
		{"v1.instances.ns.c.e", valueOf(inst("ns", "c", "e", 8))},
		{"v1.instances.ns.c.e.9.x", valueOf(inst("ns", "c", "e", 9))},
		{"v1.instances.ns.c.e.0a", valueOf(inst("ns", "c", "e", 0xa))},
		{"v1.instances.ns.c.e.zz", `{}`},
		{"v1.instances.ns.c.e.0", valueOf(inst("ns", "c", "e", 0))},
		{"v1.instances.NS.c.e.c", valueOf(inst("NS", "c", "e", 0xc))},
		{"v1.instances.ns==x.c.e.d", valueOf(inst("ns..x", "c", "e", 0xd))},
	}
	for _, b := range bad {
		put(b.key, b.value)
	}

	want := []string{good.Key(), extra.Key()}
	for _, q := range []discovery.Query{{}, {Namespace: "ns"}, {Namespace: "ns", Component: "c"}, {Namespace: "ns", Component: "c", Endpoint: "e"}} {
		if got := keys(list(t, d, q)); !slices.Equal(got, want) {
			t.Errorf("List(%+v) = %v; want %v", q, got, want)
		}
	}
	w := startWatch(t, d, discovery.Query{Namespace: "ns"})
	if got := keys(w.synced()); !slices.Equal(got, want) {
		t.Errorf("snapshot = %v; want %v", got, want)
	}
	for _, b := range bad {
		if l := logs.String(); !strings.Contains(l, "key="+b.key+" ") && !strings.Contains(l, "key="+strconv.Quote(b.key)) {
			t.Errorf("no warning names the malformed record %s", b.key)
		}
	}

	// Live: a malformed record sends nothing; a good record overwritten
	// with garbage is gone.
	put("v1.instances.ns.c.e.f", `{"namespace":"ns"`)
	put(kvKey(good), `garbage`)
	w.expect(wait, discovery.Removed, good)
	sentinel := inst("ns", "c", "e", 0x10)
	register(t, d, sentinel)
	w.expect(wait, discovery.Added, sentinel)
}

// A watcher whose connection is away while the server restarts (on the
// same store) and records change reads the records again when it is back
// and sends the difference.
func TestWatchResyncsAfterTheServerRestarts(t *testing.T) {
	t.Parallel()
	srv, opts := startRestartable(t)
	defer srv.Shutdown()

	cfg := Config{Bucket: "restart"}
	owner := open(t, srv.ClientURL(), cfg)
	g := &gate{}
	observer := open(t, srv.ClientURL(), cfg, nats.SetCustomDialer(g))
	defer owner.Close() // before the server stops, so Close is quick
	defer observer.Close()
	kept, gone, added := inst("ns", "c", "e", 1), inst("ns", "c", "e", 2), inst("ns", "c", "e", 3)
	register(t, owner, kept, gone)
	w := startWatch(t, observer, discovery.Query{})
	if got := keys(w.synced()); !slices.Equal(got, keys([]discovery.Instance{kept, gone})) {
		t.Fatalf("snapshot: %v", got)
	}

	g.shut() // the observer stays away until the test lets it back
	srv.Shutdown()
	testutil.StartNATS(t, opts) // shut down after the deferred Closes

	// The owner is back first and changes the records.
	testutil.EventuallyNoError(t, wait, "the owner lists the records after the restart", func() error {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		_, err := owner.List(ctx, discovery.Query{})
		return err
	})
	unregister(t, owner, gone)
	register(t, owner, added)
	if observer.nc.IsConnected() {
		t.Fatal("the observer reconnected through a shut gate")
	}

	g.open()
	start := time.Now()
	got := map[string]discovery.EventKind{}
	for range 2 {
		ev := w.next(wait)
		got[ev.Instance.Key()] = ev.Kind
	}
	want := map[string]discovery.EventKind{gone.Key(): discovery.Removed, added.Key(): discovery.Added}
	if !maps.Equal(got, want) {
		t.Fatalf("events after the reconnect: %v; want %v", got, want)
	}
	t.Logf("re-synced %v after the observer could reconnect", time.Since(start).Round(time.Millisecond))
	w.quietFor(300 * time.Millisecond)
	if got := keys(list(t, observer, discovery.Query{})); !slices.Equal(got, keys([]discovery.Instance{kept, added})) {
		t.Fatalf("List after the restart: %v", got)
	}
}

// An owner cut off from NATS for longer than the TTL loses its record;
// when it is back it registers the record again.
func TestAnOwnerCutOffLongerThanTheTTLRegistersAgain(t *testing.T) {
	t.Parallel()
	srv := startNATS(t, embedded.NATSOptions{JetStream: true})
	cfg := Config{Bucket: "partition", TTL: time.Second}
	g := &gate{}
	owner := open(t, srv.ClientURL(), cfg, nats.SetCustomDialer(g))
	observer := open(t, srv.ClientURL(), cfg)
	x := inst("ns", "c", "e", 1)
	register(t, owner, x)
	w := startWatch(t, observer, discovery.Query{})
	w.synced()

	g.cut()
	w.expect(cfg.TTL+time.Second, discovery.Removed, x)
	g.open()
	w.expect(wait, discovery.Added, x)
	if got := keys(list(t, observer, discovery.Query{})); !slices.Equal(got, []string{x.Key()}) {
		t.Fatalf("List after the owner came back: %v", got)
	}
}

// An owner whose record another client removed or replaced stops
// refreshing it, and its Close leaves the other client's record alone.
func TestAnOwnerRespectsOtherClientsChanges(t *testing.T) {
	t.Parallel()
	srv := startNATS(t, embedded.NATSOptions{JetStream: true})
	cfg := Config{Bucket: "owners", TTL: time.Second}
	a, b, c := open(t, srv.ClientURL(), cfg), open(t, srv.ClientURL(), cfg), open(t, srv.ClientURL(), cfg)
	removed, replaced := inst("ns", "c", "e", 1), inst("ns", "c", "e", 2)
	register(t, a, removed, replaced)
	unregister(t, b, removed, replaced)
	again := replaced
	again.Address = "10.9.9.9:1"
	register(t, c, again)

	testutil.EventuallyNoError(t, wait, "a stops refreshing both records", func() error {
		a.mu.Lock()
		defer a.mu.Unlock()
		if len(a.owned) != 0 {
			return fmt.Errorf("a still refreshes %v", slices.Collect(maps.Keys(a.owned)))
		}
		return nil
	})
	if err := a.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	got := list(t, b, discovery.Query{})
	if len(got) != 1 || !watchview.Same(got[0], again) {
		t.Fatalf("List after a closed: %+v; want only c's %s", got, again.Key())
	}
}

func TestNewFailsClearly(t *testing.T) {
	t.Parallel()
	withJS := startNATS(t, embedded.NATSOptions{JetStream: true})
	withoutJS := startNATS(t, embedded.NATSOptions{})
	plain := connect(t, withJS.ClientURL())
	js, err := jetstream.New(plain)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateKeyValue(t.Context(), jetstream.KeyValueConfig{Bucket: "plain"}); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		url  string
		cfg  Config
		want []string
		is   error
	}{
		{"without JetStream on the server", withoutJS.ClientURL(), Config{},
			[]string{"enable JetStream on the nats-server (-js)", withoutJS.ClientURL()}, jetstream.ErrJetStreamNotEnabled},
		{"with a TTL below 1s", withJS.ClientURL(), Config{TTL: 500 * time.Millisecond}, []string{"Config.TTL 500ms"}, nil},
		{"with negative replicas", withJS.ClientURL(), Config{Replicas: -1}, []string{"Config.Replicas -1"}, nil},
		{"with an invalid bucket name", withJS.ClientURL(), Config{Bucket: "a.b"}, []string{`Config.Bucket "a.b"`}, jetstream.ErrInvalidBucketName},
		{"with a bucket made without per-key TTL", withJS.ClientURL(), Config{Bucket: "plain"},
			[]string{`bucket "plain"`, "per-key TTL", "set Config.Bucket to another name"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nc := connect(t, tc.url)
			ctx, cancel := context.WithTimeout(t.Context(), wait)
			defer cancel()
			start := time.Now()
			d, err := New(ctx, nc, tc.cfg)
			if err == nil {
				d.Close()
				t.Fatal("New succeeded; want an error")
			}
			t.Logf("after %v: %v", time.Since(start).Round(time.Millisecond), err)
			for _, s := range tc.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v is not %v", err, tc.is)
			}
		})
	}
}

func TestNewCreatesOrBindsTheBucket(t *testing.T) {
	t.Parallel()
	srv := startNATS(t, embedded.NATSOptions{JetStream: true})
	ds := make([]*Discovery, 4)
	var wg sync.WaitGroup
	for i := range ds {
		nc := connect(t, srv.ClientURL())
		wg.Go(func() {
			d, err := New(t.Context(), nc, Config{Bucket: "shared", TTL: 1500 * time.Millisecond, Logger: quiet})
			if err != nil {
				t.Errorf("New %d: %v", i, err)
				return
			}
			ds[i] = d
		})
	}
	wg.Wait()
	for _, d := range ds {
		if d != nil {
			defer d.Close()
		}
	}
	if t.Failed() {
		return
	}
	if ds[0].ttl != 2*time.Second {
		t.Errorf("TTL 1.5s became %v; want it rounded up to 2s", ds[0].ttl)
	}
	x := inst("ns", "c", "e", 1)
	register(t, ds[0], x)
	for i, d := range ds {
		if got := keys(list(t, d, discovery.Query{})); !slices.Equal(got, []string{x.Key()}) {
			t.Errorf("client %d lists %v", i, got)
		}
	}
}

// Close does not wait when NATS is unreachable: it gives up on removing
// the records at once, well before closeTimeout (they expire), and still
// ends its watches.
func TestCloseWhileNATSIsDownIsPrompt(t *testing.T) {
	t.Parallel()
	srv, err := embedded.StartNATS(embedded.NATSOptions{JetStream: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	d := open(t, srv.ClientURL(), Config{Bucket: "down"})
	x := inst("ns", "c", "e", 1)
	register(t, d, x)
	w := startWatch(t, d, discovery.Query{})
	w.synced()

	srv.Shutdown()
	testutil.EventuallyNoError(t, wait, "the client notices the server is gone", func() error {
		if d.nc.IsConnected() {
			return errors.New("still connected")
		}
		return nil
	})
	start := time.Now()
	err = d.Close()
	took := time.Since(start)
	t.Logf("Close took %v: %v", took.Round(time.Millisecond), err)
	if took > closeTimeout/2 {
		t.Errorf("Close took %v with the server down; want it not to wait for the server (closeTimeout %v)", took, closeTimeout)
	}
	if err == nil || !strings.Contains(err.Error(), "expire within") || !strings.Contains(err.Error(), "NATS unreachable") {
		t.Errorf("Close = %v; want an error saying NATS is unreachable and the records expire", err)
	}
	select {
	case _, ok := <-w.ch:
		if ok {
			t.Error("an event after Close; want the channel closed")
		}
	default:
		t.Error("the watch channel is still open after Close returned")
	}
}

// Unregister with NATS unreachable fails at once instead of waiting out
// its context, so that a process stopping with NATS gone (one Unregister
// per endpoint) stops at once; the record expires with its TTL.
func TestUnregisterWhileNATSIsDownIsPrompt(t *testing.T) {
	t.Parallel()
	srv, err := embedded.StartNATS(embedded.NATSOptions{JetStream: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	d := open(t, srv.ClientURL(), Config{Bucket: "down"})
	x := inst("ns", "c", "e", 1)
	register(t, d, x)

	srv.Shutdown()
	testutil.EventuallyNoError(t, wait, "the client notices the server is gone", func() error {
		if d.nc.IsConnected() {
			return errors.New("still connected")
		}
		return nil
	})
	const timeout = 20 * time.Second
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	start := time.Now()
	err = d.Unregister(ctx, x)
	took := time.Since(start)
	t.Logf("Unregister took %v: %v", took.Round(time.Millisecond), err)
	if took > timeout/4 {
		t.Errorf("Unregister took %v with the server down; want it not to wait for its context (%v)", took, timeout)
	}
	if err == nil || !strings.Contains(err.Error(), "NATS unreachable") || !strings.Contains(err.Error(), x.Key()) {
		t.Errorf("Unregister = %v; want an error naming the record and saying NATS is unreachable", err)
	}
}

// Records are rewritten all the time (refreshes) while a List or a watch
// reads them; the snapshot must still hold every record, once.
func TestSnapshotsAreCompleteWhileRecordsAreRewritten(t *testing.T) {
	t.Parallel()
	srv := startNATS(t, embedded.NATSOptions{JetStream: true})
	reader := open(t, srv.ClientURL(), Config{Bucket: "churn"})
	kv := rawKV(t, reader.nc, "churn")
	const n = 300
	var want []string
	values := map[string][]byte{}
	for id := uint64(1); id <= n; id++ {
		i := inst("ns", "c", "e", id)
		values[kvKey(i)], _ = json.Marshal(i)
		want = append(want, i.Key())
	}
	slices.Sort(want)
	rewrite := func(ctx context.Context) error {
		for k, v := range values {
			if _, err := kv.Put(ctx, k, v); err != nil {
				return err
			}
		}
		return nil
	}
	if err := rewrite(t.Context()); err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stop()
	for range 2 {
		wg.Go(func() {
			for ctx.Err() == nil {
				if err := rewrite(ctx); err != nil && ctx.Err() == nil {
					t.Errorf("rewrite: %v", err)
					return
				}
			}
		})
	}

	deadline := time.Now().Add(1500 * time.Millisecond)
	for i := 0; time.Now().Before(deadline); i++ {
		got := keys(list(t, reader, discovery.Query{Namespace: "ns"}))
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Fatalf("List %d during rewrites has %d records; want %d", i, len(got), n)
		}
		w := startWatch(t, reader, discovery.Query{Namespace: "ns"})
		got = keys(w.synced())
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Fatalf("snapshot %d during rewrites has %d records; want %d", i, len(got), n)
		}
	}
}

// An unregistered record is hidden by a delete marker that outlives it, so
// the revision the bucket keeps below the marker never shows again, and
// in the end nothing of the key is left.
func TestUnregisteredRecordsLeaveNothingBehind(t *testing.T) {
	t.Parallel()
	srv := startNATS(t, embedded.NATSOptions{JetStream: true})
	cfg := Config{Bucket: "tombstones", TTL: time.Second}
	d, observer := open(t, srv.ClientURL(), cfg), open(t, srv.ClientURL(), cfg)
	x, y := inst("ns", "c", "e", 1), inst("ns", "c", "e", 2)
	register(t, d, x, y)
	w := startWatch(t, observer, discovery.Query{})
	w.synced()
	// A refresh: x has two revisions now.
	kv := rawKV(t, observer.nc, cfg.Bucket)
	testutil.Eventually(t, 10*time.Second, "a refresh of x", func() bool {
		h, err := kv.History(t.Context(), kvKey(x))
		return err == nil && len(h) >= 2
	})
	unregister(t, d, x)
	w.expect(wait, discovery.Removed, x)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	w.expect(wait, discovery.Removed, y)

	w.quietFor(2500 * time.Millisecond) // every revision and marker expires
	if got := list(t, observer, discovery.Query{}); len(got) != 0 {
		t.Fatalf("List after the markers expired: %v", keys(got))
	}
	js, err := jetstream.New(observer.nc)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(t.Context(), "KV_"+cfg.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	// The server expires messages on its own timers, late on a busy
	// machine: wait for the last of them.
	testutil.EventuallyNoError(t, 10*time.Second, "the bucket to hold no message", func() error {
		info, err := stream.Info(t.Context())
		if err == nil && info.State.Msgs != 0 {
			err = fmt.Errorf("the bucket still holds %d messages", info.State.Msgs)
		}
		return err
	})
	if got := list(t, observer, discovery.Query{}); len(got) != 0 {
		t.Fatalf("List once the bucket is empty: %v", keys(got))
	}
}

// The nats-server restarts without its JetStream data (no volume, a store
// lost): the bucket is gone. The owners create it again and register their
// records again, and a watcher converges on what the new bucket holds.
func TestAServerRestartedWithoutItsDataGetsTheRecordsBack(t *testing.T) {
	t.Parallel()
	srv, opts := startRestartable(t)
	defer srv.Shutdown()

	cfg := Config{Bucket: "fresh", TTL: time.Second}
	owner := open(t, srv.ClientURL(), cfg)
	observer := open(t, srv.ClientURL(), cfg)
	defer owner.Close() // before the server stops, so Close is quick
	defer observer.Close()
	x := inst("ns", "c", "e", 1)
	register(t, owner, x)
	w := startWatch(t, observer, discovery.Query{})
	if got := keys(w.synced()); !slices.Equal(got, keys([]discovery.Instance{x})) {
		t.Fatalf("snapshot: %v", got)
	}

	srv.Shutdown()
	opts.StoreDir = t.TempDir()
	testutil.StartNATS(t, opts) // shut down after the deferred Closes

	testutil.EventuallyNoError(t, 3*wait, "the record is in the new bucket", func() error {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		got, err := observer.List(ctx, discovery.Query{})
		if err != nil {
			return err
		}
		if !slices.Equal(keys(got), []string{x.Key()}) {
			return fmt.Errorf("List = %v", keys(got))
		}
		return nil
	})
	y := inst("ns", "c", "e", 2)
	register(t, owner, y)
	// Whatever the watcher went through, it ends where the bucket is.
	w.convergesOn(x, y)
}

// A Register that finds the bucket gone, before anyone has created it
// again, creates it.
func TestRegisterCreatesABucketTheServerLost(t *testing.T) {
	t.Parallel()
	srv, opts := startRestartable(t)
	defer srv.Shutdown()
	d := open(t, srv.ClientURL(), Config{Bucket: "lost"})
	defer d.Close() // before the server stops, so Close is quick

	srv.Shutdown()
	opts.StoreDir = t.TempDir()
	testutil.StartNATS(t, opts) // shut down after the deferred Close
	// Connected alone may still be the old connection, not yet seen closed.
	testutil.Eventually(t, wait, "the client reconnected", func() bool {
		return d.nc.Stats().Reconnects > 0 && d.nc.IsConnected()
	})

	x := inst("ns", "c", "e", 1)
	register(t, d, x)
	if got := keys(list(t, d, discovery.Query{})); !slices.Equal(got, []string{x.Key()}) {
		t.Fatalf("List after registering in the new bucket: %v", got)
	}
}

// A record larger than the nats-server takes is an error that says so and
// what to do; the Discovery goes on.
func TestAnOversizedRecordIsAClearError(t *testing.T) {
	t.Parallel()
	srv := startNATS(t, embedded.NATSOptions{JetStream: true})
	d := open(t, srv.ClientURL(), Config{Bucket: "oversized"})
	big := inst("ns", "c", "e", 1)
	big.Metadata = map[string]string{"blob": strings.Repeat("a", int(d.nc.MaxPayload()))}
	err := d.Register(t.Context(), big)
	if err == nil {
		t.Fatal("Register of a record over max_payload succeeded")
	}
	for _, want := range []string{kvKey(big), "max_payload", "keep Instance.Metadata small"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Register = %v; want it to say %q", err, want)
		}
	}
	register(t, d, inst("ns", "c", "e", 2))
}

// The bucket is deleted while the nats-server runs (an operator's
// `nats kv rm`): the owners create it again and register their records,
// and a watcher, whose consumer went with the old stream, reads the new
// bucket and converges on it.
func TestAWatchFollowsTheBucketWhenItIsCreatedAgain(t *testing.T) {
	t.Parallel()
	srv := startNATS(t, embedded.NATSOptions{JetStream: true})
	cfg := Config{Bucket: "recreated", TTL: time.Second}
	owner := open(t, srv.ClientURL(), cfg)
	observer := open(t, srv.ClientURL(), cfg)
	x := inst("ns", "c", "e", 1)
	register(t, owner, x)
	w := startWatch(t, observer, discovery.Query{})
	w.synced()

	js, err := jetstream.New(connect(t, srv.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteKeyValue(t.Context(), cfg.Bucket); err != nil {
		t.Fatal(err)
	}
	y := inst("ns", "c", "e", 2)
	register(t, owner, y) // creates the bucket again
	w.convergesOn(x, y)
}

// startRestartable starts a nats-server with JetStream on a store of its
// own, and returns its options with the port it took, to start it again
// on.
func startRestartable(t *testing.T) (*embedded.NATS, embedded.NATSOptions) {
	t.Helper()
	opts := embedded.NATSOptions{JetStream: true, StoreDir: t.TempDir()}
	srv, err := embedded.StartNATS(opts)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(srv.ClientURL())
	if err != nil {
		srv.Shutdown()
		t.Fatal(err)
	}
	opts.Port, _ = strconv.Atoi(u.Port())
	return srv, opts
}
