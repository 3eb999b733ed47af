package loom_test

import (
	"context"
	"errors"
	"iter"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/internal/testutil"
)

// proxy forwards TCP connections to a target, and can cut them (the peer
// died) or stop forwarding while keeping them open (a black hole).
type proxy struct {
	t      *testing.T
	ln     net.Listener
	target atomic.Value // string
	hole   atomic.Bool

	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func newProxy(t *testing.T) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, ln: ln}
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Go(func() { p.forward(c) })
		}
	})
	t.Cleanup(func() { ln.Close(); p.cut(); p.wg.Wait() })
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) forward(c net.Conn) {
	up, err := net.Dial("tcp", p.target.Load().(string))
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, c, up)
	p.mu.Unlock()
	pipe := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if err != nil {
				dst.Close()
				return
			}
			if p.hole.Load() {
				continue // swallow: the peer looks alive but never answers
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				src.Close()
				return
			}
		}
	}
	p.wg.Go(func() { pipe(up, c) })
	pipe(c, up)
}

// cut closes every proxied connection, as if the peer died.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// behindProxy starts a runtime serving path whose TCP plane is reached
// through a proxy; the runtime's first request-plane listener is found by
// serving first on a fixed port.
func behindProxy(t *testing.T, c *cluster, path string, fn func(rt *loom.Runtime) func(context.Context, int) iter.Seq2[uint64, error]) (*loom.Runtime, *proxy) {
	t.Helper()
	p := newProxy(t)
	port := testutil.FreePort(t)
	cfg := c.cfg
	cfg.RequestPlane.Port = port
	cfg.RequestPlane.Advertise = p.addr()
	p.target.Store(net.JoinHostPort("127.0.0.1", itoa(port)))
	rt := c.runtime(loom.WithConfig(cfg))
	serve(t, rt, path, fn(rt))
	return rt, p
}

func itoa(i int) string { return (&net.TCPAddr{Port: i}).String()[1:] }

// gate streams one id, then waits for release before the rest; with
// blockFirst it waits before the first item too.
type gate struct {
	entered chan struct{}
	release chan struct{}
}

func newGate() *gate { return &gate{entered: make(chan struct{}, 16), release: make(chan struct{})} }

func (g *gate) handler(blockFirst bool) func(rt *loom.Runtime) func(context.Context, int) iter.Seq2[uint64, error] {
	return func(rt *loom.Runtime) func(context.Context, int) iter.Seq2[uint64, error] {
		return func(ctx context.Context, n int) iter.Seq2[uint64, error] {
			return func(yield func(uint64, error) bool) {
				g.entered <- struct{}{}
				if !blockFirst && !yield(rt.ID(), nil) {
					return
				}
				select {
				case <-g.release:
				case <-ctx.Done():
					return
				}
				for range n {
					if !yield(rt.ID(), nil) {
						return
					}
				}
			}
		}
	}
}

func TestNetworkFailures(t *testing.T) {
	t.Run("a connection lost after the first response ends the stream with ErrStreamReset", func(t *testing.T) {
		c := newClusterOn(t, "tcp")
		g := newGate()
		_, p := behindProxy(t, c, "fail/reset/gen", g.handler(false))
		cl := client[int, uint64](t, c.runtime(), "fail/reset/gen")
		var got int
		var err error
		for _, e := range cl.Generate(context.Background(), 3) {
			if e != nil {
				err = e
				break
			}
			if got++; got == 1 {
				p.cut()
			}
		}
		close(g.release)
		if !errors.Is(err, loom.ErrStreamReset) || got != 1 {
			t.Fatalf("after %d items: %v, want ErrStreamReset after 1", got, err)
		}
	})
	t.Run("a connection lost before the first response is retried on another instance, which is then preferred", func(t *testing.T) {
		c := newClusterOn(t, "tcp")
		g := newGate()
		dying, p := behindProxy(t, c, "fail/retry/gen", g.handler(true))
		healthy := c.runtime()
		serve(t, healthy, "fail/retry/gen", echoID(healthy))
		var picks, offered atomic.Int32 // Pick calls, and those offered the dying instance
		preferDying := loom.PickerFunc(func(_ context.Context, cs []*loom.Candidate) (*loom.Candidate, error) {
			picks.Add(1)
			for _, cand := range cs {
				if cand.ID == dying.ID() {
					offered.Add(1)
					return cand, nil
				}
			}
			return cs[0], nil
		})
		cl := client[int, uint64](t, c.runtime(), "fail/retry/gen", loom.WithPicker(preferDying))
		waitInstances(t, cl, 2)
		go func() { <-g.entered; p.cut() }()
		got, err := collect(cl.Generate(context.Background(), 1))
		if err != nil || len(got) != 1 || got[0] != healthy.ID() {
			t.Fatalf("got %v, %v; want the call retried on the healthy instance", got, err)
		}
		// The failed instance is avoided while the cooldown lasts, even by
		// a picker that prefers it: no request reaches its handler. The
		// picker is asked once per call, and not offered it.
		picks.Store(0)
		offered.Store(0)
		for range 5 {
			got, err := collect(cl.Generate(context.Background(), 1))
			if err != nil || got[0] != healthy.ID() {
				t.Fatalf("got %v, %v; want the healthy instance while the other is avoided", got, err)
			}
		}
		if n, o := picks.Load(), offered.Load(); n != 5 || o != 0 {
			t.Errorf("5 calls asked the picker %d times and offered it the avoided instance %d times; want 5 and 0", n, o)
		}
		select {
		case <-g.entered:
			t.Fatal("a request reached the avoided instance")
		default:
		}
		close(g.release)
	})
	t.Run("a call whose instances are all dead waits for a new one, and fails with ErrUnreachable if none comes", func(t *testing.T) {
		c := newClusterOn(t, "tcp")
		g := newGate()
		_, p := behindProxy(t, c, "fail/dead/gen", g.handler(false))
		close(g.release)
		caller := c.runtime()
		now := client[int, uint64](t, caller, "fail/dead/gen", loom.WithWaitTimeout(0))
		brief := client[int, uint64](t, caller, "fail/dead/gen", loom.WithWaitTimeout(100*time.Millisecond))
		patient := client[int, uint64](t, caller, "fail/dead/gen", loom.WithWaitTimeout(time.Hour))
		for _, cl := range []*loom.Client[int, uint64]{now, brief, patient} {
			waitInstances(t, cl, 1)
			if _, err := collect(cl.Generate(context.Background(), 1)); err != nil {
				t.Fatal(err)
			}
		}
		p.ln.Close() // the address refuses connections, its record stays
		p.cut()
		// Without a wait the call fails at once, as it did before it
		// could wait.
		for range 3 {
			_, err := collect(now.Generate(context.Background(), 1))
			if !errors.Is(err, loom.ErrUnreachable) || errors.Is(err, loom.ErrStreamReset) || strings.Contains(err.Error(), "appeared") {
				t.Fatalf("err = %v, want ErrUnreachable without a wait", err)
			}
		}
		_, err := collect(brief.Generate(context.Background(), 1))
		if !errors.Is(err, loom.ErrUnreachable) || !strings.Contains(err.Error(), "no other instance of fail/dead/gen appeared within 100ms") {
			t.Fatalf("err = %v, want ErrUnreachable after waiting client.wait_timeout", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, err = collect(patient.Generate(ctx, 1))
		if !errors.Is(err, loom.ErrUnreachable) || !strings.Contains(err.Error(), "appeared before the caller's deadline") {
			t.Fatalf("err = %v, want ErrUnreachable at the caller's deadline", err)
		}
		// A call that finds its only instance dead goes to the one that
		// replaces it.
		res := callRefusedOnce(t, caller, patient)
		fresh := c.runtime()
		serve(t, fresh, "fail/dead/gen", echoID(fresh))
		if r := <-res; r.err != nil || len(r.got) != 1 || r.got[0] != fresh.ID() {
			t.Fatalf("got %v, %v; want the call served by the new instance %x", r.got, r.err, fresh.ID())
		}
	})
	t.Run("a request above the instance's frame size fails with ErrTooLarge, tried on one instance only", func(t *testing.T) {
		c := newClusterOn(t, "tcp")
		c.cfg.RequestPlane.MaxFrameSize = 64 << 10
		var entered atomic.Int32
		for range 2 {
			rt := c.runtime()
			serve(t, rt, "fail/large/gen", func(ctx context.Context, req []byte) iter.Seq2[int, error] {
				entered.Add(1)
				return func(yield func(int, error) bool) { yield(len(req), nil) }
			})
		}
		var picks atomic.Int32
		counting := loom.PickerFunc(func(_ context.Context, cs []*loom.Candidate) (*loom.Candidate, error) {
			picks.Add(1)
			return cs[0], nil
		})
		cl := client[[]byte, int](t, c.runtime(), "fail/large/gen", loom.WithPicker(counting))
		waitInstances(t, cl, 2)
		_, err := collect(cl.Generate(context.Background(), make([]byte, 100<<10)))
		if !errors.Is(err, loom.ErrTooLarge) || errors.Is(err, loom.ErrUnreachable) {
			t.Fatalf("err = %v, want ErrTooLarge", err)
		}
		if picks.Load() != 1 || entered.Load() != 0 {
			t.Fatalf("%d instances tried, %d handlers entered; want 1 and 0", picks.Load(), entered.Load())
		}
		if got, err := collect(cl.Generate(context.Background(), make([]byte, 1000))); err != nil || got[0] != 1000 {
			t.Fatalf("a request that fits after it: %v, %v", got, err)
		}
	})
	t.Run("calls waiting on a frozen instance go to the healthy one, and new calls avoid it", func(t *testing.T) {
		c := newClusterOn(t, "tcp")
		c.cfg.RequestPlane.KeepaliveTimeout = time.Minute // the stall, not keepalive, must decide
		c.cfg.RequestPlane.StallTimeout = 200 * time.Millisecond
		g := newGate()
		close(g.release)
		frozen, p := behindProxy(t, c, "fail/frozen/gen", g.handler(false))
		healthy := c.runtime()
		serve(t, healthy, "fail/frozen/gen", echoID(healthy))
		caller := c.runtime()
		cl := client[int, uint64](t, caller, "fail/frozen/gen", loom.WithPicker(loom.RoundRobin()))
		waitInstances(t, cl, 2)
		if _, err := collect(cl.Direct(frozen.ID()).Generate(context.Background(), 1)); err != nil {
			t.Fatal(err)
		}
		p.hole.Store(true) // the connection stays up; nothing comes back
		// A direct call cannot go elsewhere: it fails, as unreachable,
		// long before keepalive's minute.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := collect(cl.Direct(frozen.ID()).Generate(ctx, 1)); !errors.Is(err, loom.ErrUnreachable) {
			t.Fatalf("the direct call waiting on the frozen instance ended with %v, want ErrUnreachable", err)
		}
		// Calls without a deadline: every one succeeds on the healthy
		// instance, those sent to the frozen one retried there.
		for i := range 20 {
			got, err := collect(cl.Generate(ctx, 1))
			if err != nil || got[0] != healthy.ID() {
				t.Fatalf("call %d after the freeze: %v, %v; want the healthy instance's id %x", i, got, err, healthy.ID())
			}
		}
		// The stall is counted before the waiting call fails.
		if stalls := metricValue(t, caller, "loom_client_stalled_servers_total", "transport", "tcp"); stalls < 1 {
			t.Errorf("loom_client_stalled_servers_total{transport=\"tcp\"} = %v, want the stall counted", stalls)
		}
	})
	t.Run("a peer that stops answering is detected by keepalive, never a hang", func(t *testing.T) {
		c := newClusterOn(t, "tcp")
		c.cfg.RequestPlane.KeepaliveInterval = 50 * time.Millisecond
		c.cfg.RequestPlane.KeepaliveTimeout = 150 * time.Millisecond
		g := newGate()
		_, p := behindProxy(t, c, "fail/hole/gen", g.handler(false))
		cl := client[int, uint64](t, c.runtime(), "fail/hole/gen")
		start := time.Now()
		var err error
		for _, e := range cl.Generate(context.Background(), 3) {
			if e != nil {
				err = e
				break
			}
			p.hole.Store(true)
		}
		close(g.release)
		if !errors.Is(err, loom.ErrStreamReset) {
			t.Fatalf("err = %v, want ErrStreamReset", err)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Fatalf("took %s to notice a silent peer", took)
		}
	})
	t.Run("a runtime shutting down sends GOAWAY and callers go elsewhere before discovery says so", func(t *testing.T) {
		c := newClusterOn(t, "tcp")
		g := newGate()
		// The leaving runtime's record stays in discovery, and the client
		// does not retry: only GOAWAY can steer calls away.
		lag := laggingDiscovery{Discovery: c.store.Connect(), release: make(chan struct{}), called: make(chan struct{}, 1)}
		defer lag.Close()
		leaving := c.runtime(loom.WithDiscovery(lag))
		serve(t, leaving, "fail/goaway/gen", g.handler(false)(leaving))
		staying := c.runtime()
		serve(t, staying, "fail/goaway/gen", echoID(staying))
		cl := client[int, uint64](t, c.runtime(), "fail/goaway/gen", loom.WithPicker(loom.RoundRobin()), loom.WithoutRetry())
		waitInstances(t, cl, 2)
		// Hold a stream open on the leaving runtime so its drain lasts.
		held := make(chan error, 1)
		go func() { _, err := collect(cl.Direct(leaving.ID()).Generate(context.Background(), 1)); held <- err }()
		<-g.entered
		shut := make(chan error, 1)
		go func() { shut <- leaving.Shutdown(context.Background()) }()
		// The drain has begun once the instance unregisters: a call that
		// reached the gate before that would be served (and wait for the
		// gate) as any call accepted before a drain is.
		select {
		case <-lag.called:
		case <-time.After(30 * time.Second):
			t.Fatal("the leaving runtime never began to unregister")
		}
		// Until GOAWAY arrives a call may still meet the draining instance;
		// after it, round robin over two instances gives every call to the
		// one that stays.
		deadline := time.Now().Add(3 * time.Second)
		streak := 0
		for streak < 20 {
			if time.Now().After(deadline) {
				t.Fatalf("calls kept reaching the leaving instance (streak %d)", streak)
			}
			got, err := collect(cl.Generate(context.Background(), 1))
			switch {
			case errors.Is(err, loom.ErrDraining), errors.Is(err, loom.ErrUnreachable):
				streak = 0 // refused there, or its listener already closed
			case err != nil:
				t.Fatal(err)
			case got[0] == staying.ID():
				streak++
			default:
				t.Fatalf("a call was served by the leaving instance")
			}
		}
		if n := len(cl.Instances()); n != 2 {
			t.Fatalf("client sees %d instances; the test needs discovery to lag", n)
		}
		close(g.release)
		if err := <-held; err != nil {
			t.Fatalf("the stream held open during the drain failed: %v", err)
		}
		close(lag.release)
		if err := <-shut; err != nil {
			t.Fatal(err)
		}
	})
}
