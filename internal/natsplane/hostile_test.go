package natsplane

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/internal/plane"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/internal/wire"
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

// What doc.go says of requests that cannot be served: each is answered
// with END on its reply subject (Protocol for another version, BadRequest
// otherwise) naming what is wrong, and never reaches the handler; a
// message without a reply subject, of an unknown kind or a malformed
// control message is dropped. The server serves on afterwards.
func TestMalformedRequestsAreAnsweredAndTheServerGoesOn(t *testing.T) {
	p := newPair(t)
	var handled atomic.Int32
	srv := serve(t, p.snc, ServerConfig{}, func(s *ServerStream) error {
		handled.Add(1)
		return s.Send([]byte(s.Path()))
	})
	w := connect(t, p.ns)
	inbox := w.NewInbox()
	replies := make(chan *nats.Msg, 64)
	if _, err := w.ChanSubscribe(inbox+".>", replies); err != nil {
		t.Fatal(err)
	}
	n := 0
	// send publishes h as a request with reply subject inbox.<n> (or
	// reply, if given) and returns the reply subject.
	send := func(h nats.Header, reply string) string {
		t.Helper()
		n++
		if reply == "" {
			reply = fmt.Sprintf("%s.%d", inbox, n)
		}
		if err := w.PublishMsg(&nats.Msg{Subject: srv.Address(), Reply: reply, Header: h}); err != nil {
			t.Fatal(err)
		}
		return reply
	}
	answer := func(reply string) *nats.Msg {
		t.Helper()
		select {
		case m := <-replies:
			if m.Subject != reply {
				t.Fatalf("answer on %s, want %s", m.Subject, reply)
			}
			return m
		case <-time.After(5 * time.Second):
			t.Fatalf("no answer on %s", reply)
			return nil
		}
	}
	good := func() nats.Header { return nats.Header{hdrKind: {kindOpen}, hdrPath: {"p"}} }
	with := func(kv ...string) nats.Header {
		h := good()
		for i := 0; i < len(kv); i += 2 {
			h[kv[i]] = append(h[kv[i]], kv[i+1])
		}
		return h
	}
	manyHeaders := good()
	for i := range wire.MaxHeaders + 1 {
		manyHeaders[fmt.Sprintf("%sk%d", hdrUser, i)] = []string{"v"}
	}
	for _, tt := range []struct {
		name  string
		h     nats.Header
		reply string // default inbox.<n>
		code  wire.Code
		want  string
	}{
		{"another message version", with(hdrVersion, "2"), "", wire.CodeProtocol, "upgrade the older side"},
		{"no path", nats.Header{hdrKind: {kindOpen}}, "", wire.CodeBadRequest, "no " + hdrPath},
		{"a path past the limit", nats.Header{hdrPath: {strings.Repeat("p", wire.MaxPathLen+1)}}, "", wire.CodeBadRequest, hdrPath},
		{"a bad escape", nats.Header{hdrPath: {"a%zzb"}}, "", wire.CodeBadRequest, "bad escape"},
		{"a repeated header", with(hdrPath, "q"), "", wire.CodeBadRequest, hdrPath + " given 2 times"},
		{"a timeout that is not a number", with(hdrTimeout, "-1"), "", wire.CodeBadRequest, hdrTimeout},
		{"an inbox without a stream", with(hdrInbox, inbox), "", wire.CodeBadRequest, "only one of"},
		{"stream 0", with(hdrInbox, inbox, hdrStream, "0"), inbox + ".0", wire.CodeBadRequest, "stream 0"},
		{"a reply subject that is not the inbox and stream", with(hdrInbox, inbox+".x", hdrStream, "1"), "", wire.CodeBadRequest, "is not " + hdrInbox},
		{"too many headers", manyHeaders, "", wire.CodeBadRequest, "more than 64 headers"},
	} {
		reply := send(tt.h, tt.reply)
		m := answer(reply)
		seq, code, msg, err := parseEnd(m.Header)
		if err != nil || m.Header.Get(hdrKind) != kindEnd || seq != 0 || code != tt.code || !strings.Contains(msg, tt.want) {
			t.Errorf("%s: answered %v (code %v, %q, %v); want END %v saying %q", tt.name, m.Header, code, msg, err, tt.code, tt.want)
		}
	}

	// Dropped without an answer: a request without a reply subject,
	// unknown kinds, and control messages that do not parse or name no
	// stream of this server.
	for _, h := range []nats.Header{
		{hdrKind: {"bogus"}, hdrPath: {"p"}},
		{hdrKind: {kindCredit}, hdrInbox: {inbox}, hdrStream: {"1"}},
		{hdrKind: {kindKill}, hdrInbox: {inbox}},
		{hdrKind: {kindStop}, hdrStream: {"1"}},
		{hdrKind: {kindPong}},
		{hdrKind: {kindKill}, hdrInbox: {"%zz"}, hdrStream: {"1"}},
		{hdrKind: {kindKill}, hdrInbox: {inbox}, hdrStream: {"99"}},
	} {
		send(h, "")
	}
	if err := w.PublishMsg(&nats.Msg{Subject: srv.Address(), Header: good()}); err != nil {
		t.Fatal(err)
	}
	// The server handles one connection's messages in order: the answer
	// to a request sent last is the next message, and it is served.
	reply := send(good(), "")
	m := answer(reply)
	if m.Header.Get(hdrKind) != kindData || string(m.Data) != "p" {
		t.Fatalf("a good request after the bad ones answered %v %q", m.Header, m.Data)
	}
	if end := answer(reply); end.Header.Get(hdrKind) != kindEnd {
		t.Fatalf("then %v", end.Header)
	}
	if n := handled.Load(); n != 1 {
		t.Fatalf("the handler ran %d times, want once: malformed requests reached it", n)
	}
}

// What arrives on a Client's inbox that is not a well-formed answer to
// one of its streams: messages on subjects that name no stream, or a
// stream it does not have, or of an unknown kind, are dropped; a DATA or
// END that does not parse fails its stream with Protocol naming the
// server, and asks the server to kill it.
func TestMalformedAnswersFailOnlyTheirStream(t *testing.T) {
	p := newPair(t)
	f := newFakeServer(t, p.snc)
	c := newClient(t, p.cnc, ClientConfig{HeartbeatTimeout: time.Minute, StallTimeout: -1})
	open := func() (*ClientStream, string) {
		st, err := c.Open(context.Background(), f.subject, plane.Request{Path: "p"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st, f.next(kindOpen).Reply
	}
	a, replyA := open()
	for _, m := range []*nats.Msg{
		{Subject: c.inbox + ".x", Header: data(1), Data: []byte("no stream")},
		{Subject: c.inbox + ".999", Header: data(1), Data: []byte("not a stream of the Client")},
		{Subject: replyA, Header: nats.Header{hdrKind: {"bogus"}, hdrSeq: {"1"}}, Data: []byte("unknown kind")},
		{Subject: replyA, Header: nil, Data: []byte("no headers")},
	} {
		f.send(m.Subject, m.Header, m.Data)
	}
	f.send(replyA, data(1), []byte("one"))
	f.send(replyA, nats.Header{hdrKind: {kindData}, hdrSeq: {"two"}}, nil)
	if got, err := a.Recv(); err != nil || string(got) != "one" {
		t.Fatalf("Recv = %q, %v; want the one good response", got, err)
	}
	_, err := a.Recv()
	var se *plane.StreamError
	if !errors.As(err, &se) || se.Code != wire.CodeProtocol || !strings.Contains(se.Message, f.subject) || !strings.Contains(se.Message, hdrSeq) {
		t.Fatalf("Recv after a malformed DATA = %v, want Protocol naming the server and %s", err, hdrSeq)
	}
	f.next(kindKill)

	b, replyB := open()
	f.send(replyB, nats.Header{hdrKind: {kindEnd}, hdrSeq: {"0"}, hdrCode: {"70000"}}, nil)
	if _, err := b.Recv(); !errors.As(err, &se) || se.Code != wire.CodeProtocol || !se.BeforeFirstResponse || !strings.Contains(se.Message, hdrCode) {
		t.Fatalf("Recv after a malformed END = %v, want Protocol before the first response naming %s", err, hdrCode)
	}
	f.next(kindKill)
}

// doc.go: waiting requests hold at most 64 MiB (plane.DefaultMaxQueuedBytes)
// whatever QueueSize allows, so that a flood of requests as large as NATS
// carries cannot pin QueueSize of them; one more is answered with END
// Overloaded naming the bound.
func TestQueuedRequestsHoldAtMost64MiB(t *testing.T) {
	p := newPair(t)
	release := make(chan struct{})
	srv := serve(t, p.snc, ServerConfig{MaxConcurrentStreams: 1, QueueSize: 1000}, func(s *ServerStream) error {
		<-release
		return nil
	})
	defer close(release)
	c := newClient(t, p.cnc, ClientConfig{HeartbeatTimeout: time.Minute, StallTimeout: -1})
	payload := make([]byte, p.cnc.MaxPayload()-1024) // about 1 MiB, the most NATS carries by default
	fit := plane.DefaultMaxQueuedBytes / len(payload)
	open := func() *ClientStream {
		t.Helper()
		st, err := c.Open(context.Background(), srv.Address(), plane.Request{Path: "p", Payload: payload})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}
	open()
	testutil.Eventually(t, 10*time.Second, "the first request to run", func() bool { return srv.adm.Running() == 1 })
	// One at a time, so that the server's subscription never holds more
	// than one of them unread.
	for i := range fit {
		open()
		testutil.Eventually(t, 10*time.Second, fmt.Sprintf("request %d to wait", i+1), func() bool { return srv.adm.Waiting() == i+1 })
	}
	_, err := recvWithin(t, open(), 5*time.Second)
	var se *plane.StreamError
	if !errors.As(err, &se) || !errors.Is(err, plane.ErrOverloaded) || !se.BeforeFirstResponse {
		t.Fatalf("a request past %d queued bytes: %v, want Overloaded before the first response", plane.DefaultMaxQueuedBytes, err)
	}
	if want := fmt.Sprintf("%d queued with %d request bytes", fit, fit*len(payload)); !strings.Contains(se.Message, want) || !strings.Contains(se.Message, "at most 67108864 queued bytes") {
		t.Errorf("refusal %q does not say %q and the bound", se.Message, want)
	}
	if n := srv.adm.Waiting(); n != fit {
		t.Errorf("%d requests wait after the refusal, want %d", n, fit)
	}
}

// MaxStreamsPerCaller counts a caller's streams until their handlers
// return, as the TCP plane counts a connection's: a caller that kills its
// streams while their handlers keep running (a handler that does not
// watch its context) still holds their slots, and cannot take more than
// its share by opening new ones.
func TestAKilledStreamCountsAgainstItsCallerUntilItsHandlerReturns(t *testing.T) {
	p := newPair(t)
	release := make(chan struct{})
	var running, killed atomic.Int32
	srv := serve(t, p.snc, ServerConfig{MaxConcurrentStreams: 4, MaxStreamsPerCaller: 2, QueueSize: -1}, func(s *ServerStream) error {
		running.Add(1)
		defer running.Add(-1)
		<-s.Context().Done()
		killed.Add(1)
		<-release // and runs on regardless
		return nil
	})
	defer close(release)
	c := newClient(t, p.cnc, ClientConfig{HeartbeatTimeout: time.Minute, StallTimeout: -1})
	open := func() *ClientStream {
		t.Helper()
		st, err := c.Open(context.Background(), srv.Address(), plane.Request{Path: "p"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}
	a, b := open(), open()
	testutil.Eventually(t, 10*time.Second, "two handlers to run", func() bool { return running.Load() == 2 })
	a.Cancel()
	b.Cancel()
	testutil.Eventually(t, 10*time.Second, "the server to take both kills", func() bool { return killed.Load() == 2 })
	// Both handlers still run: the caller holds its share.
	_, err := recvWithin(t, open(), 5*time.Second)
	if !errors.Is(err, plane.ErrOverloaded) {
		t.Fatalf("a new stream of a caller whose 2 killed streams still run: %v, want Overloaded (max streams per caller 2)", err)
	}
	if n := running.Load(); n != 2 {
		t.Fatalf("%d handlers run, want the 2 killed ones", n)
	}
}

// doc.go: a heartbeat lists every stream of the caller open on the
// server; streams past the max payload go in further heartbeats, each
// within it.
func TestHeartbeatsPastTheMaxPayloadSplit(t *testing.T) {
	const maxPayload, streams = 256, 120
	p := newPair(t)
	release := make(chan struct{})
	srv := serve(t, p.snc, ServerConfig{MaxPayload: maxPayload, HeartbeatInterval: 20 * time.Millisecond, MaxStreamsPerCaller: -1}, func(s *ServerStream) error {
		<-release
		return nil
	})
	defer close(release)
	c := newClient(t, p.cnc, ClientConfig{HeartbeatTimeout: time.Minute, StallTimeout: -1})
	for range streams {
		st, err := c.Open(context.Background(), srv.Address(), plane.Request{Path: "p"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
	}
	testutil.Eventually(t, 10*time.Second, "every handler to run", func() bool { return srv.adm.Running() == streams })
	hbs := make(chan *nats.Msg, 1024)
	w := connect(t, p.ns)
	if _, err := w.ChanSubscribe(c.inbox+".0", hbs); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	listed := map[uint64]bool{}
	for len(listed) < streams {
		select {
		case m := <-hbs:
			if size := hdrSize(m.Header) + len(m.Data); size > maxPayload {
				t.Fatalf("a heartbeat of %d bytes, above the max payload of %d", size, maxPayload)
			}
			entries, err := parseHeartbeat(m.Data)
			if err != nil {
				t.Fatal(err)
			}
			if len(entries) == streams {
				t.Fatalf("one heartbeat of %d bytes lists all %d streams", len(m.Data), streams)
			}
			for _, e := range entries {
				if e.id == 0 || e.id > streams {
					t.Fatalf("heartbeat lists stream %d", e.id)
				}
				listed[e.id] = true
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("heartbeats listed %d of the %d streams", len(listed), streams)
		}
	}
}

// doc.go: END carries a message of at most 1024 bytes. A handler's longer
// error text arrives cut at a character boundary; an END whose message
// is longer (from a server that is not Loom's) fails the stream with
// Protocol rather than handing the caller an unbounded string.
func TestEndMessagesHoldAtMost1024Bytes(t *testing.T) {
	p := newPair(t)
	long := strings.Repeat("é", wire.MaxMessageLen) // 2 bytes each
	srv := serve(t, p.snc, ServerConfig{}, func(s *ServerStream) error { return errors.New(long) })
	c := newClient(t, p.cnc, ClientConfig{HeartbeatTimeout: time.Minute, StallTimeout: -1})
	st, err := c.Open(context.Background(), srv.Address(), plane.Request{Path: "p"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	_, err = st.Recv()
	var se *plane.StreamError
	if !errors.As(err, &se) || se.Code != wire.CodeApplication {
		t.Fatalf("Recv = %v, want the handler's error", err)
	}
	if len(se.Message) != wire.MaxMessageLen || !utf8.ValidString(se.Message) || !strings.HasPrefix(long, se.Message) {
		t.Fatalf("a %d-byte error arrived as %d bytes (valid UTF-8: %v); want its first %d bytes", len(long), len(se.Message), utf8.ValidString(se.Message), wire.MaxMessageLen)
	}

	f := newFakeServer(t, p.snc)
	st, err = c.Open(context.Background(), f.subject, plane.Request{Path: "p"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	f.send(f.next(kindOpen).Reply, nats.Header{hdrKind: {kindEnd}, hdrSeq: {"0"}, hdrCode: {"1"}, hdrMessage: {strings.Repeat("x", wire.MaxMessageLen+1)}}, nil)
	if _, err := st.Recv(); !errors.As(err, &se) || se.Code != wire.CodeProtocol || !strings.Contains(se.Message, "limit 1024") {
		t.Fatalf("Recv after an END with a %d-byte message = %v, want Protocol naming the limit", wire.MaxMessageLen+1, err)
	}
}

// A heartbeat that lists streams the caller has ended makes it send KILL
// for them. A forged one listing thousands must not make the caller
// publish thousands of messages for one it received: it kills at most
// maxKillsPerHeartbeat per heartbeat, and a real server, which lists
// only the streams it still runs, is told of the rest at its next ones.
func TestAHeartbeatListingManyEndedStreamsIsAnsweredInBoundedKills(t *testing.T) {
	p := newPair(t)
	f := newFakeServer(t, p.snc)
	c := newClient(t, p.cnc, ClientConfig{HeartbeatTimeout: time.Minute, StallTimeout: -1})
	st, err := c.Open(context.Background(), f.subject, plane.Request{Path: "p"})
	if err != nil {
		t.Fatal(err)
	}
	f.next(kindOpen)
	st.Close()
	f.next(kindKill)
	// Stream ids the Client has used, as a long-lived one has used many.
	c.mu.Lock()
	c.nextID = 1 << 20
	c.mu.Unlock()
	var entries []hbEntry
	for id := uint64(2); id < 10000; id++ {
		entries = append(entries, hbEntry{id, 0})
	}
	f.heartbeat(c.inbox, entries...)
	f.heartbeat(c.inbox) // lists nothing: its PONG comes after every answer to the first
	next := func() string {
		t.Helper()
		select {
		case m := <-f.msgs:
			return m.Header.Get(hdrKind)
		case <-time.After(5 * time.Second):
			t.Fatal("the caller stopped answering the heartbeats")
			return ""
		}
	}
	if kind := next(); kind != kindPong {
		t.Fatalf("first answer %q, want PONG", kind)
	}
	kills := 0
	for next() != kindPong {
		kills++
	}
	if kills == 0 || kills > maxKillsPerHeartbeat {
		t.Fatalf("one heartbeat listing %d ended streams was answered with %d KILLs, want 1 to %d", len(entries), kills, maxKillsPerHeartbeat)
	}
}

// ServerConfig.QueueSize negative means no queue: a request that finds
// every handler slot taken is refused at once, not queued.
func TestANegativeQueueSizeQueuesNothing(t *testing.T) {
	p := newPair(t)
	release := make(chan struct{})
	srv := serve(t, p.snc, ServerConfig{MaxConcurrentStreams: 1, QueueSize: -1}, func(s *ServerStream) error {
		<-release
		return nil
	})
	defer close(release)
	if q := srv.adm.Limits().QueueSize; q != 0 {
		t.Errorf("QueueSize -1 gives a queue of %d", q)
	}
	c := newClient(t, p.cnc, ClientConfig{HeartbeatTimeout: time.Minute, StallTimeout: -1})
	first, err := c.Open(context.Background(), srv.Address(), plane.Request{Path: "p"})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	testutil.Eventually(t, 10*time.Second, "the first handler to run", func() bool { return srv.adm.Running() == 1 })
	second, err := c.Open(context.Background(), srv.Address(), plane.Request{Path: "p"})
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if _, err := recvWithin(t, second, 5*time.Second); !errors.Is(err, plane.ErrOverloaded) || !strings.Contains(err.Error(), "QueueSize 0") {
		t.Fatalf("a request with every slot taken and no queue: %v, want Overloaded", err)
	}
}
