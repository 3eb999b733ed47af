package mux

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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
	got := make(chan seen, 1)
	addr, _ := startServer(t, ServerConfig{}, func(s *ServerStream) error {
		_, ok := s.Deadline()
		got <- seen{s.Path(), s.Codec(), s.RequestID(), s.TraceParent(), s.Header("tenant"), s.Headers(), append([]byte(nil), s.Payload()...), ok}
		return s.Send(append([]byte("echo:"), s.Payload()...))
	})
	p := newPool(t, ClientConfig{})
	req := Request{
		Path: "ns/comp/generate", Codec: "msgpack", RequestID: "req-1",
		TraceParent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		Headers:     map[string]string{"tenant": "acme", "prio": "1"},
		Payload:     []byte("hello"),
	}
	st, err := p.Open(context.Background(), addr, req)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	msgs, err := recvAll(st)
	if err != nil || len(msgs) != 1 || string(msgs[0]) != "echo:hello" {
		t.Fatalf("got %q, %v", msgs, err)
	}
	s := <-got
	if s.path != req.Path || s.codec != req.Codec || s.rid != req.RequestID || s.tp != req.TraceParent || s.hdr != "acme" || len(s.headers) != 2 || string(s.payload) != "hello" || s.hasDeadline {
		t.Fatalf("handler saw %+v", s)
	}
}

func TestStreamingDeliversEveryItemInOrder(t *testing.T) {
	const n = 100_000
	addr, _ := startServer(t, ServerConfig{}, func(s *ServerStream) error {
		var b [8]byte
		for i := range uint64(n) {
			binary.BigEndian.PutUint64(b[:], i)
			if err := s.Send(b[:]); err != nil {
				return err
			}
		}
		return nil
	})
	p := newPool(t, ClientConfig{InitialWindow: 64 << 10})
	st, err := p.Open(ctxTimeout(t, 30*time.Second), addr, Request{Path: "stream"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for i := range uint64(n) {
		b, err := st.Recv()
		if err != nil {
			t.Fatalf("item %d: %v", i, err)
		}
		if got := binary.BigEndian.Uint64(b); got != i {
			t.Fatalf("item %d is %d", i, got)
		}
	}
	if _, err := st.Recv(); err != io.EOF {
		t.Fatalf("after the last item: %v, want io.EOF", err)
	}
}

func TestManyConcurrentStreamsShareConnections(t *testing.T) {
	addr, _ := startServer(t, ServerConfig{}, func(s *ServerStream) error {
		for range 3 {
			if err := s.Send(s.Payload()); err != nil {
				return err
			}
		}
		return nil
	})
	p := newPool(t, ClientConfig{ConnsPerHost: 2})
	const workers, calls = 200, 20
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := range calls {
				want := fmt.Sprintf("w%d-c%d", w, i)
				st, err := p.Open(ctxTimeout(t, 20*time.Second), addr, Request{Path: "x", Payload: []byte(want)})
				if err != nil {
					errs <- err
					return
				}
				msgs, err := recvAll(st)
				st.Close()
				if err != nil || len(msgs) != 3 || string(msgs[2]) != want {
					errs <- fmt.Errorf("%s: got %q, %v", want, msgs, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	p.mu.Lock()
	n := len(p.conns)
	p.mu.Unlock()
	if n != 2 {
		t.Errorf("pool holds %d connections, want 2", n)
	}
}

func TestSlowReaderBoundsServerBufferedBytes(t *testing.T) {
	const window, msg = 32 << 10, 1 << 10
	var sent atomic.Int64
	streams := make(chan *ServerStream, 1)
	addr, _ := startServer(t, ServerConfig{}, func(s *ServerStream) error {
		streams <- s
		p := make([]byte, msg)
		for range 4096 { // 4 MiB if nothing held it back
			if err := s.Send(p); err != nil {
				return err
			}
			sent.Add(msg)
		}
		return nil
	})
	p := newPool(t, ClientConfig{InitialWindow: window})
	st, err := p.Open(ctxTimeout(t, 20*time.Second), addr, Request{Path: "big"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	// The reader is slow: it consumes nothing until the server's Send
	// waits for credit (or has plainly sent past the window). Counted as
	// each Send returns, sent is then what the window let through.
	ss := <-streams
	testutil.Eventually(t, 10*time.Second, "the server to wait for credit", func() bool {
		c := ss.conn.conn
		c.wmu.Lock()
		defer c.wmu.Unlock()
		return ss.waiting || sent.Load() > window+msg
	})
	// The server may overdraw by one message: the credit must be positive
	// before a Send, not cover it.
	if got := sent.Load(); got > window+msg {
		t.Fatalf("server sent %d bytes to a reader that consumed nothing; window is %d", got, window)
	}
	// And waiting, it has used the window up: its frames' headers
	// (wire.HeaderSize each, 33 at most) are all the window holds besides.
	if got := sent.Load(); got < window-msg {
		t.Fatalf("server sent only %d bytes before waiting for credit; the window of %d should let it send more", got, window)
	}
	msgs, err := recvAll(st)
	if err != nil || len(msgs) != 4096 {
		t.Fatalf("got %d messages, %v", len(msgs), err)
	}
}

func TestStopFinishesGracefullyAndKillCancelsTheHandler(t *testing.T) {
	causes := make(chan error, 4)
	addr, _ := startServer(t, ServerConfig{}, func(s *ServerStream) error {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-s.Stopped():
				if err := s.Send([]byte("bye")); err != nil {
					return err
				}
				return nil
			case <-s.Context().Done():
				causes <- context.Cause(s.Context())
				return s.Context().Err()
			case <-tick.C:
				if err := s.Send([]byte("tick")); err != nil {
					causes <- err
					return err
				}
			}
		}
	})
	p := newPool(t, ClientConfig{})

	t.Run("stop lets the handler send its last message and end with OK", func(t *testing.T) {
		st, err := p.Open(ctxTimeout(t, 10*time.Second), addr, Request{Path: "ticks"})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		if _, err := st.Recv(); err != nil {
			t.Fatal(err)
		}
		st.Stop()
		msgs, err := recvAll(st)
		if err != nil || len(msgs) == 0 || string(msgs[len(msgs)-1]) != "bye" {
			t.Fatalf("after Stop: last of %d messages %q, %v; want bye then EOF", len(msgs), msgs[len(msgs)-1:], err)
		}
	})

	for _, kill := range []struct {
		name string
		do   func(st *ClientStream, cancel context.CancelFunc)
	}{
		{"Cancel", func(st *ClientStream, _ context.CancelFunc) { st.Cancel() }},
		{"cancelling the context", func(_ *ClientStream, cancel context.CancelFunc) { cancel() }},
		{"Close before the end", func(st *ClientStream, _ context.CancelFunc) { st.Close() }},
	} {
		t.Run(kill.name+" kills the stream and cancels the handler's context", func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			st, err := p.Open(ctx, addr, Request{Path: "ticks"})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if _, err := st.Recv(); err != nil {
				t.Fatal(err)
			}
			kill.do(st, cancel)
			if _, err := st.Recv(); !errors.Is(err, ErrCancelled) {
				t.Fatalf("Recv after the kill: %v, want Cancelled", err)
			}
			select {
			case cause := <-causes:
				if !errors.Is(cause, ErrCancelled) {
					t.Fatalf("handler's context cause: %v, want the client's kill", cause)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("handler's context was not cancelled")
			}
		})
	}
}

func TestDeadlineTravelsToTheHandler(t *testing.T) {
	type seen struct {
		left  time.Duration
		cause error
	}
	got := make(chan seen, 1)
	addr, _ := startServer(t, ServerConfig{}, func(s *ServerStream) error {
		dl, ok := s.Deadline()
		if !ok {
			got <- seen{}
			return nil
		}
		left := time.Until(dl)
		<-s.Context().Done()
		got <- seen{left, context.Cause(s.Context())}
		return s.Context().Err()
	})
	p := newPool(t, ClientConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	st, err := p.Open(ctx, addr, Request{Path: "slow"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	_, err = st.Recv()
	if !errors.Is(err, ErrDeadlineExceeded) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Recv: %v, want DeadlineExceeded", err)
	}
	var se *StreamError
	if !errors.As(err, &se) || !se.BeforeFirstResponse {
		t.Fatalf("Recv: %#v, want BeforeFirstResponse", err)
	}
	s := <-got
	if s.left <= 200*time.Millisecond || s.left > 300*time.Millisecond {
		t.Fatalf("handler saw %v left, want about 300ms", s.left)
	}
	if !errors.Is(s.cause, context.DeadlineExceeded) && !errors.Is(s.cause, ErrCancelled) {
		t.Fatalf("handler's context ended with %v", s.cause)
	}

	t.Run("a context that has ended is refused before sending", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
		defer cancel()
		time.Sleep(time.Millisecond)
		if _, err := p.Open(ctx, addr, Request{Path: "slow"}); !errors.Is(err, ErrDeadlineExceeded) {
			t.Fatalf("Open: %v", err)
		}
	})
}

func TestHandlerResultsBecomeEndCodes(t *testing.T) {
	addr, _ := startServer(t, ServerConfig{}, func(s *ServerStream) error {
		if bytes.HasPrefix(s.Payload(), []byte("partial")) {
			s.Send([]byte("first"))
		}
		switch string(bytes.TrimPrefix(s.Payload(), []byte("partial-"))) {
		case "app":
			return errors.New("model exploded")
		case "notfound":
			return Errorf(wire.CodeNotFound, "no endpoint %q", s.Path())
		case "panic":
			panic("boom")
		}
		return nil
	})
	p := newPool(t, ClientConfig{})
	tests := []struct {
		payload string
		want    *StreamError
		msg     string
		before  bool
	}{
		{"app", ErrApplication, "model exploded", true},
		{"notfound", ErrNotFound, `no endpoint "a/b/c"`, true},
		{"panic", ErrInternal, "panicked: boom", true},
		{"partial-app", ErrApplication, "model exploded", false},
	}
	for _, tt := range tests {
		t.Run(tt.payload, func(t *testing.T) {
			st, err := p.Open(ctxTimeout(t, 5*time.Second), addr, Request{Path: "a/b/c", Payload: []byte(tt.payload)})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			_, err = recvAll(st)
			var se *StreamError
			if !errors.Is(err, tt.want) || !errors.As(err, &se) || !strings.Contains(se.Message, tt.msg) || se.BeforeFirstResponse != tt.before {
				t.Fatalf("got %#v, want code %v with %q, BeforeFirstResponse %v", err, tt.want.Code, tt.msg, tt.before)
			}
		})
	}
}

func TestAdmissionRefusesBeyondStreamsAndQueue(t *testing.T) {
	release := make(chan struct{})
	var started atomic.Int32
	addr, _ := startServer(t, ServerConfig{MaxConcurrentStreams: 2, QueueSize: 1}, func(s *ServerStream) error {
		started.Add(1)
		select {
		case <-release:
		case <-s.Context().Done():
		}
		return s.Send([]byte("done"))
	})
	p := newPool(t, ClientConfig{})
	ctx := ctxTimeout(t, 10*time.Second)
	var streams []*ClientStream
	for range 3 {
		st, err := p.Open(ctx, addr, Request{Path: "x"})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		streams = append(streams, st)
	}
	for started.Load() < 2 {
		time.Sleep(time.Millisecond)
	}
	st, err := p.Open(ctx, addr, Request{Path: "x"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	start := time.Now()
	_, err = st.Recv()
	var se *StreamError
	if !errors.Is(err, ErrOverloaded) || !errors.As(err, &se) || !se.BeforeFirstResponse || !se.Code.Retryable() {
		t.Fatalf("4th stream: %v, want a retryable Overloaded before the first response", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("refusal took %v, want at once", d)
	}
	if started.Load() != 2 {
		t.Fatalf("%d handlers started, want 2 (the 3rd waits in the queue)", started.Load())
	}
	close(release)
	for i, st := range streams {
		if msgs, err := recvAll(st); err != nil || len(msgs) != 1 {
			t.Fatalf("stream %d: %q, %v", i, msgs, err)
		}
	}
	if started.Load() != 3 {
		t.Fatalf("%d handlers ran, want 3", started.Load())
	}
}

func TestShutdownDrainsInFlightStreams(t *testing.T) {
	release := make(chan struct{})
	var running sync.WaitGroup
	addr, srv := startServer(t, ServerConfig{}, func(s *ServerStream) error {
		running.Done()
		<-release
		return s.Send([]byte("finished"))
	})
	var drained atomic.Int32
	p := newPool(t, ClientConfig{OnDrain: func(string) { drained.Add(1) }})
	ctx := ctxTimeout(t, 10*time.Second)
	var streams []*ClientStream
	running.Add(3)
	for range 3 {
		st, err := p.Open(ctx, addr, Request{Path: "x"})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		streams = append(streams, st)
	}
	running.Wait()

	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for !p.Draining(addr) {
		if time.Now().After(deadline) {
			t.Fatal("the pool never saw the GOAWAY")
		}
		time.Sleep(time.Millisecond)
	}
	if drained.Load() != 1 {
		t.Fatalf("OnDrain called %d times, want 1", drained.Load())
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with streams in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	if _, err := p.Open(ctx, addr, Request{Path: "x"}); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("Open during the drain: %v, want ErrUnreachable (the listener is closed)", err)
	}
	close(release)
	for i, st := range streams {
		if msgs, err := recvAll(st); err != nil || len(msgs) != 1 || string(msgs[0]) != "finished" {
			t.Fatalf("stream %d: %q, %v", i, msgs, err)
		}
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

func TestShutdownPastItsContextKillsTheRest(t *testing.T) {
	cause := make(chan error, 1)
	started := make(chan struct{})
	addr, srv := startServer(t, ServerConfig{}, func(s *ServerStream) error {
		close(started)
		<-s.Context().Done()
		cause <- context.Cause(s.Context())
		return nil
	})
	p := newPool(t, ClientConfig{})
	st, err := p.Open(ctxTimeout(t, 10*time.Second), addr, Request{Path: "x"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v, want DeadlineExceeded", err)
	}
	if c := <-cause; !errors.Is(c, ErrServerClosed) {
		t.Fatalf("handler's cause: %v, want ErrServerClosed", c)
	}
	_, err = st.Recv()
	var se *StreamError
	if !errors.Is(err, ErrConnLost) || !errors.As(err, &se) || !se.BeforeFirstResponse {
		t.Fatalf("Recv: %v, want ErrConnLost before the first response", err)
	}
}

func TestConnectionLossAfterTheFirstResponseIsReported(t *testing.T) {
	addr, srv := startServer(t, ServerConfig{}, func(s *ServerStream) error {
		s.Send([]byte("partial"))
		<-s.Context().Done()
		return nil
	})
	p := newPool(t, ClientConfig{})
	st, err := p.Open(ctxTimeout(t, 10*time.Second), addr, Request{Path: "x"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	first, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	srv.Close()
	msgs, err := recvAll(st)
	msgs = append([][]byte{first}, msgs...)
	var se *StreamError
	if len(msgs) != 1 || !errors.Is(err, ErrReset) || !errors.Is(err, ErrConnLost) || !errors.As(err, &se) || se.BeforeFirstResponse || !st.Responded() {
		t.Fatalf("got %q, %v; want the partial message then Reset after the first response", msgs, err)
	}
}

func TestRequestAboveTheServersMaxFrameIsRefusedLocally(t *testing.T) {
	addr, _ := startServer(t, ServerConfig{MaxFrameSize: 8 << 10}, echo)
	p := newPool(t, ClientConfig{})
	_, err := p.Open(ctxTimeout(t, 5*time.Second), addr, Request{Path: "x", Payload: make([]byte, 16<<10)})
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Open: %v, want ErrTooLarge", err)
	}
	st, err := p.Open(ctxTimeout(t, 5*time.Second), addr, Request{Path: "x", Payload: []byte("small")})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if msgs, err := recvAll(st); err != nil || len(msgs) != 1 {
		t.Fatalf("%q, %v", msgs, err)
	}
}

// TestANegativeQueueSizeQueuesNothing: QueueSize -1 is no queue, as the
// doc and request_plane.queue_size say: a stream that finds every slot
// taken is refused at once. The -1 was turned into 0 before the limits
// saw it, which they take for the default queue of 1024.
func TestANegativeQueueSizeQueuesNothing(t *testing.T) {
	release := make(chan struct{})
	var started atomic.Int32
	addr, _ := startServer(t, ServerConfig{MaxConcurrentStreams: 1, QueueSize: -1}, func(s *ServerStream) error {
		started.Add(1)
		select {
		case <-release:
		case <-s.Context().Done():
		}
		return nil
	})
	defer close(release)
	p := newPool(t, ClientConfig{})
	ctx := ctxTimeout(t, 10*time.Second)
	first, err := p.Open(ctx, addr, Request{Path: "x"})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	testutil.Eventually(t, 10*time.Second, "the first handler to run", func() bool { return started.Load() == 1 })
	second, err := p.Open(ctx, addr, Request{Path: "x"})
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if _, err := second.Recv(); !errors.Is(err, ErrOverloaded) || !strings.Contains(err.Error(), "QueueSize 0") {
		t.Fatalf("a stream with the one slot taken and no queue: %v, want Overloaded", err)
	}
}
