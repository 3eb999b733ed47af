package natsplane

import (
	"context"
	"errors"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/internal/plane"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/internal/wire"
)

func TestAFrozenServerFailsWaitingStreamsAndIsAvoidedUntilItAnswers(t *testing.T) {
	ns := startNATS(t)
	// The frozen server reaches NATS through a proxy that can freeze, as
	// its process would on SIGSTOP: the connection stays open, nothing
	// comes out of it.
	u, err := url.Parse(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	fz := testutil.NewFreezer(t, u.Host)
	fnc, err := nats.Connect("nats://"+fz.Addr(), nats.NoReconnect())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fnc.Close)
	frozen := serve(t, fnc, ServerConfig{}, echo)
	healthy := serve(t, connect(t, ns), ServerConfig{}, echo)

	var mu sync.Mutex
	var stalls []string
	c := newClient(t, connect(t, ns), ClientConfig{StallTimeout: 200 * time.Millisecond, HeartbeatTimeout: time.Minute, OnStall: func(s string) {
		mu.Lock()
		stalls = append(stalls, s)
		mu.Unlock()
	}})
	call := func(subject string) ([][]byte, error) {
		st, err := c.Open(ctxTimeout(t, 30*time.Second), subject, plane.Request{Path: "p", Payload: []byte("hi")})
		if err != nil {
			return nil, err
		}
		defer st.Close()
		return recvAll(st)
	}
	if _, err := call(frozen.Address()); err != nil {
		t.Fatal(err)
	}

	fz.Freeze()
	st, err := c.Open(context.Background(), frozen.Address(), plane.Request{Path: "p", Payload: []byte("lost")})
	if err != nil {
		t.Fatal(err)
	}
	_, err = recvWithin(t, st, 20*time.Second)
	st.Close()
	var se *plane.StreamError
	if !errors.As(err, &se) || se.Code != wire.CodeReset || !se.BeforeFirstResponse || !errors.Is(err, plane.ErrStalled) {
		t.Fatalf("the stream waiting on the frozen server: %v; want a Reset before the first response wrapping ErrStalled", err)
	}
	testutil.Eventually(t, 10*time.Second, "OnStall", func() bool { mu.Lock(); defer mu.Unlock(); return len(stalls) > 0 })

	// New requests are refused at once, but for a probe a second, which
	// fails as the first did; the healthy server answers throughout.
	refused := 0
	for refused < 3 {
		_, err := call(frozen.Address())
		switch {
		case errors.Is(err, plane.ErrUnreachable) && errors.Is(err, plane.ErrStalled):
			refused++
		case errors.Is(err, plane.ErrStalled) && errors.Is(err, plane.ErrReset):
			// a probe
		default:
			t.Fatalf("a request to the frozen server: %v; want ErrUnreachable wrapping ErrStalled", err)
		}
		if got, err := call(healthy.Address()); err != nil || len(got) != 1 {
			t.Fatalf("the healthy server: %q, %v", got, err)
		}
	}
	mu.Lock()
	if len(stalls) != 1 || stalls[0] != frozen.Address() {
		t.Errorf("OnStall calls %q; want one for %s", stalls, frozen.Address())
	}
	mu.Unlock()

	fz.Thaw()
	testutil.Eventually(t, 10*time.Second, "the thawed server to answer again", func() bool {
		got, err := call(frozen.Address())
		return err == nil && len(got) == 1
	})
}

func TestABusyServerHeartbeatsAndIsNotStalled(t *testing.T) {
	p := newPair(t)
	release := make(chan struct{})
	srv := serve(t, p.snc, ServerConfig{}, func(s *ServerStream) error {
		select {
		case <-release:
		case <-s.Context().Done():
		}
		return s.Send([]byte("late"))
	})
	stalled := make(chan string, 1)
	c := newClient(t, p.cnc, ClientConfig{StallTimeout: 500 * time.Millisecond, OnStall: func(s string) { stalled <- s }})
	st, err := c.Open(context.Background(), srv.Address(), plane.Request{Path: "p"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	// Heartbeats at a third of the stall timeout keep the stream alive
	// however long the handler takes: wait until they have for four
	// times the stall timeout.
	start := st.lastHeard.Load()
	for st.lastHeard.Load()-start <= int64(2*time.Second) {
		st.mu.Lock()
		err := st.err
		st.mu.Unlock()
		if err != nil {
			t.Fatalf("the stream of a server that heartbeats failed: %v", err)
		}
		if time.Duration(monotime()-start) > 20*time.Second {
			t.Fatalf("no heartbeat for the stream for %v", time.Duration(monotime()-st.lastHeard.Load()))
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(release)
	if got, err := recvAll(st); err != nil || len(got) != 1 {
		t.Fatalf("the slow stream: %q, %v", got, err)
	}
	select {
	case s := <-stalled:
		t.Fatalf("a server that heartbeats was reported stalled: %s", s)
	default:
	}
}
