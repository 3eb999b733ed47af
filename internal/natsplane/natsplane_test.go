package natsplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/internal/plane"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/internal/wire"
)

func TestUnaryCarriesTheRequest(t *testing.T) {
	type seen struct {
		path, codec, rid, tp, hdr string
		headers                   map[string]string
		payload                   []byte
		hasDeadline               bool
	}
	p := newPair(t)
	got := make(chan seen, 1)
	srv := serve(t, p.snc, ServerConfig{}, func(s *ServerStream) error {
		_, ok := s.Deadline()
		got <- seen{s.Path(), s.Codec(), s.RequestID(), s.TraceParent(), s.Header("tenant"), s.Headers(), s.Payload(), ok}
		return s.Send(append([]byte("echo:"), s.Payload()...))
	})
	c := newClient(t, p.cnc, ClientConfig{})
	req := plane.Request{
		Path: "ns/comp/generate", Codec: "msgpack", RequestID: "req-1",
		TraceParent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		Headers: map[string]string{
			"tenant":                 "acme",
			"odd key/with:colon{}":   " leading and trailing space ",
			"%41":                    "line\r\nbreak, tab\t, percent %41, nul \x00, ünïcode",
			strings.Repeat("k", 255): "",
		},
		Payload: []byte("hello"),
	}
	st, err := c.Open(context.Background(), srv.Address(), req)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	msgs, err := recvAll(st)
	if err != nil || len(msgs) != 1 || string(msgs[0]) != "echo:hello" {
		t.Fatalf("got %q, %v", msgs, err)
	}
	if !st.Responded() {
		t.Error("Responded() = false after a response")
	}
	s := <-got
	if s.path != req.Path || s.codec != req.Codec || s.rid != req.RequestID || s.tp != req.TraceParent || s.hdr != "acme" || string(s.payload) != "hello" || s.hasDeadline {
		t.Fatalf("handler saw %+v", s)
	}
	if !maps.Equal(s.headers, req.Headers) {
		t.Fatalf("handler saw headers %q, want %q", s.headers, req.Headers)
	}
}

func TestStreamingDeliversTenThousandItemsInOrder(t *testing.T) {
	const n = 10000
	p := newPair(t)
	srv := serve(t, p.snc, ServerConfig{}, func(s *ServerStream) error {
		for i := range n {
			if err := s.Send(strconv.AppendInt(nil, int64(i), 10)); err != nil {
				return err
			}
		}
		return nil
	})
	c := newClient(t, p.cnc, ClientConfig{InitialWindow: 64 << 10})
	st, err := c.Open(ctxTimeout(t, 20*time.Second), srv.Address(), plane.Request{Path: "stream"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for i := range n {
		p, err := st.Recv()
		if err != nil {
			t.Fatalf("item %d: %v", i, err)
		}
		if string(p) != strconv.Itoa(i) {
			t.Fatalf("item %d is %q", i, p)
		}
	}
	if _, err := st.Recv(); err != io.EOF {
		t.Fatalf("after the last item: %v, want io.EOF", err)
	}
}

func TestManyConcurrentStreamsShareOneSubscription(t *testing.T) {
	const callers, calls, items = 64, 20, 5
	p := newPair(t)
	srv := serve(t, p.snc, ServerConfig{}, func(s *ServerStream) error {
		for i := range items {
			if err := s.Send(fmt.Appendf(nil, "%s/%d", s.Payload(), i)); err != nil {
				return err
			}
		}
		return nil
	})
	c := newClient(t, p.cnc, ClientConfig{})
	ctx := ctxTimeout(t, 20*time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for g := range callers {
		wg.Go(func() {
			for k := range calls {
				id := fmt.Sprintf("%d.%d", g, k)
				st, err := c.Open(ctx, srv.Address(), plane.Request{Path: "p", Payload: []byte(id)})
				if err != nil {
					errs <- err
					return
				}
				msgs, err := recvAll(st)
				st.Close()
				if err != nil || len(msgs) != items {
					errs <- fmt.Errorf("stream %s: %d items, %v", id, len(msgs), err)
					return
				}
				for i, m := range msgs {
					if want := fmt.Sprintf("%s/%d", id, i); string(m) != want {
						errs <- fmt.Errorf("stream %s item %d is %q, want %q", id, i, m, want)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	c.mu.Lock()
	open := len(c.streams)
	c.mu.Unlock()
	if open != 0 {
		t.Errorf("client still tracks %d streams after all ended", open)
	}
	testutil.Eventually(t, 10*time.Second, "the server to forget every caller", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return len(srv.peers) == 0 && srv.adm.Running() == 0
	})
}

func TestStopFinishesGracefullyAndKillCancelsTheHandler(t *testing.T) {
	type outcome struct {
		stopped bool
		cause   error
	}
	p := newPair(t)
	outcomes := make(chan outcome, 1)
	srv := serve(t, p.snc, ServerConfig{}, func(s *ServerStream) error {
		if err := s.Send([]byte("first")); err != nil {
			return err
		}
		select {
		case <-s.Stopped():
			outcomes <- outcome{stopped: true}
			return s.Send([]byte("last"))
		case <-s.Context().Done():
			outcomes <- outcome{cause: context.Cause(s.Context())}
			return nil
		}
	})
	c := newClient(t, p.cnc, ClientConfig{})

	t.Run("stop lets the handler send its last response", func(t *testing.T) {
		st, err := c.Open(context.Background(), srv.Address(), plane.Request{Path: "p"})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		if p, err := st.Recv(); err != nil || string(p) != "first" {
			t.Fatalf("Recv = %q, %v", p, err)
		}
		st.Stop()
		msgs, err := recvAll(st)
		if err != nil || len(msgs) != 1 || string(msgs[0]) != "last" {
			t.Fatalf("after Stop: %q, %v", msgs, err)
		}
		if o := <-outcomes; !o.stopped {
			t.Fatalf("handler saw %+v, want a stop", o)
		}
	})

	kill := map[string]func(st *ClientStream, cancel context.CancelFunc){
		"Cancel kills the stream":                      func(st *ClientStream, _ context.CancelFunc) { st.Cancel() },
		"ending the caller's context kills the stream": func(_ *ClientStream, cancel context.CancelFunc) { cancel() },
		"Close before the end kills the stream":        func(st *ClientStream, _ context.CancelFunc) { st.Close() },
	}
	for name, do := range kill {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			st, err := c.Open(ctx, srv.Address(), plane.Request{Path: "p"})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if p, err := st.Recv(); err != nil || string(p) != "first" {
				t.Fatalf("Recv = %q, %v", p, err)
			}
			do(st, cancel)
			o := <-outcomes
			if o.stopped || !errors.Is(o.cause, plane.ErrCancelled) {
				t.Fatalf("handler saw %+v, want a kill", o)
			}
			_, err = st.Recv()
			var se *plane.StreamError
			if !errors.As(err, &se) || se.Code != wire.CodeCancelled || se.BeforeFirstResponse {
				t.Fatalf("Recv after the kill = %v, want Cancelled after the first response", err)
			}
		})
	}
}

func TestDeadlineTravelsToTheHandler(t *testing.T) {
	p := newPair(t)
	type seen struct {
		deadline, ctxDeadline time.Time
		ok                    bool
	}
	got := make(chan seen, 1)
	causes := make(chan error, 1)
	srv := serve(t, p.snc, ServerConfig{}, func(s *ServerStream) error {
		if s.Path() == "report" {
			dl, ok := s.Deadline()
			cdl, _ := s.Context().Deadline()
			got <- seen{dl, cdl, ok}
			return nil
		}
		<-s.Context().Done()
		causes <- context.Cause(s.Context())
		return s.Context().Err()
	})
	c := newClient(t, p.cnc, ClientConfig{})

	t.Run("the handler sees the caller's deadline", func(t *testing.T) {
		const timeout = 2 * time.Second
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		st, err := c.Open(ctx, srv.Address(), plane.Request{Path: "report"})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		if _, err := recvAll(st); err != nil {
			t.Fatal(err)
		}
		s := <-got
		if !s.ok || !s.ctxDeadline.Equal(s.deadline) {
			t.Fatalf("handler saw deadline %v (%v), context deadline %v", s.deadline, s.ok, s.ctxDeadline)
		}
		if d := s.deadline.Sub(start); d < timeout-100*time.Millisecond || d > timeout+100*time.Millisecond {
			t.Errorf("handler's deadline is %v after the call, want about %v", d, timeout)
		}
	})
	t.Run("the caller's deadline ends the stream", func(t *testing.T) {
		st, err := c.Open(ctxTimeout(t, 100*time.Millisecond), srv.Address(), plane.Request{Path: "wait"})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		_, err = recvWithin(t, st, 5*time.Second)
		var se *plane.StreamError
		if !errors.As(err, &se) || !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, plane.ErrDeadlineExceeded) || !se.BeforeFirstResponse {
			t.Fatalf("Recv = %v, want DeadlineExceeded", err)
		}
		// The handler's context ends by its own deadline or by the
		// caller's kill, whichever comes first.
		if cause := <-causes; !errors.Is(cause, context.DeadlineExceeded) && !errors.Is(cause, plane.ErrCancelled) {
			t.Fatalf("handler's cause = %v", cause)
		}
	})
	t.Run("the server ends a stream past its deadline with DeadlineExceeded", func(t *testing.T) {
		// A plain request, so that only the server's timer can end it.
		m := nats.NewMsg(srv.Address())
		m.Header.Set(hdrPath, "wait")
		m.Header.Set(hdrTimeout, strconv.Itoa(int(100*time.Millisecond)))
		resp, err := p.cnc.RequestMsg(m, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if _, code, msg, err := parseEnd(resp.Header); err != nil || code != wire.CodeDeadlineExceeded || msg != "deadline of 100ms passed on the server" {
			t.Fatalf("END %v %q, %v", code, msg, err)
		}
		if cause := <-causes; !errors.Is(cause, context.DeadlineExceeded) {
			t.Fatalf("handler's cause = %v, want DeadlineExceeded", cause)
		}
	})
}

func TestHandlerResultsBecomeEndCodes(t *testing.T) {
	p := newPair(t)
	results := map[string]func(s *ServerStream) error{
		"nil":        func(*ServerStream) error { return nil },
		"notfound":   func(*ServerStream) error { return plane.Errorf(wire.CodeNotFound, "no model %q", "m7") },
		"overloaded": func(*ServerStream) error { return fmt.Errorf("wrapped: %w", plane.Errorf(wire.CodeOverloaded, "busy")) },
		"plain":      func(*ServerStream) error { return errors.New("boom") },
		"panic":      func(*ServerStream) error { panic("kaboom") },
		"after-data": func(s *ServerStream) error {
			if err := s.Send([]byte("x")); err != nil {
				return err
			}
			return plane.Errorf(wire.CodeBadRequest, "bad field")
		},
	}
	srv := serve(t, p.snc, ServerConfig{}, func(s *ServerStream) error { return results[s.Path()](s) })
	c := newClient(t, p.cnc, ClientConfig{})
	tests := []struct {
		name, path string
		code       wire.Code // 0 for io.EOF
		msg        string
		before     bool
		is         error
	}{
		{"nil ends the stream cleanly", "nil", 0, "", false, nil},
		{"a StreamError keeps its code and message", "notfound", wire.CodeNotFound, `no model "m7"`, true, plane.ErrNotFound},
		{"a wrapped StreamError keeps its code", "overloaded", wire.CodeOverloaded, "busy", true, plane.ErrOverloaded},
		{"any other error becomes Application", "plain", wire.CodeApplication, "boom", true, plane.ErrApplication},
		{"a panic becomes Internal", "panic", wire.CodeInternal, "handler for panic panicked: kaboom", true, plane.ErrInternal},
		{"an error after data is not before the first response", "after-data", wire.CodeBadRequest, "bad field", false, plane.ErrBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := c.Open(context.Background(), srv.Address(), plane.Request{Path: tt.path})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			_, err = recvAll(st)
			if tt.code == 0 {
				if err != nil {
					t.Fatalf("got %v, want io.EOF", err)
				}
				return
			}
			var se *plane.StreamError
			if !errors.As(err, &se) || se.Code != tt.code || se.Message != tt.msg || se.BeforeFirstResponse != tt.before || !errors.Is(err, tt.is) {
				t.Fatalf("got %#v, want code %v, message %q, before first response %v", err, tt.code, tt.msg, tt.before)
			}
		})
	}
}

func TestAdmissionRefusesBeyondStreamsAndQueue(t *testing.T) {
	p := newPair(t)
	release := make(chan struct{})
	var started atomic.Int32
	srv := serve(t, p.snc, ServerConfig{MaxConcurrentStreams: 1, QueueSize: 1}, func(s *ServerStream) error {
		started.Add(1)
		<-release
		return s.Send([]byte("done"))
	})
	c := newClient(t, p.cnc, ClientConfig{})
	ctx := ctxTimeout(t, 10*time.Second)
	running, err := c.Open(ctx, srv.Address(), plane.Request{Path: "p"})
	if err != nil {
		t.Fatal(err)
	}
	defer running.Close()
	testutil.Eventually(t, 10*time.Second, "the first handler to start", func() bool { return started.Load() == 1 })
	queued, err := c.Open(ctx, srv.Address(), plane.Request{Path: "p"})
	if err != nil {
		t.Fatal(err)
	}
	defer queued.Close()
	refused, err := c.Open(ctx, srv.Address(), plane.Request{Path: "p"})
	if err != nil {
		t.Fatal(err)
	}
	defer refused.Close()
	_, err = recvWithin(t, refused, 2*time.Second)
	var se *plane.StreamError
	if !errors.As(err, &se) || !errors.Is(err, plane.ErrOverloaded) || !se.BeforeFirstResponse || !se.Code.Retryable() {
		t.Fatalf("third stream: %v, want Overloaded before the first response", err)
	}
	if !strings.Contains(se.Message, "MaxConcurrentStreams 1, QueueSize 1") {
		t.Errorf("message %q does not name the limits", se.Message)
	}
	close(release)
	for _, st := range []*ClientStream{running, queued} {
		if msgs, err := recvAll(st); err != nil || len(msgs) != 1 {
			t.Fatalf("admitted stream: %q, %v", msgs, err)
		}
	}
	if n := started.Load(); n != 2 {
		t.Fatalf("%d handlers ran, want 2", n)
	}
}

func TestShutdownDrainsInFlightStreams(t *testing.T) {
	p := newPair(t)
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	srv := serve(t, p.snc, ServerConfig{}, func(s *ServerStream) error {
		started <- struct{}{}
		<-release
		return s.Send([]byte("finished"))
	})
	c := newClient(t, p.cnc, ClientConfig{})
	inflight, err := c.Open(context.Background(), srv.Address(), plane.Request{Path: "p"})
	if err != nil {
		t.Fatal(err)
	}
	defer inflight.Close()
	<-started

	done := make(chan error, 1)
	go func() { done <- srv.Shutdown(ctxTimeout(t, 10*time.Second)) }()
	testutil.Eventually(t, 10*time.Second, "the server to drain", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return srv.draining
	})
	late, err := c.Open(context.Background(), srv.Address(), plane.Request{Path: "p"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = recvWithin(t, late, 2*time.Second)
	late.Close()
	var se *plane.StreamError
	if !errors.As(err, &se) || !errors.Is(err, plane.ErrDraining) || !se.BeforeFirstResponse {
		t.Fatalf("stream opened while draining: %v, want Draining", err)
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v with a stream in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if msgs, err := recvAll(inflight); err != nil || len(msgs) != 1 || string(msgs[0]) != "finished" {
		t.Fatalf("in-flight stream: %q, %v", msgs, err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Shutdown = %v", err)
	}
	after, err := c.Open(context.Background(), srv.Address(), plane.Request{Path: "p"})
	if err != nil {
		t.Fatal(err)
	}
	defer after.Close()
	if _, err := recvWithin(t, after, 2*time.Second); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("after Shutdown: %v, want no responders", err)
	}
}

func TestShutdownPastItsContextKillsTheRest(t *testing.T) {
	p := newPair(t)
	causes := make(chan error, 1)
	srv := serve(t, p.snc, ServerConfig{}, func(s *ServerStream) error {
		<-s.Context().Done()
		causes <- context.Cause(s.Context())
		return nil
	})
	c := newClient(t, p.cnc, ClientConfig{HeartbeatTimeout: time.Minute})
	st, err := c.Open(context.Background(), srv.Address(), plane.Request{Path: "p"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	testutil.Eventually(t, 10*time.Second, "the handler to start", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return srv.adm.Running() == 1
	})
	if err := srv.Shutdown(ctxTimeout(t, 100*time.Millisecond)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want DeadlineExceeded", err)
	}
	if cause := <-causes; !errors.Is(cause, ErrServerClosed) || !errors.Is(cause, plane.ErrServerClosed) {
		t.Fatalf("handler's cause = %v, want ErrServerClosed", cause)
	}
	_, err = recvWithin(t, st, 2*time.Second)
	var se *plane.StreamError
	if !errors.As(err, &se) || se.Code != wire.CodeReset || !se.BeforeFirstResponse || !strings.Contains(se.Message, "closed") {
		t.Fatalf("Recv = %v, want Reset (server closed) before the first response", err)
	}
}

func TestHeartbeatTimeoutDetectsADeadServer(t *testing.T) {
	for _, before := range []bool{true, false} {
		name := "after the first response"
		if before {
			name = "before the first response"
		}
		t.Run(name, func(t *testing.T) {
			p := newPair(t)
			causes := make(chan error, 1)
			srv := serve(t, p.snc, ServerConfig{HeartbeatInterval: 20 * time.Millisecond, ClientTimeout: time.Minute}, func(s *ServerStream) error {
				if !before {
					if err := s.Send([]byte("first")); err != nil {
						return err
					}
				}
				<-s.Context().Done()
				causes <- context.Cause(s.Context())
				return nil
			})
			const timeout = 500 * time.Millisecond
			c := newClient(t, p.cnc, ClientConfig{HeartbeatTimeout: timeout, StallTimeout: -1})
			st, err := c.Open(context.Background(), srv.Address(), plane.Request{Path: "p"})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if !before {
				if p, err := st.Recv(); err != nil || string(p) != "first" {
					t.Fatalf("Recv = %q, %v", p, err)
				}
			}
			// Outlive the timeout on heartbeats alone: the stream has heard
			// from its server, and nothing else, for twice the timeout.
			stErr := func() error { st.mu.Lock(); defer st.mu.Unlock(); return st.err }
			since := st.lastHeard.Load()
			testutil.Eventually(t, 20*time.Second, "heartbeats for twice the timeout", func() bool {
				if err := stErr(); err != nil {
					t.Fatalf("an idle stream with a live server failed: %v", err)
				}
				return st.lastHeard.Load()-since > int64(2*timeout)
			})
			if err := stErr(); err != nil {
				t.Fatalf("an idle stream with a live server failed: %v", err)
			}

			p.snc.Close() // the server process "dies"
			start := time.Now()
			_, err = recvWithin(t, st, 10*timeout)
			var se *plane.StreamError
			if !errors.As(err, &se) || se.Code != wire.CodeReset || se.BeforeFirstResponse != before ||
				!errors.Is(err, ErrServerGone) || !errors.Is(err, plane.ErrConnLost) {
				t.Fatalf("Recv = %#v, want Reset (server gone), before first response %v", err, before)
			}
			if d := time.Since(start); d > 4*timeout {
				t.Errorf("detected after %v, want within about %v", d, timeout)
			}
			if cause := <-causes; !errors.Is(cause, ErrConnClosed) {
				t.Errorf("handler's cause = %v, want ErrConnClosed", cause)
			}
		})
	}
}

func TestCallerThatStopsAnsweringIsKilled(t *testing.T) {
	p := newPair(t)
	causes := make(chan error, 1)
	srv := serve(t, p.snc, ServerConfig{HeartbeatInterval: 20 * time.Millisecond, ClientTimeout: 500 * time.Millisecond}, func(s *ServerStream) error {
		<-s.Context().Done()
		causes <- context.Cause(s.Context())
		return nil
	})
	c := NewClient(p.cnc, ClientConfig{Logger: testLogger()})
	st, err := c.Open(context.Background(), srv.Address(), plane.Request{Path: "p"})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the handler to start", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return srv.adm.Running() == 1
	})
	// Answering heartbeats keeps it alive: the server has heard the
	// caller's answers for twice the caller timeout, each heard in a round
	// that also checks the timeout.
	heard := func() time.Time {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		for _, pr := range srv.peers {
			return pr.lastHeard
		}
		return time.Time{}
	}
	start := heard()
	testutil.Eventually(t, 20*time.Second, "the caller's answers for twice the caller timeout", func() bool {
		select {
		case cause := <-causes:
			t.Fatalf("handler of a live caller ended with %v", cause)
		default:
		}
		return heard().Sub(start) > 2*500*time.Millisecond
	})
	select {
	case cause := <-causes:
		t.Fatalf("handler of a live caller ended with %v", cause)
	default:
	}
	p.cnc.Close() // the caller "dies" without a word
	select {
	case cause := <-causes:
		if !errors.Is(cause, ErrCallerGone) {
			t.Fatalf("handler's cause = %v, want ErrCallerGone", cause)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the handler of a dead caller is still running")
	}
	// The caller's own stream fails too, without waiting for heartbeats.
	_, err = recvWithin(t, st, 5*time.Second)
	if !errors.Is(err, plane.ErrReset) || !errors.Is(err, ErrConnClosed) {
		t.Fatalf("Recv on the closed connection = %v, want Reset (connection closed)", err)
	}
	st.Close()
	c.Close()
}

func TestNoRespondersFailsAtOnce(t *testing.T) {
	p := newPair(t)
	c := newClient(t, p.cnc, ClientConfig{HeartbeatTimeout: time.Minute})
	st, err := c.Open(context.Background(), "loom.rpc.nobody", plane.Request{Path: "p", Payload: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	_, err = recvWithin(t, st, time.Second)
	var se *plane.StreamError
	if !errors.As(err, &se) || se.Code != wire.CodeNotFound || !se.BeforeFirstResponse || !errors.Is(err, nats.ErrNoResponders) || !strings.Contains(se.Message, "loom.rpc.nobody") {
		t.Fatalf("Recv = %#v, want NotFound before the first response naming the subject", err)
	}
}

func TestOversizedMessagesAreRefusedBeforeSending(t *testing.T) {
	p := newPair(t)
	limit := int(p.cnc.MaxPayload())
	var handled atomic.Int32
	srv := serve(t, p.snc, ServerConfig{}, func(s *ServerStream) error {
		handled.Add(1)
		err := s.Send(make([]byte, limit))
		if !errors.Is(err, plane.ErrTooLarge) {
			return fmt.Errorf("Send of %d bytes = %v, want ErrTooLarge", limit, err)
		}
		return err
	})
	c := newClient(t, p.cnc, ClientConfig{})

	t.Run("a request above the max payload", func(t *testing.T) {
		_, err := c.Open(context.Background(), srv.Address(), plane.Request{Path: "p", Payload: make([]byte, limit)})
		if !errors.Is(err, plane.ErrTooLarge) {
			t.Fatalf("Open = %v, want ErrTooLarge", err)
		}
		for _, want := range []string{fmt.Sprintf("payload %d", limit), fmt.Sprintf("max payload of %d bytes", limit), srv.Address()} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %q", err, want)
			}
		}
		if handled.Load() != 0 {
			t.Error("the oversized request reached the handler")
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		if len(c.streams) != 0 {
			t.Error("the refused stream is still tracked")
		}
	})
	t.Run("a response above the max payload", func(t *testing.T) {
		st, err := c.Open(context.Background(), srv.Address(), plane.Request{Path: "p"})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		_, err = recvAll(st)
		var se *plane.StreamError
		if !errors.As(err, &se) || se.Code != wire.CodeApplication || !strings.Contains(se.Message, "max payload") {
			t.Fatalf("Recv = %v, want the handler's ErrTooLarge as Application", err)
		}
	})
}

func TestSlowReaderBoundsServerBuffering(t *testing.T) {
	const window, size, total = 8 << 10, 1 << 10, 200
	p := newPair(t)
	var sent atomic.Int64
	handlerErr := make(chan error, 1)
	srv := serve(t, p.snc, ServerConfig{}, func(s *ServerStream) error {
		msg := bytes.Repeat([]byte("x"), size)
		for range total {
			if err := s.Send(msg); err != nil {
				handlerErr <- err
				return err
			}
			sent.Add(1)
		}
		return nil
	})
	c := newClient(t, p.cnc, ClientConfig{InitialWindow: window})
	st, err := c.Open(ctxTimeout(t, 10*time.Second), srv.Address(), plane.Request{Path: "p"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	stream := func() *ServerStream {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		for _, pr := range srv.peers {
			for _, s := range pr.streams {
				return s
			}
		}
		return nil
	}
	// The reader is slow: it reads nothing until the handler's Send waits
	// for credit (or has plainly sent past the window). Counted as each
	// Send returns, sent is then what the window let through.
	bound := int64(window/(size+MessageOverhead) + 1)
	var ss *ServerStream
	testutil.Eventually(t, 10*time.Second, "the handler to wait for credit", func() bool {
		if sent.Load() > bound || len(handlerErr) > 0 {
			return true
		}
		if ss == nil {
			if ss = stream(); ss == nil {
				return false
			}
		}
		ss.mu.Lock()
		defer ss.mu.Unlock()
		return ss.waiting
	})
	// The server overshoots the window by at most one message.
	if n := sent.Load(); n > bound {
		t.Fatalf("the server sent %d messages of %d bytes to a reader that read none, want at most %d (window %d)", n, size, bound, window)
	}
	if len(handlerErr) > 0 {
		t.Fatalf("the handler's Send failed after %d messages: %v", sent.Load(), <-handlerErr)
	}
	if blocked := ss.blocked.Load(); blocked == 0 {
		t.Error("the handler waits for credit but heartbeats would not say so")
	}
	msgs, err := recvAll(st)
	if err != nil || len(msgs) != total {
		t.Fatalf("read %d of %d, %v", len(msgs), total, err)
	}
}

func TestCloseEndsStreams(t *testing.T) {
	t.Run("Client.Close resets its streams and kills their handlers", func(t *testing.T) {
		p := newPair(t)
		causes := make(chan error, 1)
		srv := serve(t, p.snc, ServerConfig{}, func(s *ServerStream) error {
			<-s.Context().Done()
			causes <- context.Cause(s.Context())
			return nil
		})
		c := NewClient(p.cnc, ClientConfig{Logger: testLogger()})
		st, err := c.Open(context.Background(), srv.Address(), plane.Request{Path: "p"})
		if err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, 10*time.Second, "the handler to start", func() bool {
			srv.mu.Lock()
			defer srv.mu.Unlock()
			return srv.adm.Running() == 1
		})
		c.Close()
		_, err = st.Recv()
		if !errors.Is(err, plane.ErrReset) || !errors.Is(err, ErrClientClosed) || !errors.Is(err, plane.ErrPoolClosed) {
			t.Fatalf("Recv = %v, want Reset (client closed)", err)
		}
		if cause := <-causes; !errors.Is(cause, plane.ErrCancelled) {
			t.Fatalf("handler's cause = %v, want a kill", cause)
		}
		if _, err := c.Open(context.Background(), srv.Address(), plane.Request{Path: "p"}); !errors.Is(err, ErrClientClosed) {
			t.Fatalf("Open after Close = %v, want ErrClientClosed", err)
		}
	})
	t.Run("Server.Close resets its streams at once", func(t *testing.T) {
		p := newPair(t)
		srv := serve(t, p.snc, ServerConfig{}, func(s *ServerStream) error {
			s.Send([]byte("first"))
			<-s.Context().Done()
			return nil
		})
		c := newClient(t, p.cnc, ClientConfig{HeartbeatTimeout: time.Minute})
		st, err := c.Open(context.Background(), srv.Address(), plane.Request{Path: "p"})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		if _, err := st.Recv(); err != nil {
			t.Fatal(err)
		}
		srv.Close()
		_, err = recvWithin(t, st, 2*time.Second)
		var se *plane.StreamError
		if !errors.As(err, &se) || se.Code != wire.CodeReset || se.BeforeFirstResponse {
			t.Fatalf("Recv = %v, want Reset after the first response", err)
		}
	})
}

// A caller that is not a natsplane Client (here nats.go's Request, as the
// nats CLI does) is served and answered on its reply subject.
func TestPlainNATSRequestIsServed(t *testing.T) {
	p := newPair(t)
	causes := make(chan error, 1)
	srv := serve(t, p.snc, ServerConfig{HeartbeatInterval: 20 * time.Millisecond, InitialWindow: 1000}, func(s *ServerStream) error {
		if s.Path() != "forever" {
			return s.Send(append([]byte(s.Path()+":"), s.Payload()...))
		}
		var err error
		for err == nil {
			err = s.Send([]byte("more"))
		}
		causes <- context.Cause(s.Context())
		return err
	})
	m := nats.NewMsg(srv.Address())
	m.Header.Set(hdrPath, "ns/c/e")
	m.Data = []byte("hi")
	resp, err := p.cnc.RequestMsg(m, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if string(resp.Data) != "ns/c/e:hi" || resp.Header.Get(hdrKind) != kindData {
		t.Fatalf("reply %q with headers %v", resp.Data, resp.Header)
	}

	bad := nats.NewMsg(srv.Address())
	bad.Data = []byte("no path")
	resp, err = p.cnc.RequestMsg(bad, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, code, msg, err := parseEnd(resp.Header); err != nil || code != wire.CodeBadRequest || !strings.Contains(msg, hdrPath) {
		t.Fatalf("reply to a request without a path: code %v, %q, %v", code, msg, err)
	}

	// Such a caller cannot grant credit: an endless stream is killed once
	// it has used what it had.
	forever := nats.NewMsg(srv.Address())
	forever.Header.Set(hdrPath, "forever")
	if _, err := p.cnc.RequestMsg(forever, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case cause := <-causes:
		if !errors.Is(cause, ErrCallerGone) {
			t.Fatalf("endless handler's cause = %v, want ErrCallerGone", cause)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the endless handler of a plain request still runs")
	}
	testutil.Eventually(t, 10*time.Second, "the server to forget the caller", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return len(srv.peers) == 0
	})
}

// fakeServer is a raw subscription that plays the server's side, to make
// the losses core NATS may cause happen on demand.
type fakeServer struct {
	t       *testing.T
	nc      *nats.Conn
	subject string
	msgs    chan *nats.Msg
}

func newFakeServer(t *testing.T, nc *nats.Conn) *fakeServer {
	f := &fakeServer{t: t, nc: nc, subject: fmt.Sprintf("loom.rpc.fake%d", subjects.Add(1)), msgs: make(chan *nats.Msg, 1024)}
	sub, err := nc.ChanSubscribe(f.subject, f.msgs)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe() })
	return f
}

// next returns the next message of the given kind, skipping pongs.
func (f *fakeServer) next(kind string) *nats.Msg {
	f.t.Helper()
	for {
		select {
		case m := <-f.msgs:
			if k := m.Header.Get(hdrKind); k == kind {
				return m
			} else if k != kindPong {
				f.t.Fatalf("got a %q message, want %q", k, kind)
			}
		case <-time.After(5 * time.Second):
			f.t.Fatalf("no %q message", kind)
		}
	}
}

func (f *fakeServer) send(subject string, h nats.Header, data []byte) {
	f.t.Helper()
	if err := f.nc.PublishMsg(&nats.Msg{Subject: subject, Header: h, Data: data}); err != nil {
		f.t.Fatal(err)
	}
}

func data(seq uint64) nats.Header {
	return nats.Header{hdrKind: {kindData}, hdrSeq: {strconv.FormatUint(seq, 10)}}
}

func (f *fakeServer) heartbeat(inbox string, entries ...hbEntry) {
	var p []byte
	for _, e := range entries {
		p = appendHeartbeat(p, e.id, e.blocked)
	}
	f.send(inbox+".0", nats.Header{hdrKind: {kindHeartbeat}, hdrServer: {f.subject}}, p)
}

func TestCallerRecoversFromLostMessages(t *testing.T) {
	p := newPair(t)
	f := newFakeServer(t, p.snc)
	// The fake server sends no heartbeats unless told: no stall detection.
	c := newClient(t, p.cnc, ClientConfig{InitialWindow: 1000, HeartbeatTimeout: time.Minute, StallTimeout: -1})
	open := func() (*ClientStream, openMsg, string) {
		st, err := c.Open(context.Background(), f.subject, plane.Request{Path: "p"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		m := f.next(kindOpen)
		o, err := parseOpen(m.Header, m.Reply)
		if err != nil {
			t.Fatal(err)
		}
		return st, o, m.Reply
	}

	t.Run("a lost CREDIT is resent when a heartbeat shows the server waiting", func(t *testing.T) {
		st, o, reply := open()
		if o.credit != 1000 || !o.hasCredit || o.heartbeat != time.Minute {
			t.Fatalf("request announced credit %d, heartbeat %v", o.credit, o.heartbeat)
		}
		// 1000 bytes of credit: 5 messages of 136 + 64 bytes.
		for i := range uint64(5) {
			f.send(reply, data(i+1), make([]byte, 136))
		}
		for range 5 {
			if _, err := st.Recv(); err != nil {
				t.Fatal(err)
			}
		}
		// Granted at half the window (3 messages): "lose" it.
		c1, err := parseControl(kindCredit, f.next(kindCredit).Header)
		if err != nil || c1.stream != o.stream || c1.credit != 1000+600 {
			t.Fatalf("credit %+v, %v; want a total of 1600", c1, err)
		}
		f.heartbeat(o.inbox, hbEntry{o.stream, 1000 + 1}) // waiting, having seen 1000
		c2, err := parseControl(kindCredit, f.next(kindCredit).Header)
		if err != nil || c2 != c1 {
			t.Fatalf("resent credit %+v, %v; want %+v", c2, err, c1)
		}
	})
	t.Run("a heartbeat listing an ended stream makes the caller kill it again", func(t *testing.T) {
		st, o, _ := open()
		st.Cancel()
		f.next(kindKill)
		f.heartbeat(o.inbox, hbEntry{o.stream, 0})
		k, err := parseControl(kindKill, f.next(kindKill).Header)
		if err != nil || k.stream != o.stream {
			t.Fatalf("kill %+v, %v", k, err)
		}
	})
	t.Run("a gap in the responses resets the stream", func(t *testing.T) {
		st, _, reply := open()
		f.send(reply, data(1), []byte("one"))
		f.send(reply, data(3), []byte("three"))
		if p, err := st.Recv(); err != nil || string(p) != "one" {
			t.Fatalf("Recv = %q, %v", p, err)
		}
		_, err := st.Recv()
		var se *plane.StreamError
		if !errors.As(err, &se) || se.Code != wire.CodeReset || !errors.Is(err, ErrMessageLost) || se.BeforeFirstResponse {
			t.Fatalf("Recv = %v, want Reset (message lost)", err)
		}
		f.next(kindKill)
	})
	t.Run("an END that counts more responses than arrived resets the stream", func(t *testing.T) {
		st, _, reply := open()
		f.send(reply, encodeEnd(2, wire.CodeOK, ""), nil)
		_, err := st.Recv()
		var se *plane.StreamError
		if !errors.As(err, &se) || !errors.Is(err, ErrMessageLost) || !se.BeforeFirstResponse {
			t.Fatalf("Recv = %v, want Reset (message lost) before the first response", err)
		}
	})
	t.Run("a response beyond the credit is a protocol error", func(t *testing.T) {
		st, _, reply := open()
		f.send(reply, data(1), make([]byte, 2000)) // allowed: credit was left
		f.send(reply, data(2), nil)                // not allowed
		testutil.Eventually(t, 10*time.Second, "the stream to fail", func() bool { st.mu.Lock(); defer st.mu.Unlock(); return st.err != nil })
		if _, err := st.Recv(); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(); !errors.Is(err, plane.ErrProtocol) {
			t.Fatalf("Recv = %v, want Protocol", err)
		}
		f.next(kindKill)
	})
	t.Run("a request the server never saw fails at the heartbeat timeout", func(t *testing.T) {
		c := newClient(t, p.cnc, ClientConfig{HeartbeatTimeout: 200 * time.Millisecond})
		st, err := c.Open(context.Background(), f.subject, plane.Request{Path: "p"})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		f.next(kindOpen) // received, then "lost"
		_, err = recvWithin(t, st, 2*time.Second)
		var se *plane.StreamError
		if !errors.As(err, &se) || !errors.Is(err, ErrServerGone) || !se.BeforeFirstResponse {
			t.Fatalf("Recv = %v, want Reset (server gone) before the first response", err)
		}
	})
}

func TestServerHeartbeatsListOpenStreamsAndTakeCumulativeCredit(t *testing.T) {
	p := newPair(t)
	var sent atomic.Int64
	srv := serve(t, p.snc, ServerConfig{HeartbeatInterval: 20 * time.Millisecond, ClientTimeout: time.Minute}, func(s *ServerStream) error {
		if s.Path() == "marker" {
			return nil
		}
		for i := range 3 {
			if err := s.Send([]byte{byte(i)}); err != nil {
				return err
			}
			sent.Add(1)
		}
		return nil
	})
	// A raw caller: an inbox subscription and hand-made messages.
	inbox := p.cnc.NewInbox()
	msgs := make(chan *nats.Msg, 1024)
	sub, err := p.cnc.ChanSubscribe(inbox+".*", msgs)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	o := openMsg{path: "p", inbox: inbox, stream: 7, credit: MessageOverhead + 1, hasCredit: true, heartbeat: 90 * time.Millisecond}
	if err := p.cnc.PublishMsg(&nats.Msg{Subject: srv.Address(), Reply: inbox + ".7", Header: encodeOpen(&o)}); err != nil {
		t.Fatal(err)
	}
	// next returns the next message on subject, skipping others.
	next := func(subject string) *nats.Msg {
		t.Helper()
		timeout := time.After(5 * time.Second)
		for {
			select {
			case m := <-msgs:
				if m.Subject == subject {
					return m
				}
			case <-timeout:
				t.Fatalf("nothing on %s", subject)
				return nil
			}
		}
	}
	if m := next(inbox + ".7"); m.Header.Get(hdrKind) != kindData {
		t.Fatalf("first message %v", m.Header)
	}
	// The handler now waits for credit; a heartbeat says so.
	for i := 0; ; i++ {
		hb := next(inbox + ".0")
		entries, err := parseHeartbeat(hb.Data)
		if err != nil || len(entries) != 1 || entries[0].id != 7 || hb.Header.Get(hdrServer) != srv.Address() {
			t.Fatalf("heartbeat %v from %q, %v", entries, hb.Header.Get(hdrServer), err)
		}
		if entries[0].blocked == MessageOverhead+2 {
			break
		}
		if i == 100 {
			t.Fatalf("heartbeats never showed the stream waiting for credit: %v", entries)
		}
	}
	credit := func(total uint64) {
		h := encodeControl(ctlMsg{kind: kindCredit, inbox: inbox, stream: 7, credit: total})
		if err := p.cnc.PublishMsg(&nats.Msg{Subject: srv.Address(), Header: h}); err != nil {
			t.Fatal(err)
		}
	}
	credit(MessageOverhead + 1) // a repeat grants nothing
	credit(1)                   // nor does an older total
	// The server handles what one connection sends it in order: once it
	// has answered a request sent after the credits, it has taken them.
	o8 := openMsg{path: "marker", inbox: inbox, stream: 8, credit: MessageOverhead + 1, hasCredit: true, heartbeat: 90 * time.Millisecond}
	if err := p.cnc.PublishMsg(&nats.Msg{Subject: srv.Address(), Reply: inbox + ".8", Header: encodeOpen(&o8)}); err != nil {
		t.Fatal(err)
	}
	if m := next(inbox + ".8"); m.Header.Get(hdrKind) != kindEnd {
		t.Fatalf("the marker request was answered with %v, want END", m.Header)
	}
	srv.mu.Lock()
	st7 := srv.peers[inbox].streams[7]
	srv.mu.Unlock()
	st7.mu.Lock()
	granted := st7.granted
	st7.mu.Unlock()
	if granted != MessageOverhead+1 {
		t.Fatalf("credit %d after repeated and older totals, want the first %d", granted, MessageOverhead+1)
	}
	if n := sent.Load(); n != 1 {
		t.Fatalf("%d sent on repeated credit", n)
	}
	credit(10 * MessageOverhead)
	for i := uint64(2); i <= 3; i++ {
		if seq, err := parseData(next(inbox + ".7").Header); err != nil || seq != i {
			t.Fatalf("DATA seq %d, %v; want %d", seq, err, i)
		}
	}
	end := next(inbox + ".7")
	if seq, code, _, err := parseEnd(end.Header); err != nil || seq != 3 || code != wire.CodeOK {
		t.Fatalf("END seq %d code %v, %v", seq, code, err)
	}
}
