package natsplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/internal/natsrefusal"
	"github.com/loomrt/loom/internal/plane"
	"github.com/loomrt/loom/internal/wire"
	"github.com/loomrt/loom/metrics"
)

// ClientConfig configures a Client. The zero value works.
type ClientConfig struct {
	// HeartbeatTimeout is how long a stream may go without any message
	// from its server (a response, END or heartbeat listing it) before it
	// fails with a Reset that wraps ErrServerGone. Requests carry it, and
	// servers heartbeat at a third of it or more often. Default
	// DefaultHeartbeatTimeout; negative turns the check off (streams
	// still fail when the NATS connection closes).
	HeartbeatTimeout time.Duration
	// StallTimeout is how long a stream waiting for its first response
	// may go without hearing anything at all from its server (a
	// response, END or heartbeat for any stream) before the server is
	// deemed stalled: frozen or overloaded, not known dead. Requests ask
	// for heartbeats at a third of it. Then the streams still waiting for
	// their first response fail with a Reset wrapping plane.ErrStalled
	// (the request got no answer, so it may go elsewhere), OnStall is
	// called, and Open to that server fails at once with
	// plane.ErrUnreachable wrapping plane.ErrStalled until it is heard
	// from again, except for one request let through every
	// StallProbeInterval to find out. Streams that had responded are
	// left to HeartbeatTimeout. Default DefaultStallTimeout; negative:
	// off.
	StallTimeout time.Duration
	// OnStall, if set, is called with a server's subject when it stops
	// answering while streams wait on it. It must not block.
	OnStall func(subject string)
	// InitialWindow is the credit in bytes each stream grants its server:
	// at most about this much (plus one message) is in flight or
	// buffered per stream when the caller reads slowly. Each message
	// costs its length plus MessageOverhead. Default
	// DefaultInitialWindow.
	InitialWindow int
	// Logger receives client-level events. Default slog.Default().
	Logger *slog.Logger
}

// Client opens streams on servers over NATS. All its streams share one
// subscription, on "<inbox>.*". It is safe for concurrent use.
type Client struct {
	nc  *nats.Conn
	cfg ClientConfig
	log *slog.Logger

	mu      sync.Mutex
	inbox   string // "" until the first Open
	prefix  string // inbox + "."
	sub     *nats.Subscription
	streams map[uint64]*ClientStream
	servers map[string]*serverState // by subject: those with open streams, and stalled ones
	nextID  uint64                  // last stream id used
	closed  bool
	stop    chan struct{} // closed by Close: ends the watchdog
	// lateUntil (monotime; the watchdog's) suspends stall judgements
	// after the watchdog itself ran late.
	lateUntil int64
	wg        sync.WaitGroup
}

// NewClient returns a Client that calls over nc. It subscribes to its
// inbox on the first Open. The Client does not own nc.
func NewClient(nc *nats.Conn, cfg ClientConfig) *Client {
	if cfg.HeartbeatTimeout == 0 {
		cfg.HeartbeatTimeout = DefaultHeartbeatTimeout
	}
	cfg.HeartbeatTimeout = max(cfg.HeartbeatTimeout, 0)
	if cfg.StallTimeout == 0 {
		cfg.StallTimeout = DefaultStallTimeout
	}
	cfg.StallTimeout = max(cfg.StallTimeout, 0)
	if cfg.InitialWindow <= 0 {
		cfg.InitialWindow = DefaultInitialWindow
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Client{nc: nc, cfg: cfg, log: cfg.Logger, streams: map[uint64]*ClientStream{}, servers: map[string]*serverState{}, stop: make(chan struct{})}
}

// Stall detection defaults.
const (
	// DefaultStallTimeout is ClientConfig.StallTimeout's default.
	DefaultStallTimeout = 400 * time.Millisecond
	// StallProbeInterval is how often one request is let through to a
	// stalled server, to find out whether it answers again.
	StallProbeInterval = time.Second
)

// forgetServerAfter is how long a Client keeps what it knows of a server
// with no stream open to it and silent: it answers heartbeats only from
// the servers it knows.
const forgetServerAfter = time.Minute

// maxKillsPerHeartbeat bounds the KILLs a Client sends in answer to one
// heartbeat, so that a forged one listing many ended streams does not
// make it publish as many messages. A server lists only streams it still
// runs (killed ones are left out), so the rest are killed at its next
// heartbeats.
const maxKillsPerHeartbeat = 64

// serverState is what a Client knows of one server: when it last heard
// from it and whether it stopped answering.
type serverState struct {
	subject   string
	lastHeard atomic.Int64 // monotime of the last message from it
	stalled   atomic.Bool
	streams   int   // open streams to it; guarded by Client.mu
	nextProbe int64 // monotime before which a stalled server gets no request; Client.mu
}

// heard records a message from the server.
func (c *Client) heard(srv *serverState, now int64) {
	srv.lastHeard.Store(now)
	if srv.stalled.Load() && srv.stalled.CompareAndSwap(true, false) {
		c.log.Info("natsplane: server answers again", "subject", srv.subject)
	}
}

// heartbeatAsk is the heartbeat timeout requests carry: servers heartbeat
// at a third of it, so a stall shows within StallTimeout.
func (c *Client) heartbeatAsk() time.Duration {
	if c.cfg.StallTimeout > 0 && (c.cfg.StallTimeout < c.cfg.HeartbeatTimeout || c.cfg.HeartbeatTimeout == 0) {
		return c.cfg.StallTimeout
	}
	return c.cfg.HeartbeatTimeout
}

// start subscribes to the inbox; c.mu is held.
func (c *Client) start() error {
	if c.sub != nil {
		return nil
	}
	if c.nc == nil {
		return errors.New("natsplane: Client has no NATS connection")
	}
	inbox := c.nc.NewInbox()
	c.inbox, c.prefix = inbox, inbox+"."
	sub, err := c.nc.Subscribe(inbox+".*", c.onMsg)
	if err != nil {
		c.inbox, c.prefix = "", ""
		return fmt.Errorf("%w: natsplane: subscribing to the reply inbox %s.*: %w", plane.ErrUnreachable, inbox, err)
	}
	c.sub = sub
	c.wg.Add(1)
	go c.watch()
	return nil
}

// Open opens a stream to the server on subject and sends req in one NATS
// message. The deadline of ctx travels with the request; ending ctx kills
// the stream. Open returns once the request is handed to the NATS
// connection, without waiting for the server: a subject nobody serves
// shows in Recv, at once, as NotFound before the first response (wrapping
// nats.ErrNoResponders).
//
// An error from Open means the request was not sent: it may be retried
// anywhere. It wraps plane.ErrTooLarge if the request does not fit in the
// connection's max payload, plane.ErrUnreachable if NATS refused it,
// ErrClientClosed after Close, and is a *plane.StreamError if ctx had ended.
func (c *Client) Open(ctx context.Context, subject string, req plane.Request) (*ClientStream, error) {
	if ctx.Err() != nil {
		return nil, ctxError(ctx, true)
	}
	o := openMsg{
		path: req.Path, codec: req.Codec, requestID: req.RequestID, traceParent: req.TraceParent, headers: req.Headers,
		heartbeat: c.heartbeatAsk(), credit: uint64(c.cfg.InitialWindow), hasCredit: true,
	}
	if dl, ok := ctx.Deadline(); ok {
		if o.timeout = time.Until(dl); o.timeout <= 0 {
			return nil, &plane.StreamError{Code: wire.CodeDeadlineExceeded, Message: "deadline passed before the request was sent", BeforeFirstResponse: true, Err: context.DeadlineExceeded}
		}
	}
	if err := checkSubject(subject); err != nil {
		return nil, err
	}
	if err := checkRequest(req.Path, req.Codec, req.RequestID, req.TraceParent, req.Headers); err != nil {
		return nil, fmt.Errorf("%w (subject %s)", err, subject)
	}

	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, ErrClientClosed
	}
	if err := c.start(); err != nil {
		c.mu.Unlock()
		return nil, err
	}
	now := monotime()
	srv := c.servers[subject]
	if srv == nil {
		srv = &serverState{subject: subject}
		srv.lastHeard.Store(now)
		c.servers[subject] = srv
	}
	if srv.stalled.Load() {
		if now < srv.nextProbe {
			c.mu.Unlock()
			return nil, fmt.Errorf("%w: %w: natsplane server at %s sent nothing for %v while requests waited on it (frozen or overloaded); one request a second goes to it until it answers",
				plane.ErrUnreachable, plane.ErrStalled, subject, c.cfg.StallTimeout)
		}
		srv.nextProbe = now + int64(StallProbeInterval)
	}
	srv.streams++
	c.nextID++
	st := &ClientStream{c: c, id: c.nextID, subject: subject, srv: srv, window: o.credit, opened: now}
	st.cond.L = &st.mu
	st.granted.Store(o.credit)
	st.lastHeard.Store(now)
	c.streams[st.id] = st
	o.inbox, o.stream = c.inbox, st.id
	c.mu.Unlock()

	h := encodeOpen(&o)
	if limit := int(c.nc.MaxPayload()); limit > 0 {
		if size := hdrSize(h) + len(req.Payload); size > limit {
			c.remove(st.id)
			return nil, fmt.Errorf("%w: natsplane request to %s on %s is %d bytes (payload %d, headers %d), above the NATS max payload of %d bytes; send less or raise max_payload on the NATS server",
				plane.ErrTooLarge, req.Path, subject, size, len(req.Payload), size-len(req.Payload), limit)
		}
	}
	err := c.nc.PublishMsg(&nats.Msg{Subject: subject, Reply: o.inbox + "." + strconv.FormatUint(st.id, 10), Header: h, Data: req.Payload})
	if err != nil {
		c.remove(st.id)
		if errors.Is(err, nats.ErrMaxPayload) {
			return nil, fmt.Errorf("%w: natsplane request to %s on %s: %w", plane.ErrTooLarge, req.Path, subject, err)
		}
		return nil, fmt.Errorf("%w: natsplane request to %s on %s: %w", plane.ErrUnreachable, req.Path, subject, err)
	}
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, func() { st.abort(ctxError(ctx, false)) })
		st.mu.Lock()
		ended := st.err != nil
		if !ended {
			st.stopWatch = stop
		}
		st.mu.Unlock()
		if ended {
			stop()
		}
	}
	return st, nil
}

// Close ends every open stream with a Reset that wraps ErrClientClosed
// (asking each server to kill it), unsubscribes and waits for the
// Client's goroutine. Open fails with ErrClientClosed afterwards.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	streams := make([]*ClientStream, 0, len(c.streams))
	for _, st := range c.streams {
		streams = append(streams, st)
	}
	sub := c.sub
	c.mu.Unlock()
	for _, st := range streams {
		st.fail(&plane.StreamError{Code: wire.CodeReset, Message: "client closed", Err: ErrClientClosed}, true)
	}
	if sub != nil {
		if err := sub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
			c.log.Warn("natsplane: unsubscribing the reply inbox failed", "subject", sub.Subject, "err", err)
		}
	}
	close(c.stop)
	c.wg.Wait()
	return nil
}

func (c *Client) lookup(id uint64) *ClientStream {
	c.mu.Lock()
	st := c.streams[id]
	c.mu.Unlock()
	return st
}

func (c *Client) remove(id uint64) {
	c.mu.Lock()
	if st := c.streams[id]; st != nil {
		delete(c.streams, id)
		srv := st.srv
		// A server with no stream left stays known until it has been
		// silent a while (see expire): its heartbeats may still list a
		// stream ended here, which is then killed again.
		srv.streams--
	}
	c.mu.Unlock()
}

// control sends a control message for stream id to the server on subject.
func (c *Client) control(subject, kind string, id, credit uint64) {
	c.mu.Lock()
	inbox := c.inbox
	c.mu.Unlock()
	h := encodeControl(ctlMsg{kind: kind, inbox: inbox, stream: id, credit: credit})
	if err := c.nc.PublishMsg(&nats.Msg{Subject: subject, Header: h}); err != nil {
		c.log.Debug("natsplane: sending control message failed", "subject", subject, "kind", kind, "stream", id, "err", err)
	}
}

// onMsg receives every message on the inbox. It runs on the
// subscription's goroutine and never blocks on a caller.
func (c *Client) onMsg(m *nats.Msg) {
	tok, ok := strings.CutPrefix(m.Subject, c.prefix)
	id, err := strconv.ParseUint(tok, 10, 64)
	if !ok || err != nil {
		c.log.Debug("natsplane: message on an unknown inbox subject dropped", "subject", m.Subject)
		return
	}
	if id == 0 {
		c.onHeartbeat(m)
		return
	}
	st := c.lookup(id)
	if st == nil {
		return // ended here already
	}
	if m.Header.Get(hdrStatus) == "503" {
		st.fail(&plane.StreamError{Code: wire.CodeNotFound, Message: "no server is subscribed to " + st.subject + " (NATS no responders)", Err: nats.ErrNoResponders}, false)
		return
	}
	now := monotime()
	st.lastHeard.Store(now)
	c.heard(st.srv, now)
	switch kind := m.Header.Get(hdrKind); kind {
	case kindData:
		seq, err := parseData(m.Header)
		if err != nil {
			st.fail(&plane.StreamError{Code: wire.CodeProtocol, Message: fmt.Sprintf("server at %s: %v", st.subject, err)}, true)
			return
		}
		st.push(seq, m.Data)
	case kindEnd:
		seq, code, msg, err := parseEnd(m.Header)
		if err != nil {
			st.fail(&plane.StreamError{Code: wire.CodeProtocol, Message: fmt.Sprintf("server at %s: %v", st.subject, err)}, true)
			return
		}
		st.end(seq, code, msg)
	default:
		c.log.Debug("natsplane: message of unknown kind dropped", "subject", m.Subject, "kind", kind)
	}
}

// onHeartbeat refreshes the streams a server lists, answers it, resends
// credit it missed and kills streams it still runs that ended here.
func (c *Client) onHeartbeat(m *nats.Msg) {
	if m.Header.Get(hdrKind) != kindHeartbeat {
		return
	}
	server, err := text(m.Header, hdrServer, 1<<16)
	if err == nil && server == "" {
		err = badMsg("heartbeat without %s", hdrServer)
	}
	var entries []hbEntry
	if err == nil {
		entries, err = parseHeartbeat(m.Data)
	}
	if err != nil {
		c.log.Debug("natsplane: bad heartbeat dropped", "err", err)
		return
	}
	type credit struct{ id, total uint64 }
	var resend []credit
	var kill []uint64
	now := monotime()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	srv := c.servers[server]
	if srv == nil {
		// Not a server this client called lately: anyone may publish
		// on the inbox, and answering would publish, with this
		// process's NATS permissions, wherever Loom-Server says.
		c.mu.Unlock()
		c.log.Debug("natsplane: heartbeat from a server this client has not called dropped", "server", server)
		return
	}
	c.heard(srv, now)
	for _, e := range entries {
		st := c.streams[e.id]
		if st == nil {
			if e.id <= c.nextID && len(kill) < maxKillsPerHeartbeat {
				kill = append(kill, e.id)
			}
			continue
		}
		if st.subject != server {
			continue
		}
		st.lastHeard.Store(now)
		if g := st.granted.Load(); e.blocked > 0 && g > e.blocked-1 {
			resend = append(resend, credit{e.id, g})
		}
	}
	c.mu.Unlock()
	c.control(server, kindPong, 0, 0)
	for _, r := range resend {
		c.control(server, kindCredit, r.id, r.total)
	}
	for _, id := range kill {
		c.control(server, kindKill, id, 0)
	}
}

// watch fails streams whose server went silent, and every stream once the
// NATS connection is closed.
func (c *Client) watch() {
	defer c.wg.Done()
	tick := time.Second
	if c.cfg.HeartbeatTimeout > 0 {
		tick = max(c.cfg.HeartbeatTimeout/4, time.Millisecond)
	}
	if c.cfg.StallTimeout > 0 {
		tick = max(min(tick, c.cfg.StallTimeout/4), time.Millisecond)
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	last := monotime()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			if c.nc.IsClosed() {
				c.expire(true)
				return
			}
			// A check that runs late says the process was not running,
			// not that servers went silent: what they sent meanwhile may
			// still wait in this process's buffers. No stall is judged
			// until the stall timeout has passed on time.
			now := monotime()
			if stall := int64(c.cfg.StallTimeout); stall > 0 && now-last > int64(tick)+stall/2 {
				c.lateUntil = now + stall
			}
			last = now
			c.expire(false)
		}
	}
}

// expire fails the streams whose server has been silent for the heartbeat
// timeout, or all of them if the connection is closed, and the streams
// waiting for their first response from a server silent for the stall
// timeout.
func (c *Client) expire(connClosed bool) {
	now, limit, stall := monotime(), int64(c.cfg.HeartbeatTimeout), int64(c.cfg.StallTimeout)
	var dead, waiting []*ClientStream
	var stalled []*serverState
	c.mu.Lock()
	for _, st := range c.streams {
		switch {
		case connClosed || (limit > 0 && now-st.lastHeard.Load() > limit):
			dead = append(dead, st)
		case stall > 0 && now >= c.lateUntil && !st.answered.Load() && now-st.opened > stall && now-st.srv.lastHeard.Load() > stall:
			waiting = append(waiting, st)
			if st.srv.stalled.CompareAndSwap(false, true) {
				st.srv.nextProbe = now + int64(StallProbeInterval)
				stalled = append(stalled, st.srv)
			}
		}
	}
	for subject, srv := range c.servers {
		// A server nobody has called or heard from for a while is
		// forgotten.
		if srv.streams == 0 && now-srv.lastHeard.Load() > int64(forgetServerAfter) {
			delete(c.servers, subject)
		}
	}
	c.mu.Unlock()
	// First the caller's view, so that the failed streams' retries
	// already avoid the server.
	if f := c.cfg.OnStall; f != nil {
		for _, srv := range stalled {
			f(srv.subject)
		}
	}
	for _, st := range waiting {
		cause := fmt.Errorf("%w: natsplane server at %s sent nothing for %v", plane.ErrStalled, st.subject, c.cfg.StallTimeout)
		if err := publishDenied(c.nc, st.subject); err != nil {
			cause = fmt.Errorf("%w: %w", plane.ErrStalled, err)
		}
		st.fail(&plane.StreamError{Code: wire.CodeReset, Message: cause.Error(), Err: cause}, true)
	}
	for _, srv := range stalled {
		if err := publishDenied(c.nc, srv.subject); err != nil {
			c.log.Error("natsplane: requests to a server failed: "+err.Error(), "subject", srv.subject)
			continue
		}
		n := 0
		for _, st := range waiting {
			if st.srv == srv {
				n++
			}
		}
		c.log.Warn("natsplane: server stopped answering; requests waiting for their first response failed, new ones go elsewhere",
			"subject", srv.subject, "silent_for", c.cfg.StallTimeout, "failed", n)
	}
	for _, st := range dead {
		if connClosed {
			st.fail(&plane.StreamError{Code: wire.CodeReset, Message: "the NATS connection of the client is closed", Err: ErrConnClosed}, false)
			continue
		}
		msg := fmt.Sprintf("no response or heartbeat from the server at %s for %v: it died, lost its NATS connection or lost the stream", st.subject, c.cfg.HeartbeatTimeout)
		if err := publishDenied(c.nc, st.subject); err != nil {
			msg = err.Error()
		}
		st.fail(&plane.StreamError{Code: wire.CodeReset, Message: msg, Err: ErrServerGone}, true)
	}
}

// publishDenied returns why a server at subject never heard this
// client, if the NATS server refused the client's publishes there: a
// user without publish permission gets no response, only an error the
// server reports to the connection.
func publishDenied(nc *nats.Conn, subject string) error {
	err := refused(nc, metrics.PermissionPublish, subject)
	if err == nil {
		return nil
	}
	return fmt.Errorf("natsplane: the NATS server refused this process's requests to %s (%v): its NATS user needs publish permission on %s (loom.rpc.> for every instance served over NATS)", subject, err, subject)
}

// refused returns the NATS server's refusal of this connection's op
// (metrics.PermissionPublish or PermissionSubscribe) on subject, if it is
// the last error the server reported to the connection: a refusal
// reaches nothing else.
func refused(nc *nats.Conn, op, subject string) error {
	err := nc.LastError()
	if kind, refused, ok := natsrefusal.Read(err); ok && kind == op && refused == subject {
		return err
	}
	return nil
}

var epoch = time.Now()

// monotime is a monotonic clock reading in nanoseconds.
func monotime() int64 { return int64(time.Since(epoch)) }

// ClientStream is the caller's side of one stream. Recv must be called
// from one goroutine at a time; Stop and Cancel may be called from any.
type ClientStream struct {
	c         *Client
	id        uint64
	subject   string
	srv       *serverState
	window    uint64
	opened    int64         // monotime of Open
	lastHeard atomic.Int64  // monotime of the last message from the server for this stream
	answered  atomic.Bool   // a response or the END arrived
	granted   atomic.Uint64 // cumulative credit granted, written by Recv

	mu        sync.Mutex
	cond      sync.Cond // Recv waits on it; L is &mu
	msgs      [][]byte  // received, not yet returned, from head
	head      int
	seq       uint64      // DATA messages received
	received  uint64      // their cumulative cost
	owed      uint64      // cost consumed and not yet granted back
	stopWatch func() bool // stops the context watch; nil without one
	err       error       // how the stream ended: io.EOF or a *plane.StreamError; nil while open
	abortNow  bool        // err is delivered before buffered messages
	responded bool
	waiting   bool
	stopSent  bool
}

// Recv returns the next response message. It returns io.EOF after the last
// one when the stream ended with OK, and otherwise a *plane.StreamError: the
// code and message the server ended it with, Cancelled or
// DeadlineExceeded (wrapping the context's error) when the caller ended
// it, NotFound (wrapping nats.ErrNoResponders) when nobody serves the
// subject, or Reset wrapping ErrServerGone, ErrMessageLost, ErrConnClosed
// or ErrClientClosed. BeforeFirstResponse is set when no message had
// arrived. Messages that arrived before an END or a failure are returned
// first.
//
// The returned slice belongs to the caller.
func (s *ClientStream) Recv() ([]byte, error) {
	s.mu.Lock()
	for {
		if s.abortNow {
			s.drop()
			err := s.err
			s.mu.Unlock()
			return nil, err
		}
		if s.head < len(s.msgs) {
			p := s.msgs[s.head]
			s.msgs[s.head] = nil
			s.head++
			if s.head == len(s.msgs) {
				s.msgs, s.head = s.msgs[:0], 0
			} else if s.head > 64 && 2*s.head > len(s.msgs) {
				n := copy(s.msgs, s.msgs[s.head:])
				clear(s.msgs[n:])
				s.msgs, s.head = s.msgs[:n], 0
			}
			var grant uint64
			s.owed += uint64(len(p)) + MessageOverhead
			if s.err == nil && s.owed >= max(s.window/2, 1) {
				grant = s.granted.Add(s.owed)
				s.owed = 0
			}
			s.mu.Unlock()
			if grant > 0 {
				s.c.control(s.subject, kindCredit, s.id, grant)
			}
			return p, nil
		}
		if s.err != nil {
			err := s.err
			s.mu.Unlock()
			return nil, err
		}
		s.waiting = true
		s.cond.Wait()
	}
}

// drop forgets buffered messages; s.mu is held.
func (s *ClientStream) drop() {
	clear(s.msgs)
	s.msgs, s.head = nil, 0
}

// Stop asks the server to finish the stream gracefully: the handler sees
// Stopped and ends the stream soon; Recv returns what it still sends,
// then the end.
func (s *ClientStream) Stop() {
	s.mu.Lock()
	send := s.err == nil && !s.stopSent
	s.stopSent = true
	s.mu.Unlock()
	if send {
		s.c.control(s.subject, kindStop, s.id, 0)
	}
}

// Cancel kills the stream: the server cancels the handler's context and
// sends nothing more, and Recv returns a Cancelled *plane.StreamError at
// once. It does nothing if the stream has already ended.
func (s *ClientStream) Cancel() {
	s.mu.Lock()
	ended := s.err != nil
	s.mu.Unlock()
	if !ended {
		s.abort(&plane.StreamError{Code: wire.CodeCancelled, Message: "cancelled by the caller"})
	}
}

// Close releases the stream, killing it if it has not ended. Call it when
// done with every stream, also after Recv returned an error, and not
// concurrently with Recv.
func (s *ClientStream) Close() error {
	s.Cancel()
	s.mu.Lock()
	s.drop()
	s.mu.Unlock()
	return nil
}

// Buffered reports whether Recv would return without waiting: a message
// or the stream's end has arrived and not yet been returned.
func (s *ClientStream) Buffered() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.head < len(s.msgs) || s.err != nil || s.abortNow
}

// Responded reports whether at least one response message has arrived.
func (s *ClientStream) Responded() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.responded
}

// wake wakes Recv; s.mu is held.
func (s *ClientStream) wake() {
	if s.waiting {
		s.waiting = false
		s.cond.Signal()
	}
}

// push queues a DATA message.
func (s *ClientStream) push(seq uint64, p []byte) {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return // ended here; the server will stop
	}
	var e *plane.StreamError
	switch {
	case seq != s.seq+1:
		e = &plane.StreamError{Code: wire.CodeReset, Err: ErrMessageLost,
			Message: fmt.Sprintf("response %d from the server at %s arrived after response %d: core NATS dropped the ones between (reconnect or slow consumer)", seq, s.subject, s.seq)}
	case s.received >= s.granted.Load():
		e = &plane.StreamError{Code: wire.CodeProtocol, Message: fmt.Sprintf("the server at %s sent a response without credit", s.subject)}
	default:
		s.seq = seq
		s.received += uint64(len(p)) + MessageOverhead
		s.msgs = append(s.msgs, p)
		s.responded = true
		s.answered.Store(true)
		s.wake()
	}
	s.mu.Unlock()
	if e != nil {
		s.fail(e, true)
	}
}

// end records the server's END.
func (s *ClientStream) end(seq uint64, code wire.Code, msg string) {
	s.c.remove(s.id) // first: a caller that has the end finds the stream forgotten
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return
	}
	switch {
	case seq != s.seq:
		s.err = &plane.StreamError{Code: wire.CodeReset, Err: ErrMessageLost, BeforeFirstResponse: !s.responded,
			Message: fmt.Sprintf("the server at %s ended the stream after %d responses, %d arrived: core NATS dropped the others (reconnect or slow consumer)", s.subject, seq, s.seq)}
	case code == wire.CodeOK:
		s.err = io.EOF
	default:
		s.err = &plane.StreamError{Code: code, Message: msg, BeforeFirstResponse: !s.responded}
	}
	s.wake()
	s.mu.Unlock()
	s.unwatch()
}

// fail ends the stream with e from this side, after the messages already
// buffered; kill asks the server to kill it too.
func (s *ClientStream) fail(e *plane.StreamError, kill bool) {
	s.c.remove(s.id)
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return
	}
	e.BeforeFirstResponse = !s.responded
	s.err = e
	s.wake()
	s.mu.Unlock()
	if kill {
		s.c.control(s.subject, kindKill, s.id, 0)
	}
	s.unwatch()
}

// abort kills the stream from this side: Recv returns e at once.
func (s *ClientStream) abort(e *plane.StreamError) {
	s.c.remove(s.id)
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return
	}
	e.BeforeFirstResponse = !s.responded
	s.err, s.abortNow = e, true
	s.wake()
	s.mu.Unlock()
	s.c.control(s.subject, kindKill, s.id, 0)
	s.unwatch()
}

func (s *ClientStream) unwatch() {
	s.mu.Lock()
	stop := s.stopWatch
	s.stopWatch = nil
	s.mu.Unlock()
	if stop != nil {
		stop()
	}
}
