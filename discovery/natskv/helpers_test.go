package natskv

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"maps"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/discovery/internal/watchview"
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/internal/testutil"
)

// wait bounds every wait for an event in this package's own tests.
const wait = 5 * time.Second

var quiet = slog.New(slog.DiscardHandler)

func startNATS(t *testing.T, opts embedded.NATSOptions) *embedded.NATS {
	t.Helper()
	srv := testutil.StartNATS(t, opts)
	return srv
}

// connect opens a connection that reconnects quickly and forever, closed
// when the test ends.
func connect(t *testing.T, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	opts = append([]nats.Option{
		nats.MaxReconnects(-1),
		nats.ReconnectWait(20 * time.Millisecond),
		nats.ReconnectJitter(0, 0),
	}, opts...)
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("connect to %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// open returns a Discovery on its own connection to url, closed when the
// test ends.
func open(t *testing.T, url string, cfg Config, opts ...nats.Option) *Discovery {
	t.Helper()
	return newOn(t, connect(t, url, opts...), cfg)
}

func newOn(t *testing.T, nc *nats.Conn, cfg Config) *Discovery {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = quiet
	}
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	d, err := New(ctx, nc, cfg)
	if err != nil {
		t.Fatalf("New(%+v): %v", cfg, err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

// rawKV returns the bucket for writing records by hand.
func rawKV(t *testing.T, nc *nats.Conn, bucket string) jetstream.KeyValue {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(t.Context(), bucket)
	if err != nil {
		t.Fatalf("bind bucket %s: %v", bucket, err)
	}
	return kv
}

func inst(ns, c, e string, id uint64) discovery.Instance {
	return discovery.Instance{
		Namespace: ns, Component: c, Endpoint: e, ID: id,
		Transport: "tcp", Address: "10.0.0.1:7000", Codec: "msgpack",
	}
}

func call(t *testing.T, what string, f func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	if err := f(ctx); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func register(t *testing.T, d discovery.Discovery, insts ...discovery.Instance) {
	t.Helper()
	for _, i := range insts {
		call(t, "Register "+i.Key(), func(ctx context.Context) error { return d.Register(ctx, i) })
	}
}

func unregister(t *testing.T, d discovery.Discovery, insts ...discovery.Instance) {
	t.Helper()
	for _, i := range insts {
		call(t, "Unregister "+i.Key(), func(ctx context.Context) error { return d.Unregister(ctx, i) })
	}
}

func list(t *testing.T, d discovery.Discovery, q discovery.Query) []discovery.Instance {
	t.Helper()
	var got []discovery.Instance
	call(t, "List", func(ctx context.Context) (err error) {
		got, err = d.List(ctx, q)
		return err
	})
	return got
}

func keys(insts []discovery.Instance) []string {
	var out []string
	for _, i := range insts {
		out = append(out, i.Key())
	}
	return out
}

// watcher is a Watch under test.
type watcher struct {
	t  *testing.T
	ch <-chan discovery.Event
}

func startWatch(t *testing.T, d discovery.Discovery, q discovery.Query) *watcher {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	ch, err := d.Watch(ctx, q)
	if err != nil {
		t.Fatalf("Watch(%+v): %v", q, err)
	}
	return &watcher{t: t, ch: ch}
}

// next returns the next event, failing the test after d.
func (w *watcher) next(d time.Duration) discovery.Event {
	w.t.Helper()
	select {
	case ev, ok := <-w.ch:
		if !ok {
			w.t.Fatal("watch channel closed")
		}
		return ev
	case <-time.After(d):
		w.t.Fatalf("no event within %v", d)
	}
	panic("unreachable")
}

// synced returns the snapshot up to Synced.
func (w *watcher) synced() []discovery.Instance {
	w.t.Helper()
	var got []discovery.Instance
	for {
		ev := w.next(wait)
		switch ev.Kind {
		case discovery.Synced:
			return got
		case discovery.Added:
			got = append(got, ev.Instance)
		default:
			w.t.Fatalf("before Synced: %v %s", ev.Kind, ev.Instance.Key())
		}
	}
}

// expect fails unless the next event, within d, is kind for i's key.
func (w *watcher) expect(d time.Duration, kind discovery.EventKind, i discovery.Instance) {
	w.t.Helper()
	ev := w.next(d)
	if ev.Kind != kind || ev.Instance.Key() != i.Key() {
		w.t.Fatalf("got %v %s; want %v %s", ev.Kind, ev.Instance.Key(), kind, i.Key())
	}
	if kind == discovery.Added && !watchview.Same(ev.Instance, i) {
		w.t.Fatalf("Added %+v; want %+v", ev.Instance, i)
	}
}

// quietFor fails if an event arrives within d.
func (w *watcher) quietFor(d time.Duration) {
	w.t.Helper()
	select {
	case ev, ok := <-w.ch:
		w.t.Fatalf("unexpected event %v %s (channel open: %v)", ev.Kind, ev.Instance.Key(), ok)
	case <-time.After(d):
	}
}

// gate is a nats.CustomDialer whose connections the test can cut and
// whose reconnects it can hold back.
type gate struct {
	mu     sync.Mutex
	closed bool
	conns  []net.Conn
}

func (g *gate) Dial(network, addr string) (net.Conn, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil, errors.New("gate closed by the test")
	}
	c, err := net.DialTimeout(network, addr, time.Second)
	if err == nil {
		g.conns = append(g.conns, c)
	}
	return c, err
}

// cut closes the gate and the open connections, as a network failure would.
func (g *gate) cut() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
	for _, c := range g.conns {
		_ = c.Close()
	}
	g.conns = nil
}

// shut closes the gate and leaves the connections be.
func (g *gate) shut() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

func (g *gate) open() {
	g.mu.Lock()
	g.closed = false
	g.mu.Unlock()
}

// logBuffer collects log lines for tests that check them.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// convergesOn reads events, from a watcher told of the first of want
// already, until what it has been told is want: whatever the watcher went
// through, it ends where the bucket is.
func (w *watcher) convergesOn(want ...discovery.Instance) {
	w.t.Helper()
	wantKeys := map[string]bool{}
	for _, i := range want {
		wantKeys[i.Key()] = true
	}
	told := map[string]bool{want[0].Key(): true}
	for !maps.Equal(told, wantKeys) {
		ev := w.next(3 * wait)
		switch ev.Kind {
		case discovery.Added:
			told[ev.Instance.Key()] = true
		case discovery.Removed:
			delete(told, ev.Instance.Key())
		}
	}
}
