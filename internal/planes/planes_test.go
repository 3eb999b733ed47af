package planes_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/internal/plane"
	"github.com/loomrt/loom/internal/planes"
	"github.com/loomrt/loom/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.DiscardHandler)

// upper serves every path it knows by sending the request upper-cased,
// then once more after the stop signal if it was asked to wait for it.
type upper struct{ paths map[string]context.Context }

func (u upper) StreamContext(path string) context.Context { return u.paths[path] }

func (u upper) ServeStream(s planes.Stream, stop context.Context) error {
	if _, ok := u.paths[s.Path()]; !ok {
		return errors.New("not here")
	}
	if err := s.Send([]byte(strings.ToUpper(string(s.Payload())))); err != nil {
		return err
	}
	if string(s.Payload()) == "wait" {
		select {
		case <-stop.Done():
			return s.Send([]byte("stopped"))
		case <-s.Context().Done():
			return s.Context().Err()
		}
	}
	return nil
}

func newPlanes(t *testing.T, transport string) *planes.Planes {
	t.Helper()
	rc := config.Default().RequestPlane
	rc.Transport, rc.Host, rc.Port = transport, "127.0.0.1", 0
	cfg := planes.Config{RequestPlane: rc, FailureCooldown: time.Second, ID: 0xabc, Logger: quiet, OnLimit: func(string) {}}
	if transport == planes.NATS {
		ns := testutil.StartNATS(t, embedded.NATSOptions{})
		nc, err := nats.Connect(ns.ClientURL())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		cfg.NATS = func(context.Context) (*nats.Conn, error) { return nc, nil }
	}
	return planes.New(cfg, upper{paths: map[string]context.Context{"a/b/c": context.Background()}})
}

func recvAll(t *testing.T, s planes.ClientStream) []string {
	t.Helper()
	defer s.Close()
	var got []string
	for {
		b, err := s.Recv()
		if err == io.EOF {
			return got
		}
		if err != nil {
			t.Fatalf("after %q: %v", got, err)
		}
		got = append(got, string(b))
	}
}

func TestEachPlaneServesCallsAndStops(t *testing.T) {
	for _, transport := range []string{planes.TCP, planes.NATS} {
		t.Run(transport, func(t *testing.T) {
			p := newPlanes(t, transport)
			ctx := context.Background()
			tr, addr, tlsOn, err := p.Serve(ctx)
			if err != nil || tr != transport || addr == "" || tlsOn {
				t.Fatalf("Serve: %q %q %v %v", tr, addr, tlsOn, err)
			}
			if transport == planes.NATS && addr != planes.Subject(0xabc) {
				t.Fatalf("NATS plane serves on %q, want %q", addr, planes.Subject(0xabc))
			}
			target := planes.Target{Transport: tr, Address: addr}
			s, err := p.Open(ctx, target, plane.Request{Path: "a/b/c", Payload: []byte("hi")})
			if err != nil {
				t.Fatal(err)
			}
			if got := recvAll(t, s); len(got) != 1 || got[0] != "HI" {
				t.Fatalf("got %q, want [HI]", got)
			}
			// The stop signal reaches the handler through the stop context.
			s, err = p.Open(ctx, target, plane.Request{Path: "a/b/c", Payload: []byte("wait")})
			if err != nil {
				t.Fatal(err)
			}
			if b, err := s.Recv(); err != nil || string(b) != "WAIT" {
				t.Fatalf("first item %q, %v", b, err)
			}
			s.Stop()
			if got := recvAll(t, s); len(got) != 1 || got[0] != "stopped" {
				t.Fatalf("after Stop got %q, want [stopped]", got)
			}
			sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if err := p.Shutdown(sctx); err != nil {
				t.Fatal(err)
			}
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := p.Open(ctx, target, plane.Request{Path: "a/b/c"}); !errors.Is(err, plane.ErrPoolClosed) {
				t.Fatalf("Open after Close: %v, want ErrPoolClosed", err)
			}
		})
	}
}

func TestOpenNamesWhatCannotBeCalled(t *testing.T) {
	p := newPlanes(t, planes.TCP)
	defer p.Close()
	for _, tt := range []struct {
		target planes.Target
		want   string
	}{
		{planes.Target{Transport: "dynamo/tcp", Address: "x"}, `"dynamo/tcp"`},
		{planes.Target{Transport: planes.Local, Address: "x"}, "transport local"},
		{planes.Target{Transport: planes.TCP, Address: "127.0.0.1:1", TLS: true}, "request_plane.tls_ca_file"},
	} {
		_, err := p.Open(context.Background(), tt.target, plane.Request{Path: "a/b/c"})
		if !errors.Is(err, plane.ErrUnreachable) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: %v, want ErrUnreachable saying %s", tt.target, err, tt.want)
		}
	}
	if !planes.Speaks(planes.TCP) || !planes.Speaks(planes.NATS) || !planes.Speaks(planes.Local) || planes.Speaks("dynamo/tcp") {
		t.Error("Speaks does not match the planes Open speaks")
	}
}

func TestAGoAwayIsForgottenWhenANewServerRegistersAtTheAddress(t *testing.T) {
	server, client := newPlanes(t, planes.TCP), newPlanes(t, planes.TCP)
	defer client.Close()
	ctx := context.Background()
	_, addr, _, err := server.Serve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A caller holds the address of an instance it may call, as a
	// client does while the instance is in discovery.
	a := client.Addr(planes.TCP, addr)
	s, err := client.Open(ctx, planes.Target{Transport: planes.TCP, Address: addr}, plane.Request{Path: "a/b/c", Payload: []byte("hi")})
	if err != nil {
		t.Fatal(err)
	}
	recvAll(t, s)
	if !client.Usable(planes.TCP, addr, time.Now().UnixNano()) {
		t.Fatal("a serving address is not usable")
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := server.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for client.Usable(planes.TCP, addr, time.Now().UnixNano()) {
		if time.Now().After(deadline) {
			t.Fatal("the GOAWAY of a shut-down server never made its address unusable")
		}
		time.Sleep(time.Millisecond)
	}
	client.Restarted(addr)
	if !client.Usable(planes.TCP, addr, time.Now().UnixNano()) {
		t.Fatal("an address stays unusable after a new server registered there")
	}
	if !client.Usable(planes.NATS, "loom.rpc.1", time.Now().UnixNano()) {
		t.Fatal("a NATS subject is not usable")
	}

	// Once no caller holds it, the address is forgotten.
	if n, _, _ := client.Held(); n != 1 {
		t.Fatalf("%d addresses held while a caller holds one", n)
	}
	client.Release(addr, a)
	if n, _, _ := client.Held(); n != 0 {
		t.Fatalf("%d addresses held after the last caller gave its back", n)
	}
}

func TestAStalledAddressIsForgottenOnceNoCallerHoldsIt(t *testing.T) {
	server := newPlanes(t, planes.TCP)
	ctx := context.Background()
	_, target, _, err := server.Serve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_ = server.Shutdown(sctx)
	}()
	fz := testutil.NewFreezer(t, target)
	rc := config.Default().RequestPlane
	rc.Transport, rc.Host, rc.Port = planes.TCP, "127.0.0.1", 0
	rc.StallTimeout, rc.KeepaliveInterval, rc.KeepaliveTimeout = 100*time.Millisecond, 50*time.Millisecond, 300*time.Millisecond
	client := planes.New(planes.Config{RequestPlane: rc, FailureCooldown: time.Second, Logger: quiet, OnLimit: func(string) {}}, upper{})
	defer client.Close()

	addr := fz.Addr()
	a := client.Addr(planes.TCP, addr)
	s, err := client.Open(ctx, planes.Target{Transport: planes.TCP, Address: addr}, plane.Request{Path: "a/b/c", Payload: []byte("hi")})
	if err != nil {
		t.Fatal(err)
	}
	recvAll(t, s)
	// The server freezes (its machine died): the call waiting on it
	// fails, and keepalive closes the connection.
	fz.Freeze()
	s, err = client.Open(ctx, planes.Target{Transport: planes.TCP, Address: addr}, plane.Request{Path: "a/b/c", Payload: []byte("hi")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err == nil {
		t.Fatal("a call to a frozen server did not fail")
	}
	s.Close()
	testutil.Eventually(t, 10*time.Second, "keepalive to close the frozen connection", func() bool {
		_, _, conns := client.Held()
		return conns == 0
	})
	// Its instance leaves discovery: no caller holds the address.
	client.Release(addr, a)
	if addrs, hosts, conns := client.Held(); addrs+hosts+conns != 0 {
		t.Fatalf("once no caller holds the stalled address: %d addresses, %d hosts, %d connections held; want none", addrs, hosts, conns)
	}
	fz.Thaw()
}

// README: a server that stops answering while calls wait on it is
// avoided by new calls; on the NATS plane too, where its address is its
// subject.
func TestAStalledNATSServerIsAvoided(t *testing.T) {
	snc, cnc := twoNATSConns(t)
	rc := config.Default().RequestPlane
	rc.Transport, rc.StallTimeout = planes.NATS, 200*time.Millisecond
	block, started := make(chan struct{}), make(chan struct{}, 1)
	defer close(block)
	server := planes.New(planes.Config{RequestPlane: rc, ID: 0xdead, Logger: quiet, NATS: func(context.Context) (*nats.Conn, error) { return snc, nil }},
		blocker{block, started})
	_, subject, _, err := server.Serve(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer server.Shutdown(context.Background())
	stalls := make(chan string, 4)
	client := planes.New(planes.Config{RequestPlane: rc, FailureCooldown: time.Minute, Logger: quiet, OnStall: func(tr string) { stalls <- tr },
		NATS: func(context.Context) (*nats.Conn, error) { return cnc, nil }}, upper{})
	defer client.Close()
	a := client.Addr(planes.NATS, subject)
	defer client.Release(subject, a)
	s, err := client.Open(context.Background(), planes.Target{Transport: planes.NATS, Address: subject}, plane.Request{Path: "a/b/c"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	<-started
	// The server's process loses its NATS link without a word: no more
	// heartbeats while the call waits for its first response.
	snc.Close()
	if _, err := s.Recv(); !errors.Is(err, plane.ErrStalled) {
		t.Fatalf("the call waiting on a silent server: %v, want ErrStalled", err)
	}
	select {
	case tr := <-stalls:
		if tr != planes.NATS {
			t.Fatalf("OnStall(%q), want %q", tr, planes.NATS)
		}
	default:
		t.Fatal("OnStall was not called before the stalled call failed")
	}
	if client.Usable(planes.NATS, subject, time.Now().UnixNano()) || a.StalledUntil() == 0 {
		t.Fatal("a stalled NATS server is still usable")
	}
}

// blocker serves every request by saying it started (to the caller too
// if the request is "hi"), then waiting until its channel closes.
type blocker struct{ c, started chan struct{} }

func (b blocker) StreamContext(string) context.Context { return context.Background() }

func (b blocker) ServeStream(s planes.Stream, _ context.Context) error {
	if string(s.Payload()) == "hi" {
		if err := s.Send([]byte("started")); err != nil {
			return err
		}
	}
	b.started <- struct{}{}
	select {
	case <-b.c:
	case <-s.Context().Done():
	}
	return nil
}

// README: on NATS, a call that has responded fails once its server has
// sent nothing, not even a heartbeat, for request_plane.keepalive_timeout.
func TestANATSCallThatRespondedFailsAfterKeepaliveTimeout(t *testing.T) {
	snc, cnc := twoNATSConns(t)
	rc := config.Default().RequestPlane
	const keepalive = 300 * time.Millisecond // the default is 5 s
	rc.Transport, rc.KeepaliveTimeout, rc.StallTimeout = planes.NATS, keepalive, -1
	block, started := make(chan struct{}), make(chan struct{}, 1)
	defer close(block)
	server := planes.New(planes.Config{RequestPlane: rc, ID: 0xbeef, Logger: quiet, NATS: func(context.Context) (*nats.Conn, error) { return snc, nil }},
		blocker{block, started})
	_, subject, _, err := server.Serve(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer server.Shutdown(context.Background())
	client := planes.New(planes.Config{RequestPlane: rc, Logger: quiet, NATS: func(context.Context) (*nats.Conn, error) { return cnc, nil }}, upper{})
	defer client.Close()
	s, err := client.Open(context.Background(), planes.Target{Transport: planes.NATS, Address: subject}, plane.Request{Path: "a/b/c", Payload: []byte("hi")})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if b, err := s.Recv(); err != nil || string(b) != "started" {
		t.Fatalf("first response %q, %v", b, err)
	}
	<-started
	snc.Close() // the server goes silent
	silent := time.Now()
	_, err = s.Recv()
	if !errors.Is(err, plane.ErrReset) || !errors.Is(err, plane.ErrConnLost) {
		t.Fatalf("a call whose server went silent: %v, want Reset (connection lost)", err)
	}
	if d := time.Since(silent); d > 4*time.Second {
		t.Fatalf("the call failed %v after its server went silent; keepalive_timeout is %v", d, keepalive)
	}
}

// The NATS plane takes its admission limits from request_plane.*, as the
// TCP plane does: max_running_bytes bounds the request bytes running
// handlers hold, and with no queue (queue_size -1) a request past it is
// refused with Overloaded naming the limits.
func TestTheNATSPlaneAdmitsByTheRequestPlaneLimits(t *testing.T) {
	ns, err := embedded.StartNATS(embedded.NATSOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	nc, err := nats.Connect(ns.ClientURL(), nats.NoReconnect())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	rc := config.Default().RequestPlane
	rc.Transport, rc.MaxRunningBytes, rc.QueueSize, rc.MaxConcurrentStreams = planes.NATS, 1000, -1, 10
	block, started := make(chan struct{}), make(chan struct{}, 1)
	defer close(block)
	p := planes.New(planes.Config{RequestPlane: rc, ID: 0xadd, Logger: quiet, NATS: func(context.Context) (*nats.Conn, error) { return nc, nil }}, blocker{block, started})
	defer p.Close()
	_, subject, _, err := p.Serve(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Shutdown(context.Background())
	target := planes.Target{Transport: planes.NATS, Address: subject}
	first, err := p.Open(context.Background(), target, plane.Request{Path: "a/b/c", Payload: make([]byte, 600)})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	<-started
	// Bounded, so that a second request let in waits no longer than this.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	second, err := p.Open(ctx, target, plane.Request{Path: "a/b/c", Payload: make([]byte, 600)})
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	_, err = second.Recv()
	if !errors.Is(err, plane.ErrOverloaded) || !strings.Contains(err.Error(), "QueueSize 0") || !strings.Contains(err.Error(), "MaxConcurrentStreams 10") {
		t.Fatalf("a request past max_running_bytes with no queue: %v, want Overloaded naming the limits", err)
	}
}

// A discovery record may name any NATS subject; a call goes only to one
// under loom.rpc., where Loom serves, and publishes nothing elsewhere.
func TestANATSCallGoesOnlyUnderLoomRPC(t *testing.T) {
	p := newPlanes(t, planes.NATS)
	defer p.Close()
	_, subject, _, err := p.Serve(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Shutdown(context.Background())
	for _, bad := range []string{"$JS.API.STREAM.DELETE.KV_loom_discovery", "loom.rpcx", "other.rpc.1"} {
		s, err := p.Open(context.Background(), planes.Target{Transport: planes.NATS, Address: bad}, plane.Request{Path: "a/b/c"})
		if err == nil {
			s.Close()
			t.Fatalf("Open of a call to %s went ahead", bad)
		}
		if !errors.Is(err, plane.ErrUnreachable) || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "loom.rpc.>") {
			t.Errorf("Open to %s: %v, want ErrUnreachable naming it and loom.rpc.>", bad, err)
		}
	}
	s, err := p.Open(context.Background(), planes.Target{Transport: planes.NATS, Address: subject}, plane.Request{Path: "a/b/c", Payload: []byte("hi")})
	if err != nil {
		t.Fatal(err)
	}
	if got := recvAll(t, s); len(got) != 1 || got[0] != "HI" {
		t.Fatalf("got %q from %s, want [HI]", got, subject)
	}
}

// twoNATSConns starts a NATS server for the test and returns two
// connections to it, a server's and a caller's, that do not reconnect.
func twoNATSConns(t *testing.T) (server, caller *nats.Conn) {
	t.Helper()
	ns := testutil.StartNATS(t, embedded.NATSOptions{})
	conn := func() *nats.Conn {
		nc, err := nats.Connect(ns.ClientURL(), nats.NoReconnect())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	return conn(), conn()
}
