package natsplane

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/internal/plane"
)

// A heartbeat names the server it comes from, and a caller answers it
// there (PONG, and KILL for streams it has ended). Anyone who can publish
// on the caller's inbox can forge one: the caller must answer only the
// servers it has called, or a forged heartbeat makes it publish, with its
// NATS user's permissions, to any subject the forger names.
func TestAForgedHeartbeatMakesTheCallerPublishNowhereElse(t *testing.T) {
	p := newPair(t)
	f := newFakeServer(t, p.snc)
	c := newClient(t, p.cnc, ClientConfig{HeartbeatTimeout: time.Minute, StallTimeout: -1})
	// A third party sees what the caller publishes under loom.>: to its
	// server (f.subject, loom.rpc.…) and to the subject a forger names.
	const victim = "loom.victim"
	seen := make(chan *nats.Msg, 64)
	w := connect(t, p.ns)
	if _, err := w.ChanSubscribe("loom.>", seen); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	// next returns the next message the caller published, failing if it
	// went anywhere but to its server.
	next := func(kind string) {
		t.Helper()
		for {
			select {
			case m := <-seen:
				if m.Subject == victim {
					t.Fatalf("the caller published a %q message to %s, the subject a forged heartbeat named", m.Header.Get(hdrKind), victim)
				}
				if m.Subject != f.subject {
					t.Fatalf("the caller published to %s", m.Subject)
				}
				if m.Header.Get(hdrKind) == kind {
					return
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("the caller sent its server no %q", kind)
			}
		}
	}
	forge := func(entries ...hbEntry) {
		var b []byte
		for _, e := range entries {
			b = appendHeartbeat(b, e.id, e.blocked)
		}
		// Sent on the fake server's connection, so that it reaches the
		// caller before the real heartbeat sent after it.
		f.send(c.inbox+".0", nats.Header{hdrKind: {kindHeartbeat}, hdrServer: {victim}}, b)
	}

	st, err := c.Open(context.Background(), f.subject, plane.Request{Path: "p"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	next(kindOpen)
	f.next(kindOpen)

	// A forged heartbeat, then the server's own: the caller answers
	// only the server's.
	forge(hbEntry{st.id, 0})
	f.heartbeat(c.inbox, hbEntry{st.id, 0})
	next(kindPong)

	// The stream ends here; a heartbeat listing it is answered with
	// KILL, only to its server, which it still knows although it has
	// no stream open there.
	st.Cancel()
	next(kindKill)
	forge(hbEntry{st.id, 0})
	f.heartbeat(c.inbox, hbEntry{st.id, 0})
	next(kindPong)
	next(kindKill)
}

// A request from a caller that is not a natsplane Client is filed under
// its reply subject. One whose reply subject is a Client's inbox (which
// every request of that Client shows in Loom-Inbox) must not be filed
// with that Client's streams: heartbeats to the Client would then list it
// as stream 0, which the Client refuses, so its streams would go unheard
// and fail as if the server were gone.
func TestAPlainRequestAnsweredOnAClientsInboxLeavesItsStreamsAlone(t *testing.T) {
	p := newPair(t)
	started := make(chan string, 2)
	release := make(chan struct{})
	srv := serve(t, p.snc, ServerConfig{HeartbeatInterval: 20 * time.Millisecond, ClientTimeout: time.Minute}, func(s *ServerStream) error {
		started <- s.Path()
		<-release
		return s.Send([]byte(s.Path()))
	})
	defer close(release)
	c := newClient(t, p.cnc, ClientConfig{HeartbeatTimeout: time.Minute, StallTimeout: -1})
	st, err := c.Open(context.Background(), srv.Address(), plane.Request{Path: "victim"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if path := <-started; path != "victim" {
		t.Fatalf("handler started for %q", path)
	}
	// Everything the server sends the Client's heartbeat subject.
	hbs := make(chan *nats.Msg, 256)
	w := connect(t, p.ns)
	if _, err := w.ChanSubscribe(c.inbox+".0", hbs); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}

	m := nats.NewMsg(srv.Address())
	m.Reply = c.inbox
	m.Header.Set(hdrPath, "intruder")
	if err := w.PublishMsg(m); err != nil {
		t.Fatal(err)
	}
	if path := <-started; path != "intruder" {
		t.Fatalf("handler started for %q", path)
	}
	srv.mu.Lock()
	var ids []uint64
	for id := range srv.peers[c.inbox].streams {
		ids = append(ids, id)
	}
	srv.mu.Unlock()
	if len(ids) != 1 || ids[0] != st.id {
		t.Errorf("the server holds streams %v for the Client's inbox; want only its own %d", ids, st.id)
	}
	// Heartbeats go on listing the Client's stream, and nothing else.
	for range 5 {
		select {
		case hb := <-hbs:
			entries, err := parseHeartbeat(hb.Data)
			if err != nil || len(entries) != 1 || entries[0].id != st.id {
				t.Fatalf("heartbeat to the Client lists %v, %v; want its stream %d alone", entries, err, st.id)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no heartbeat to the Client")
		}
	}
}
