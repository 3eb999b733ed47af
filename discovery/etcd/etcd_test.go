package etcd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"

	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/discovery/discoverytest"
	"github.com/loomrt/loom/embedded/etcdserver"

	"github.com/loomrt/loom/internal/testutil"
)

// The etcd server and client stop every goroutine they start when closed,
// so no goleak.Ignore options are needed.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fast is the embedded etcd the tests use: a leader within milliseconds.
var fast = etcdserver.Options{TickMs: 10, ElectionMs: 50, NoFsync: true}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func startEtcd(t *testing.T, opts etcdserver.Options) *etcdserver.Server {
	t.Helper()
	srv, err := etcdserver.Start(opts)
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(srv.Close)
	return srv
}

// connect returns a Discovery on endpoint, closed when the test ends.
func connect(t *testing.T, endpoint string, ttl time.Duration, mod ...func(*Config)) *Discovery {
	t.Helper()
	cfg := Config{Endpoints: []string{endpoint}, LeaseTTL: ttl, DialTimeout: 5 * time.Second, Logger: quiet}
	for _, m := range mod {
		m(&cfg)
	}
	d, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// raw returns a plain etcd client, for what another program would write.
func raw(t *testing.T, endpoint string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func TestConformance(t *testing.T) {
	discoverytest.Run(t, func(t *testing.T) func() discovery.Discovery {
		srv := startEtcd(t, fast)
		return func() discovery.Discovery {
			d, err := New(t.Context(), Config{Endpoints: []string{srv.ClientURL()}, Logger: quiet})
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			return d
		}
	})
}

func inst(ns string, id uint64) discovery.Instance {
	return discovery.Instance{
		Namespace: ns, Component: "c", Endpoint: "e", ID: id,
		Transport: "tcp", Address: "10.0.0.1:" + strconv.FormatUint(1000+id, 10), Codec: "msgpack",
	}
}

func register(t *testing.T, d discovery.Discovery, insts ...discovery.Instance) {
	t.Helper()
	for _, i := range insts {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		err := d.Register(ctx, i)
		cancel()
		if err != nil {
			t.Fatalf("Register(%s): %v", i.Key(), err)
		}
	}
}

// follower follows a watch and keeps the set it describes.
type follower struct {
	t   *testing.T
	ch  <-chan discovery.Event
	set map[string]discovery.Instance
}

func watch(t *testing.T, d discovery.Discovery, q discovery.Query) *follower {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	ch, err := d.Watch(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	w := &follower{t: t, ch: ch, set: map[string]discovery.Instance{}}
	w.until(5*time.Second, "Synced", func(ev discovery.Event) bool { return ev.Kind == discovery.Synced })
	return w
}

// until applies events until done says so, failing after timeout. It
// fails on an event that does not follow from the set.
func (w *follower) until(timeout time.Duration, what string, done func(discovery.Event) bool) time.Duration {
	w.t.Helper()
	start := time.Now()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case ev, ok := <-w.ch:
			if !ok {
				w.t.Fatalf("watch closed while waiting for %s", what)
			}
			key := ev.Instance.Key()
			switch ev.Kind {
			case discovery.Added:
				if _, dup := w.set[key]; dup {
					w.t.Fatalf("Added %s, which the watcher already has", key)
				}
				w.set[key] = ev.Instance
			case discovery.Removed:
				if _, ok := w.set[key]; !ok {
					w.t.Fatalf("Removed %s, which the watcher does not have", key)
				}
				delete(w.set, key)
			}
			if done(ev) {
				return time.Since(start)
			}
		case <-timer.C:
			w.t.Fatalf("no %s within %v; the watcher has %d records", what, timeout, len(w.set))
		}
	}
}

// has waits until the watcher's set is exactly keys.
func (w *follower) has(timeout time.Duration, what string, insts ...discovery.Instance) time.Duration {
	w.t.Helper()
	want := map[string]bool{}
	for _, i := range insts {
		want[i.Key()] = true
	}
	match := func() bool {
		if len(w.set) != len(want) {
			return false
		}
		for k := range w.set {
			if !want[k] {
				return false
			}
		}
		return true
	}
	if match() {
		return 0
	}
	return w.until(timeout, what, func(discovery.Event) bool { return match() })
}

// quietFor fails if an event arrives within d.
func (w *follower) quietFor(d time.Duration) {
	w.t.Helper()
	select {
	case ev := <-w.ch:
		w.t.Fatalf("unexpected event %v %s", ev.Kind, ev.Instance.Key())
	case <-time.After(d):
	}
}

// leaseOf returns the lease the record of i is held by, or 0.
func leaseOf(t *testing.T, cli *clientv3.Client, i discovery.Instance) clientv3.LeaseID {
	t.Helper()
	kv := recordOf(t, cli, i)
	if kv == nil {
		return 0
	}
	return clientv3.LeaseID(kv.Lease)
}

// recordOf returns the record of i as etcd holds it, or nil.
func recordOf(t *testing.T, cli *clientv3.Client, i discovery.Instance) *mvccpb.KeyValue {
	t.Helper()
	resp, err := cli.Get(t.Context(), i.Key())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	return resp.Kvs[0]
}

func TestTheInstanceIDIsTheLeaseID(t *testing.T) {
	srv := startEtcd(t, fast)
	cli := raw(t, srv.ClientURL())
	a, b := connect(t, srv.ClientURL(), 5*time.Second), connect(t, srv.ClientURL(), 5*time.Second)
	for _, d := range []*Discovery{a, b} {
		if d.ID() == 0 || d.ID() >= 1<<53 {
			t.Fatalf("ID() = %#x; want it in [1, 2^53)", d.ID())
		}
		ttl, err := cli.TimeToLive(t.Context(), clientv3.LeaseID(d.ID()))
		if err != nil || ttl.TTL <= 0 || ttl.GrantedTTL != 5 {
			t.Fatalf("lease %x: %+v, %v; want a live lease of 5s", d.ID(), ttl, err)
		}
	}
	if a.ID() == b.ID() {
		t.Fatalf("two Discoveries share id %x", a.ID())
	}
	i := inst("ns", a.ID())
	register(t, a, i)
	if got := leaseOf(t, cli, i); got != clientv3.LeaseID(a.ID()) {
		t.Fatalf("record held by lease %x; want %x", got, a.ID())
	}
}

// A process that dies without Close stops its keep-alives; its records go
// when the lease expires.
func TestRecordsOfAVanishedClientExpireWithItsLease(t *testing.T) {
	srv := startEtcd(t, fast)
	const ttl = time.Second
	gone, observer := connect(t, srv.ClientURL(), ttl), connect(t, srv.ClientURL(), 5*time.Second)
	x, y := inst("ns", 1), inst("ns", 2)
	register(t, gone, x, y)
	w := watch(t, observer, discovery.Query{Namespace: "ns"})
	w.has(5*time.Second, "the records", x, y)

	gone.cli.Close() // as if the process were killed: no revoke, no keep-alive
	took := w.has(ttl+2*time.Second, "Removed of both records", []discovery.Instance{}...)
	t.Logf("records removed %v after the client vanished (TTL %v)", took.Round(time.Millisecond), ttl)
	start := time.Now()
	gone.Close()
	t.Logf("Close of the vanished client took %v", time.Since(start))
}

// Someone revokes the lease: the Discovery is granted the same id again
// and registers its records again; Register meanwhile waits.
func TestARevokedLeaseIsGrantedAgainWithTheSameID(t *testing.T) {
	srv := startEtcd(t, fast)
	cli := raw(t, srv.ClientURL())
	const ttl = time.Second
	d, observer := connect(t, srv.ClientURL(), ttl), connect(t, srv.ClientURL(), 5*time.Second)
	id := d.ID()
	x, y := inst("ns", 1), inst("ns", 2)
	register(t, d, x, y)
	w := watch(t, observer, discovery.Query{Namespace: "ns"})
	w.has(5*time.Second, "the records", x, y)

	revoked := time.Now()
	if _, err := cli.Revoke(t.Context(), clientv3.LeaseID(id)); err != nil {
		t.Fatal(err)
	}
	w.has(5*time.Second, "Removed of both records")
	z := inst("ns", 3)
	register(t, d, z) // waits for the new lease
	w.has(5*time.Second, "the records again", x, y, z)
	t.Logf("records back %v after the revoke (TTL %v)", time.Since(revoked).Round(time.Millisecond), ttl)
	if d.ID() != id {
		t.Fatalf("ID() changed from %x to %x", id, d.ID())
	}
	for _, i := range []discovery.Instance{x, y, z} {
		if got := leaseOf(t, cli, i); got != clientv3.LeaseID(id) {
			t.Fatalf("%s held by lease %x; want the same id %x", i.Key(), got, id)
		}
	}
	if d.Err() != nil {
		t.Fatalf("Err() = %v after recovering", d.Err())
	}
}

func TestFailOnLeaseLossGivesUp(t *testing.T) {
	srv := startEtcd(t, fast)
	cli := raw(t, srv.ClientURL())
	d := connect(t, srv.ClientURL(), time.Second, func(c *Config) { c.FailOnLeaseLoss = true })
	register(t, d, inst("ns", 1))
	if _, err := cli.Revoke(t.Context(), clientv3.LeaseID(d.ID())); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.Done():
	case <-time.After(3 * time.Second):
		t.Fatal("Done not closed 3s after the lease was revoked")
	}
	if err := d.Err(); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("Err() = %v; want ErrLeaseLost", err)
	}
	if err := d.Register(t.Context(), inst("ns", 2)); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("Register after the loss = %v; want ErrLeaseLost", err)
	}
	if resp, _ := cli.Get(t.Context(), discovery.KeyPrefix, clientv3.WithPrefix()); len(resp.Kvs) != 0 {
		t.Fatalf("%d records in etcd after the loss; want none", len(resp.Kvs))
	}
	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if !errors.Is(d.Err(), ErrLeaseLost) {
		t.Fatalf("Err() after Close = %v; want still ErrLeaseLost", d.Err())
	}
}

// proxy forwards TCP to target until cut, which drops every connection and
// refuses new ones until heal: a network partition.
type proxy struct {
	l      net.Listener
	target string
	wg     sync.WaitGroup
	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]struct{}
	// refused holds when each connection made while cut was dropped.
	refused []time.Time
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{l: l, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Go(p.accept)
	t.Cleanup(func() {
		l.Close()
		p.partition(true)
		p.wg.Wait()
	})
	return p
}

func (p *proxy) URL() string { return "http://" + p.l.Addr().String() }

func (p *proxy) accept() {
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		cut := p.cut
		p.mu.Unlock()
		if cut {
			c.Close()
			p.mu.Lock()
			p.refused = append(p.refused, time.Now())
			p.mu.Unlock()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[up] = struct{}{}, struct{}{}
		p.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			io.Copy(dst, src)
			dst.Close()
			src.Close()
		}
		p.wg.Go(func() { pipe(up, c) })
		p.wg.Go(func() { pipe(c, up) })
	}
}

func (p *proxy) partition(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for c := range p.conns {
			c.Close()
		}
		clear(p.conns)
	}
}

// etcd unreachable from one process for longer than the TTL: etcd expires
// the lease and the others see the records go; once the process reaches
// etcd again it registers them under the same id.
func TestAPartitionLongerThanTheTTLEndsWithTheRecordsBack(t *testing.T) {
	srv := startEtcd(t, fast)
	cli := raw(t, srv.ClientURL())
	p := newProxy(t, strings.TrimPrefix(srv.ClientURL(), "http://"))
	const ttl = time.Second
	var logs testutil.SyncBuffer
	d := connect(t, p.URL(), ttl, func(c *Config) { c.Logger = slog.New(slog.NewTextHandler(&logs, nil)) })
	observer := connect(t, srv.ClientURL(), 5*time.Second)
	id := d.ID()
	x, y := inst("ns", 1), inst("ns", 2)
	register(t, d, x, y)
	w := watch(t, observer, discovery.Query{Namespace: "ns"})
	w.has(5*time.Second, "the records", x, y)

	p.partition(true)
	took := w.has(ttl+2*time.Second, "Removed of both records")
	t.Logf("records removed %v after the partition (TTL %v)", took.Round(time.Millisecond), ttl)
	time.Sleep(200 * time.Millisecond)
	p.partition(false)
	took = w.has(10*time.Second, "the records again", x, y)
	t.Logf("records back %v after the partition healed", took.Round(time.Millisecond))
	for _, i := range []discovery.Instance{x, y} {
		if got := leaseOf(t, cli, i); got != clientv3.LeaseID(id) {
			t.Fatalf("%s held by lease %x; want the same id %x", i.Key(), got, id)
		}
	}
	// The records are visible to others as soon as the transaction that
	// registers them again commits, a moment before that is logged.
	want := []string{"keep-alive failing", "expired or was revoked", "registered the records again"}
	logged := func() bool {
		for _, w := range want {
			if !strings.Contains(logs.String(), w) {
				return false
			}
		}
		return true
	}
	for deadline := time.Now().Add(5 * time.Second); !logged() && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	out := logs.String()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("log lacks %q:\n%s", w, out)
		}
	}
}

// etcd down for longer than the TTL, then back with its data: etcd gives
// every lease a fresh TTL when it starts, so the records stay; the
// Discovery resumes its keep-alives, keeps its id, and watchers on another
// client converge.
//
// A lease that expires after the restart is granted again with the same
// id and its records registered again, so their lease id alone does not
// show that they stayed: their create revisions do, and the watcher must
// see none of them removed. (The client once backed off up to 2.4 s
// before reconnecting, and lost its 1 s lease when etcd took a few
// hundred milliseconds longer than usual to restart.) The lease is of 3 s,
// not 1 s: etcd runs in this process, and a short lease expired when a
// loaded machine stalled the whole test process for a second or so (once
// in 20 runs at 2 s, with two busy loops beside the race-enabled test).
func TestAnEtcdRestartLongerThanTheTTLKeepsTheRecords(t *testing.T) {
	srv, opts := startRestartable(t)

	const ttl = 3 * time.Second
	var logs testutil.SyncBuffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the Discovery's log:\n%s", logs.String())
		}
	})
	d := connect(t, srv.ClientURL(), ttl, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	observer := connect(t, srv.ClientURL(), 5*time.Second)
	id := d.ID()
	x, y := inst("ns", 1), inst("ns", 2)
	register(t, d, x, y)
	w := watch(t, observer, discovery.Query{Namespace: "ns"})
	w.has(5*time.Second, "the records", x, y)
	created := map[string]int64{}
	cli := raw(t, srv.ClientURL())
	for _, i := range []discovery.Instance{x, y} {
		created[i.Key()] = recordOf(t, cli, i).CreateRevision
	}

	srv.Close()
	fmt.Fprintf(&logs, "test: etcd stopped at %s\n", time.Now().Format(time.RFC3339Nano))
	time.Sleep(2 * ttl)
	srv = startEtcd(t, opts)
	restarted := time.Now()
	fmt.Fprintf(&logs, "test: etcd started again at %s\n", restarted.Format(time.RFC3339Nano))
	cli = raw(t, srv.ClientURL())

	// Past a TTL after the restart, the lease is alive only if kept alive.
	time.Sleep(2 * ttl)
	for _, i := range []discovery.Instance{x, y} {
		kv := recordOf(t, cli, i)
		switch {
		case kv == nil:
			t.Fatalf("%s gone after the restart: the lease expired", i.Key())
		case clientv3.LeaseID(kv.Lease) != clientv3.LeaseID(id):
			t.Fatalf("%s held by lease %x after the restart; want %x", i.Key(), kv.Lease, id)
		case kv.CreateRevision != created[i.Key()]:
			t.Fatalf("%s created again at revision %d after the restart (first at %d): the lease expired and the record was registered again",
				i.Key(), kv.CreateRevision, created[i.Key()])
		}
	}
	if d.ID() != id {
		t.Fatalf("ID() changed from %x to %x", id, d.ID())
	}
	z := inst("ns", 3)
	register(t, d, z)
	t.Logf("registered a record %v after the restart", time.Since(restarted).Round(time.Millisecond))
	w.until(10*time.Second, "Added "+z.Key(), func(ev discovery.Event) bool {
		if ev.Kind == discovery.Removed {
			t.Fatalf("the watcher saw %s removed after the restart; want the records kept", ev.Instance.Key())
		}
		return ev.Kind == discovery.Added && ev.Instance.Key() == z.Key()
	})
	if len(w.set) != 3 {
		t.Fatalf("the watcher has %d records after the restart; want %s, %s and %s", len(w.set), x.Key(), y.Key(), z.Key())
	}
	t.Logf("the watcher converged %v after the restart", time.Since(restarted).Round(time.Millisecond))
	// Close while this server runs; the cleanup would find it stopped.
	d.Close()
	observer.Close()
}

func TestMalformedRecordsAreSkippedWithAWarning(t *testing.T) {
	srv := startEtcd(t, fast)
	cli := raw(t, srv.ClientURL())
	var logs testutil.SyncBuffer
	d := connect(t, srv.ClientURL(), 5*time.Second, func(c *Config) { c.Logger = slog.New(slog.NewTextHandler(&logs, nil)) })
	good := inst("ns", 1)
	register(t, d, good)
	other := inst("ns", 7)
	otherJSON := `{"namespace":"ns","component":"c","endpoint":"e","instance_id":7,"transport":"tcp","address":"x","codec":"json"}`
	bad := map[string]string{
		"v1/instances/ns/c/e/2":        `{not json`,
		"v1/instances/ns/c/e/3":        otherJSON, // value for another key
		"v1/instances/ns/c/e/A":        otherJSON, // uppercase id
		"v1/instances/ns/c/e/04":       otherJSON, // leading zero
		"v1/instances/ns/c/e":          otherJSON, // too short
		"v1/instances/ns/c/e/5/extra":  otherJSON,
		"v1/instances/ns/c/e/6":        `{"namespace":"ns","component":"c","endpoint":"e","instance_id":"6"}`,
		"v1/instances/ns/C/e/8":        `{"namespace":"ns","component":"C","endpoint":"e","instance_id":8}`,
		"v1/instances/ns/c/e/ffffffff": `[]`,
	}
	put := func(k, v string) {
		t.Helper()
		if _, err := cli.Put(t.Context(), k, v); err != nil {
			t.Fatal(err)
		}
	}
	for k, v := range bad {
		put(k, v)
	}
	got, err := d.List(t.Context(), discovery.Query{Namespace: "ns"})
	if err != nil || len(got) != 1 || got[0].Key() != good.Key() {
		t.Fatalf("List = %v, %v; want only %s", got, err, good.Key())
	}
	w := watch(t, d, discovery.Query{Namespace: "ns"})
	if len(w.set) != 1 {
		t.Fatalf("snapshot has %d records; want only %s", len(w.set), good.Key())
	}
	for k := range bad {
		if !strings.Contains(logs.String(), "key="+k+" ") {
			t.Errorf("no warning names %s; log:\n%s", k, logs.String())
		}
	}

	// Live: malformed puts are not events, a good record overwritten by a
	// bad one is Removed, and a good one after them is the next event.
	put("v1/instances/ns/c/e/9", `{"bad`)
	put(good.Key(), `{"bad`)
	w.until(5*time.Second, "Removed of the overwritten record", func(ev discovery.Event) bool {
		if ev.Kind != discovery.Removed || ev.Instance.Key() != good.Key() {
			t.Fatalf("got %v %s; want Removed %s", ev.Kind, ev.Instance.Key(), good.Key())
		}
		return true
	})
	put(other.Key(), otherJSON)
	w.until(5*time.Second, "Added "+other.Key(), func(ev discovery.Event) bool {
		if ev.Kind != discovery.Added || ev.Instance.Key() != other.Key() {
			t.Fatalf("got %v %s; want Added %s", ev.Kind, ev.Instance.Key(), other.Key())
		}
		return true
	})
	if n := strings.Count(logs.String(), "key=v1/instances/ns/c/e/2 "); n != 1 {
		t.Errorf("the record under .../2 was warned about %d times; want once per version", n)
	}
}

func TestAnOverwrittenRecordIsRemovedThenAdded(t *testing.T) {
	srv := startEtcd(t, fast)
	cli := raw(t, srv.ClientURL())
	d := connect(t, srv.ClientURL(), 5*time.Second)
	i := inst("ns", 1)
	register(t, d, i)
	w := watch(t, d, discovery.Query{})
	resp, err := cli.Get(t.Context(), i.Key())
	if err != nil {
		t.Fatal(err)
	}
	same := string(resp.Kvs[0].Value)
	if _, err := cli.Put(t.Context(), i.Key(), same); err != nil {
		t.Fatal(err)
	}
	w.quietFor(300 * time.Millisecond) // an identical put is no news

	changed := i
	changed.Address = "10.9.9.9:1"
	val := strings.Replace(same, i.Address, changed.Address, 1)
	if _, err := cli.Put(t.Context(), i.Key(), val); err != nil {
		t.Fatal(err)
	}
	var kinds []discovery.EventKind
	w.until(5*time.Second, "Removed then Added", func(ev discovery.Event) bool {
		kinds = append(kinds, ev.Kind)
		return len(kinds) == 2
	})
	if kinds[0] != discovery.Removed || kinds[1] != discovery.Added || w.set[i.Key()].Address != changed.Address {
		t.Fatalf("events %v, record %+v; want Removed, Added with the new address", kinds, w.set[i.Key()])
	}
}

// A watch that etcd cancels (here by compaction past its revision while it
// was catching up) reads again and sends only the difference.
func TestAWatchResyncsAfterCompaction(t *testing.T) {
	srv := startEtcd(t, fast)
	cli := raw(t, srv.ClientURL())
	d := connect(t, srv.ClientURL(), 5*time.Second)
	keep, drop := inst("ns", 1), inst("ns", 2)
	register(t, d, keep, drop)
	w := watch(t, d, discovery.Query{})

	// Resync directly: a watcher whose view is out of date converges.
	ww := &watcher{d: d, prefix: discovery.KeyPrefix, out: make(chan discovery.Event, 16), told: map[string]*record{}, pending: map[string]pend{}}
	recs, rev, err := d.read(t.Context(), discovery.KeyPrefix)
	if err != nil {
		t.Fatal(err)
	}
	ww.load(recs, true)
	if err := d.Unregister(t.Context(), drop); err != nil {
		t.Fatal(err)
	}
	added := inst("ns", 3)
	register(t, d, added)
	resp, err := cli.Compact(t.Context(), rev+2)
	if err != nil || resp == nil {
		t.Fatalf("Compact: %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan bool)
	go func() { done <- ww.follow(ctx, rev, nil) }()
	select {
	case again := <-done:
		if !again {
			t.Fatal("follow ended without asking to read again")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("follow did not notice the compaction")
	}
	recs, _, err = d.read(t.Context(), discovery.KeyPrefix)
	if err != nil {
		t.Fatal(err)
	}
	ww.load(recs, false)
	var got []string
	for len(ww.out) > 0 { // sent while following
		ev := <-ww.out
		got = append(got, describe(ev))
	}
	for {
		out, ev := ww.next()
		if out == nil {
			break
		}
		ww.pop()
		got = append(got, describe(ev))
	}
	want := []string{"added " + keep.Key(), "added " + drop.Key(), "synced", "removed " + drop.Key(), "added " + added.Key()}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// The public watch, which saw every change live, agrees.
	w.has(5*time.Second, "the final set", keep, added)
}

func describe(ev discovery.Event) string {
	if ev.Kind == discovery.Synced {
		return "synced"
	}
	return ev.Kind.String() + " " + ev.Instance.Key()
}

func TestAnUnreachableEtcdIsAClearErrorInTime(t *testing.T) {
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := closed.Addr().String()
	closed.Close()
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held sync.WaitGroup
	defer held.Wait()
	defer silent.Close()
	held.Go(func() {
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c) // accepted, never answered
		}
	})
	const timeout = 500 * time.Millisecond
	for _, tc := range []struct {
		name     string
		endpoint string
	}{
		{"a port nobody listens on", refused},
		{"a server that never answers", "http://" + silent.Addr().String()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			d, err := New(t.Context(), Config{Endpoints: []string{tc.endpoint}, DialTimeout: timeout, Logger: quiet})
			took := time.Since(start)
			if err == nil {
				d.Close()
				t.Fatal("New succeeded")
			}
			want := "discovery: etcd at " + tc.endpoint + " unreachable after 500ms (check ETCD_ENDPOINTS)"
			var ue *UnreachableError
			if err.Error() != want || !errors.As(err, &ue) {
				t.Fatalf("New = %v; want %q", err, want)
			}
			if took < timeout || took > timeout+time.Second {
				t.Fatalf("New failed after %v; want about %v", took, timeout)
			}
			t.Logf("%v after %v", err, took.Round(time.Millisecond))
		})
	}
	t.Run("the caller's context ends first", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := New(ctx, Config{Endpoints: []string{refused}, DialTimeout: 5 * time.Second, Logger: quiet})
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > time.Second {
			t.Fatalf("New = %v after %v; want the context's error at once", err, time.Since(start))
		}
	})
	t.Run("no endpoints", func(t *testing.T) {
		_, err := New(t.Context(), Config{})
		if err == nil || !strings.Contains(err.Error(), "ETCD_ENDPOINTS") {
			t.Fatalf("New without endpoints = %v; want an error naming ETCD_ENDPOINTS", err)
		}
	})
}

func TestCloseRevokesTheLease(t *testing.T) {
	srv := startEtcd(t, fast)
	cli := raw(t, srv.ClientURL())
	d := connect(t, srv.ClientURL(), 30*time.Second)
	register(t, d, inst("ns", 1))
	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	ttl, err := cli.TimeToLive(t.Context(), clientv3.LeaseID(d.ID()))
	if err != nil || ttl.TTL != -1 {
		t.Fatalf("lease after Close: %+v, %v; want revoked (TTL -1)", ttl, err)
	}
	if resp, _ := cli.Get(t.Context(), discovery.KeyPrefix, clientv3.WithPrefix()); len(resp.Kvs) != 0 {
		t.Fatalf("%d records after Close; want none", len(resp.Kvs))
	}
	if !errors.Is(d.Err(), discovery.ErrClosed) {
		t.Fatalf("Err() after Close = %v; want ErrClosed", d.Err())
	}
	select {
	case <-d.Done():
	default:
		t.Fatal("Done open after Close")
	}
}

// A lease id someone else holds is not taken over: the Discovery is
// granted another.
func TestATakenLeaseIDIsNotReused(t *testing.T) {
	srv := startEtcd(t, fast)
	d := connect(t, srv.ClientURL(), 5*time.Second)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	lease, _, err := d.grant(ctx, clientv3.LeaseID(d.ID()))
	if err != nil {
		t.Fatal(err)
	}
	defer d.leases.LeaseRevoke(context.Background(), &pb.LeaseRevokeRequest{ID: int64(lease)})
	if lease == clientv3.LeaseID(d.ID()) || lease <= 0 || lease >= 1<<53 {
		t.Fatalf("grant of a taken id gave %x; want another id below 2^53", lease)
	}
}

// etcd restarted without its data (a container without a volume, a
// member rebuilt): every lease and record is gone and revisions start
// again from 1, below those the watchers have seen. The owners register
// their records again, and a watcher on another client converges on what
// the new etcd holds: no ghost of a process that died meanwhile, no
// record missing.
func TestAWatchConvergesAfterEtcdRestartsWithoutItsData(t *testing.T) {
	srv, opts := startRestartable(t)

	const ttl = time.Second
	d := connect(t, srv.ClientURL(), ttl)
	gone := connect(t, srv.ClientURL(), ttl)
	observer := connect(t, srv.ClientURL(), 5*time.Second)
	x, ghost := inst("ns", 1), inst("ns", 2)
	register(t, d, x)
	register(t, gone, ghost)
	// Revisions the new etcd will take a while to reach.
	cli := raw(t, srv.ClientURL())
	for i := range 50 {
		if _, err := cli.Put(t.Context(), "other/"+strconv.Itoa(i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	w := watch(t, observer, discovery.Query{Namespace: "ns"})
	w.has(5*time.Second, "the records", x, ghost)

	srv.Close()
	gone.cli.Close() // its process dies while etcd is down
	opts.Dir = t.TempDir()
	srv = startEtcd(t, opts)

	late := connect(t, srv.ClientURL(), 5*time.Second)
	z := inst("ns", 3)
	register(t, late, z)
	took := w.has(10*time.Second, "the records the new etcd holds", x, z)
	t.Logf("the watcher converged %v after the record was registered", took.Round(time.Millisecond))
	d.Close()
	late.Close()
	observer.Close()
}

// Close with etcd gone, a watch open, does not wait for etcd: the client
// fails to connect, also when woken to try again at once, so Close gives
// up on the revoke after reconnectGrace, well before DialTimeout, and says
// that the records expire with the lease.
func TestCloseWithEtcdGoneReturnsInTime(t *testing.T) {
	srv := startEtcd(t, fast)
	const dial = 20 * time.Second
	d := connect(t, srv.ClientURL(), 5*time.Second, func(c *Config) { c.DialTimeout = dial })
	register(t, d, inst("ns", 1))
	watch(t, d, discovery.Query{})
	srv.Close()
	start := time.Now()
	err := d.Close()
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "revoke etcd lease") || !strings.Contains(err.Error(), "etcd unreachable") ||
		!strings.Contains(err.Error(), "expire within 5s") {
		t.Fatalf("Close with etcd gone = %v; want an error saying etcd is unreachable and the records expire within the TTL", err)
	}
	if took > reconnectGrace+time.Second {
		t.Fatalf("Close with etcd gone took %v; want it to give up %v after a failed connection attempt, not to wait for the dial timeout %v",
			took, reconnectGrace, dial)
	}
	t.Logf("Close: %v after %v", err, took.Round(time.Millisecond))
}

// Close and Unregister called the moment etcd is back, while the client
// still waits out its reconnect backoff (its connection in
// TRANSIENT_FAILURE), reach etcd: the records go at once, not LeaseTTL
// later. The client here backs off for a minute so that the moment lasts;
// with the default backoff it lasts up to 2.4 s.
func TestCloseAndUnregisterRightAfterEtcdIsBackRemoveTheRecordsAtOnce(t *testing.T) {
	for _, tc := range []struct {
		name   string
		remove func(*testing.T, *Discovery, discovery.Instance) error
	}{
		{"Close revokes the lease", func(_ *testing.T, d *Discovery, _ discovery.Instance) error { return d.Close() }},
		{"Unregister deletes the record", func(t *testing.T, d *Discovery, i discovery.Instance) error {
			return d.Unregister(testutil.Timeout(t, 5*time.Second), i)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, opts := startRestartable(t)
			d := connect(t, srv.ClientURL(), time.Minute, func(c *Config) {
				c.Configure = func(cc *clientv3.Config) {
					cc.DialOptions = append(cc.DialOptions, grpc.WithConnectParams(grpc.ConnectParams{
						Backoff:           grpcbackoff.Config{BaseDelay: time.Minute, Multiplier: 1.6, MaxDelay: time.Minute},
						MinConnectTimeout: 5 * time.Second,
					}))
				}
			})
			x := inst("ns", 1)
			register(t, d, x)

			srv.Close()
			conn := d.cli.ActiveConnection()
			testutil.Eventually(t, 10*time.Second, "the client failing to connect (TRANSIENT_FAILURE)", func() bool {
				return conn.GetState() == connectivity.TransientFailure
			})
			srv = startEtcd(t, opts)
			cli := raw(t, srv.ClientURL())
			if st := conn.GetState(); st != connectivity.TransientFailure {
				t.Fatalf("the client is %v once etcd is back; want it still backing off in TRANSIENT_FAILURE", st)
			}
			start := time.Now()
			err := tc.remove(t, d, x)
			t.Logf("%s: %v after %v", tc.name, err, time.Since(start).Round(time.Microsecond))
			if err != nil {
				t.Fatalf("%s with etcd back: %v; want it to reach etcd", tc.name, err)
			}
			resp, err := cli.Get(t.Context(), discovery.KeyPrefix, clientv3.WithPrefix())
			if err != nil || len(resp.Kvs) != 0 {
				t.Fatalf("records right after %s: %v, %v; want none", tc.name, resp.Kvs, err)
			}
			d.Close() // while etcd runs; the cleanup would find it stopped
		})
	}
}

// A record larger than etcd takes is an error that says so and what to
// do, whether the client or the server refuses it; the Discovery goes on.
func TestAnOversizedRecordIsAClearError(t *testing.T) {
	srv := startEtcd(t, fast)
	d := connect(t, srv.ClientURL(), 5*time.Second)
	for _, size := range []int{1600 << 10, 3 << 20} {
		big := inst("ns", 1)
		big.Metadata = map[string]string{"blob": strings.Repeat("a", size)}
		err := d.Register(t.Context(), big)
		if err == nil {
			t.Fatalf("Register of a %d-byte record succeeded", size)
		}
		for _, want := range []string{big.Key(), "more than etcd takes", "--max-request-bytes", "keep Instance.Metadata small"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("Register of a %d-byte record = %v; want it to say %q", size, err, want)
			}
		}
	}
	register(t, d, inst("ns", 2))
}

// An Unregister that fails while etcd is unreachable is not the end of the
// record: the lease that holds it is kept alive, so it would stay as long
// as the process. Once etcd answers, the Discovery removes it; a record
// registered again meanwhile under the same key stays.
func TestARecordWhoseUnregisterFailedIsRemovedOnceEtcdAnswers(t *testing.T) {
	srv := startEtcd(t, fast)
	p := newProxy(t, strings.TrimPrefix(srv.ClientURL(), "http://"))
	d := connect(t, p.URL(), 5*time.Second)
	observer := connect(t, srv.ClientURL(), 5*time.Second)
	x, y, z := inst("ns", 1), inst("ns", 2), inst("ns", 3)
	register(t, d, x, y, z)
	w := watch(t, observer, discovery.Query{Namespace: "ns"})
	w.has(5*time.Second, "the records", x, y, z)

	p.partition(true)
	for _, i := range []discovery.Instance{x, y} {
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		err := d.Unregister(ctx, i)
		cancel()
		if err == nil {
			t.Fatalf("Unregister(%s) through a partition succeeded", i.Key())
		}
	}
	// The delete of y was applied, its answer lost.
	if _, err := raw(t, srv.ClientURL()).Delete(t.Context(), y.Key()); err != nil {
		t.Fatal(err)
	}
	p.partition(false)
	register(t, d, y) // and the caller registers y again
	took := w.has(10*time.Second, "the Removed of the record whose Unregister failed", y, z)
	t.Logf("removed %v after the partition healed", took.Round(time.Millisecond))
	w.quietFor(time.Second) // and y stays
}

// startRestartable starts etcd on a data directory of its own, and
// returns its options with the ports it took, to start it again on.
func startRestartable(t *testing.T) (*etcdserver.Server, etcdserver.Options) {
	t.Helper()
	opts := fast
	opts.Dir = t.TempDir()
	srv := startEtcd(t, opts)
	u, _ := url.Parse(srv.ClientURL())
	pu, _ := url.Parse(srv.PeerURL())
	opts.ClientPort, _ = strconv.Atoi(u.Port())
	opts.PeerPort, _ = strconv.Atoi(pu.Port())
	return srv, opts
}

// TestALeaseBelowEtcdsMinimumIsRaisedToIt pins what discovery.lease_ttl's
// description says: etcd grants no lease shorter than 1.5 election
// timeouts, rounded up to a second, so with etcd's default timings a 1s
// request is granted 2s.
//
// The raise is logged at info level, once, with both TTLs: records
// outlive a process that vanishes by the granted TTL, not the asked one.
// A TTL etcd grants as asked (after rounding up to a second) logs no such
// line.
func TestALeaseBelowEtcdsMinimumIsRaisedToIt(t *testing.T) {
	srv := startEtcd(t, etcdserver.Options{NoFsync: true}) // etcd's default timings
	const raised = `level=INFO msg="discovery: etcd granted a longer lease TTL than asked; records outlive a process that vanishes by the granted TTL"`
	var logs testutil.SyncBuffer
	d := connect(t, srv.ClientURL(), time.Second, func(c *Config) { c.Logger = slog.New(slog.NewTextHandler(&logs, nil)) })
	ttl, err := raw(t, srv.ClientURL()).TimeToLive(t.Context(), clientv3.LeaseID(d.ID()))
	if err != nil || ttl.GrantedTTL != 2 {
		t.Fatalf("lease asked for 1s: %+v, %v; want granted 2s, etcd's minimum with its default 1s election timeout", ttl, err)
	}
	var lines []string
	for line := range strings.Lines(logs.String()) {
		if strings.Contains(line, raised) {
			lines = append(lines, line)
		}
	}
	if len(lines) != 1 || !strings.Contains(lines[0], " asked=1s granted=2s") {
		t.Fatalf("the raise was logged %d times:\n%s\nwant once at info level, with asked=1s granted=2s; the log:\n%s", len(lines), strings.Join(lines, ""), logs.String())
	}

	for _, asked := range []time.Duration{1500 * time.Millisecond, 2 * time.Second} {
		var logs testutil.SyncBuffer
		connect(t, srv.ClientURL(), asked, func(c *Config) { c.Logger = slog.New(slog.NewTextHandler(&logs, nil)) })
		if strings.Contains(logs.String(), "longer lease TTL") {
			t.Errorf("a lease asked for %v, granted 2s, logged a raise:\n%s", asked, logs.String())
		}
	}
}
