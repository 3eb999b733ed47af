package mux

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/internal/wire"
)

// A released stream serves a later call. What kept it from its earlier
// call (a reader's cache of its last stream, the stall and
// connection-loss paths) checks its connection and id under its lock, so
// that nothing meant for the earlier call reaches the later one.
func TestAReleasedStreamTakesNothingMeantForItsEarlierCall(t *testing.T) {
	addr, _ := startServer(t, ServerConfig{}, echo)
	p := newPool(t, ClientConfig{})
	open := func(payload string) *ClientStream {
		st, err := p.Open(context.Background(), addr, Request{Path: "t/echo", Payload: []byte(payload)})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	// The pool of released streams may drop what it is given (the race
	// detector makes it drop some on purpose): release until one serves
	// the next call.
	var a, b *ClientStream
	var oldConn *clientConn
	var oldID uint32
	for range 100 {
		a = open("first")
		if msgs, err := recvAll(a); err != nil || len(msgs) != 1 || string(msgs[0]) != "first" {
			t.Fatalf("first call: %q, %v", msgs, err)
		}
		oldConn, oldID = a.c, a.id
		a.Release()
		if b = open("second"); b == a {
			break
		}
		if _, err := recvAll(b); err != nil {
			t.Fatal(err)
		}
		b.Close()
	}
	if b != a {
		t.Fatal("no released stream served a later call in 100 calls")
	}
	if err := a.push(oldConn, oldID, []byte("stale"), oldConn.rd); err != nil {
		t.Errorf("a stale DATA: %v", err)
	}
	a.end(oldConn, oldID, wire.CodeInternal, []byte("stale end"))
	a.fail(oldConn, oldID, errors.New("stale connection loss"))
	if a.killIf(oldConn, oldID, &StreamError{Code: wire.CodeReset, Message: "stale stall"}) {
		t.Error("the stall path killed the later call")
	}
	msgs, err := recvAll(b)
	if err != nil || len(msgs) != 1 || string(msgs[0]) != "second" {
		t.Fatalf("the later call got %q, %v; want only its own answer", msgs, err)
	}
	b.Release()
}

// Only a stream that nothing else can reach is reused: one that ended by
// the server's END, whose context watch, if any, was stopped before it
// fired. A cancelled stream, or one whose watch fired, is not.
func TestOnlyAStreamNothingElseReachesIsReused(t *testing.T) {
	release := make(chan struct{})
	addr, _ := startServer(t, ServerConfig{}, func(s *ServerStream) error {
		if string(s.Payload()) == "wait" {
			select {
			case <-release:
			case <-s.Context().Done():
			}
		}
		return s.Send(s.Payload())
	})
	defer close(release)
	p := newPool(t, ClientConfig{})
	reusable := func(st *ClientStream) bool {
		st.mu.Lock()
		defer st.mu.Unlock()
		return st.reusable()
	}

	st, err := p.Open(context.Background(), addr, Request{Path: "t", Payload: []byte("now")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := recvAll(st); err != nil {
		t.Fatal(err)
	}
	st.Close()
	if !reusable(st) {
		t.Error("a stream ended by its END, with no context watch, is not reusable")
	}
	// A watch that fired as the END came (its stop reported it had
	// started) may still be aborting the stream.
	st.mu.Lock()
	st.watched = true
	st.mu.Unlock()
	if reusable(st) {
		t.Error("a stream whose context watch may still run is reusable")
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err = p.Open(ctx, addr, Request{Path: "t", Payload: []byte("now")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := recvAll(st); err != nil {
		t.Fatal(err)
	}
	st.Close()
	// The reader stops the watch just after it delivers the end.
	testutil.Eventually(t, 5*time.Second, "the stream's context watch stopped", func() bool { return reusable(st) })

	ctx, cancel = context.WithCancel(context.Background())
	st, err = p.Open(ctx, addr, Request{Path: "t", Payload: []byte("wait")})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := recvAll(st); err == nil {
		t.Fatal("a call whose context was cancelled ended with no error")
	}
	st.Close()
	if reusable(st) {
		t.Error("a stream whose context watch fired is reusable")
	}

	st, err = p.Open(context.Background(), addr, Request{Path: "t", Payload: []byte("wait")})
	if err != nil {
		t.Fatal(err)
	}
	st.Cancel()
	st.Close()
	if reusable(st) {
		t.Error("a cancelled stream is reusable")
	}
}
