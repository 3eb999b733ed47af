package natsplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/internal/latch"
	"github.com/loomrt/loom/internal/plane"
	"github.com/loomrt/loom/internal/wire"
	"github.com/loomrt/loom/metrics"
)

// Defaults for the zero values of ServerConfig and ClientConfig.
const (
	DefaultMaxConcurrentStreams = plane.DefaultMaxConcurrentStreams
	DefaultQueueSize            = plane.DefaultQueueSize
	DefaultHeartbeatInterval    = time.Second
	DefaultHeartbeatTimeout     = 5 * time.Second
	DefaultInitialWindow        = plane.DefaultInitialWindow
	// MinHeartbeatInterval is the shortest heartbeat period a server
	// uses, whatever its config or a caller asks for.
	MinHeartbeatInterval = 10 * time.Millisecond
)

// subscribeTimeout bounds the round trip NewServer makes so that its
// subscription is in place when it returns.
const subscribeTimeout = 10 * time.Second

// ServerConfig configures a Server. The zero value works.
type ServerConfig struct {
	// MaxConcurrentStreams is how many handlers may run at once. Default
	// DefaultMaxConcurrentStreams.
	MaxConcurrentStreams int
	// QueueSize is how many streams may wait for a running slot. A
	// request that finds MaxConcurrentStreams running and QueueSize
	// waiting is answered at once with END Overloaded. Default
	// DefaultQueueSize; negative means no queue.
	QueueSize int
	// MaxStreamsPerCaller is how many streams, running and queued, one
	// caller (one client inbox) may hold, so that one caller cannot take
	// every handler slot. A stream the caller killed counts until its
	// handler returns. Default MaxConcurrentStreams/2 when that is at
	// least 64; negative means no limit. Queued requests hold at most
	// plane.DefaultMaxQueuedBytes, running ones MaxRunningBytes.
	MaxStreamsPerCaller int
	// MaxRunningBytes bounds the request bytes held by running streams.
	// Default plane.DefaultMaxRunningBytes.
	MaxRunningBytes int
	// MaxPayload is the largest NATS message the server sends, headers
	// included; a larger response fails in Send with plane.ErrTooLarge.
	// Default and upper bound: the connection's nc.MaxPayload(), read at
	// each Send (it follows the NATS server the connection is on).
	MaxPayload int
	// HeartbeatInterval is how often the server sends each caller with
	// open streams a heartbeat listing them. A caller that asks for a
	// shorter heartbeat timeout gets heartbeats at a third of it.
	// Default DefaultHeartbeatInterval; at least MinHeartbeatInterval.
	HeartbeatInterval time.Duration
	// ClientTimeout is how long a caller with open streams may stay
	// silent (it answers every heartbeat) before its streams are killed
	// with cause ErrCallerGone. Default and minimum 3 heartbeat
	// intervals; default 5 intervals.
	ClientTimeout time.Duration
	// InitialWindow is the credit in bytes given to a stream whose
	// request announces none (a caller that is not a natsplane Client,
	// such as `nats request`). Such a caller cannot grant more: once its
	// stream has used this credit it is killed with ErrCallerGone at the
	// next heartbeat round. Default DefaultInitialWindow.
	InitialWindow int
	// Logger receives server-level events. Default slog.Default().
	Logger *slog.Logger
	// OnLimit, if set, is called with "max_streams_per_conn" when a
	// caller is refused for holding its share of streams; for metrics.
	OnLimit func(limit string)
}

func (c *ServerConfig) setDefaults() {
	if c.MaxConcurrentStreams <= 0 {
		c.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	if c.QueueSize == 0 {
		c.QueueSize = DefaultQueueSize
	}
	// Negative stays negative: plane.Limits reads 0 as its default, and
	// negative as no queue.
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = DefaultHeartbeatInterval
	}
	c.HeartbeatInterval = max(c.HeartbeatInterval, MinHeartbeatInterval)
	if c.ClientTimeout <= 0 {
		c.ClientTimeout = 5 * c.HeartbeatInterval
	}
	c.ClientTimeout = max(c.ClientTimeout, 3*c.HeartbeatInterval)
	if c.InitialWindow <= 0 {
		c.InitialWindow = DefaultInitialWindow
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Handler serves streams.
type Handler interface {
	// ServeStream runs once per stream, in its own goroutine. It reads
	// the request from s, sends responses with s.Send, and returns to end
	// the stream: nil ends it with OK, a *plane.StreamError with its code
	// and message, any other error with Application and the error's
	// text. A panic ends it with Internal. Nothing is sent if the stream
	// was killed (by the caller, Server.Close or a lost caller).
	ServeStream(s *ServerStream) error
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(s *ServerStream) error

// ServeStream calls f(s).
func (f HandlerFunc) ServeStream(s *ServerStream) error { return f(s) }

// Server serves streams on one NATS subject. Its methods are safe for
// concurrent use.
type Server struct {
	nc       *nats.Conn
	subject  string
	cfg      ServerConfig
	h        Handler
	log      *slog.Logger
	sub      *nats.Subscription
	hbServer []string // Loom-Server value of heartbeats

	mu       sync.Mutex
	peers    map[string]*peer // by caller inbox (foreignKey of the reply subject for foreign callers)
	draining bool
	closed   bool
	adm      *plane.Admission[*ServerStream]

	handlers sync.WaitGroup // runStreams goroutines
	hbWake   chan struct{}
	hbStop   chan struct{}
	hbDone   chan struct{}
	stopOnce sync.Once
}

// peer is one caller, a Client's inbox, with streams on this server.
type peer struct {
	key       string
	streams   map[uint64]*ServerStream // open streams, running or queued
	every     time.Duration            // heartbeat period; 0: no heartbeats (foreign caller)
	nextHB    time.Time
	lastHeard time.Time
	adm       plane.Peer // its streams in admission
}

// NewServer subscribes to subject on nc and runs h for every stream
// opened there. The subject is the server's address (one per instance,
// "loom.rpc.<instance hex>" for example); it must not hold wildcards.
// NewServer returns once the NATS server has the subscription, so a
// request sent after it returns finds the server. The Server does not own
// nc: closing nc kills its streams, and closing the Server leaves nc open.
func NewServer(nc *nats.Conn, subject string, cfg ServerConfig, h Handler) (*Server, error) {
	if nc == nil || h == nil {
		return nil, errors.New("natsplane: NewServer needs a NATS connection and a handler")
	}
	if err := checkSubject(subject); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	s := &Server{
		nc:       nc,
		subject:  subject,
		cfg:      cfg,
		h:        h,
		log:      cfg.Logger,
		hbServer: []string{escapeValue(subject)},
		peers:    map[string]*peer{},
		adm: plane.NewAdmission(plane.Limits{
			MaxRunning:      cfg.MaxConcurrentStreams,
			QueueSize:       cfg.QueueSize,
			MaxRunningBytes: cfg.MaxRunningBytes,
			MaxPerPeer:      cfg.MaxStreamsPerCaller,
		}, (*ServerStream).isKilled, (*ServerStream).discard),
		hbWake: make(chan struct{}, 1),
		hbStop: make(chan struct{}),
		hbDone: make(chan struct{}),
	}
	sub, err := nc.Subscribe(subject, s.onMsg)
	if err != nil {
		return nil, fmt.Errorf("natsplane: serving on subject %s: %w", subject, err)
	}
	if err := nc.FlushTimeout(subscribeTimeout); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("natsplane: serving on subject %s: the NATS server did not confirm the subscription: %w", subject, err)
	}
	// A refused subscription is reported to the connection, before the
	// flush's answer, and the subscription stays in place receiving
	// nothing.
	if err := refused(nc, metrics.PermissionSubscribe, subject); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("natsplane: serving on subject %s: the NATS server refused the subscription (%w): this process's NATS user needs subscribe permission on %s (loom.rpc.> for every instance served over NATS)", subject, err, subject)
	}
	s.sub = sub
	go s.heartbeatLoop()
	return s, nil
}

// checkSubject accepts a subject a server may subscribe to and a client
// may publish to: non-empty tokens, no wildcards, no white space.
func checkSubject(subject string) error {
	if subject == "" {
		return errors.New("natsplane: subject is empty")
	}
	if strings.ContainsAny(subject, " \t\r\n") {
		return fmt.Errorf("natsplane: subject %q holds white space", subject)
	}
	for tok := range strings.SplitSeq(subject, ".") {
		switch tok {
		case "":
			return fmt.Errorf("natsplane: subject %q has an empty token", subject)
		case "*", ">":
			return fmt.Errorf("natsplane: subject %q holds the wildcard %q; serve and call one literal subject per instance", subject, tok)
		}
	}
	return nil
}

// Address returns the subject the server serves on.
func (s *Server) Address() string { return s.subject }

// Shutdown drains the server gracefully. From its call on, new requests
// are answered with END Draining (retryable elsewhere). It waits until
// every stream accepted before has ended: its handler has returned and
// its END has been handed to the NATS connection, queued streams
// included; then it unsubscribes (answering requests already on their way
// with END Draining), stops the heartbeats and returns nil.
// Control messages (credit, stop, kill) keep arriving while it waits. If
// ctx ends first, Shutdown calls Close, which kills the remaining
// streams, and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	s.mu.Unlock()
	select {
	case <-s.adm.Idle():
		s.handlers.Wait()
		s.stop()
		return nil
	case <-ctx.Done():
		s.Close()
		return ctx.Err()
	}
}

// Close stops the server at once: it unsubscribes (answering requests
// already on their way with END Draining), stops the heartbeats and kills
// every stream (handler contexts are cancelled with cause
// ErrServerClosed), telling each caller with END Reset. It does not wait
// for handlers to return.
func (s *Server) Close() error {
	s.mu.Lock()
	s.draining, s.closed = true, true
	s.mu.Unlock()
	s.stop()
	s.killAll(ErrServerClosed, "server at "+s.subject+" closed")
	return nil
}

// stop drains the subscription, so that every request the NATS server
// routed here before it took the unsubscription is answered (with END
// Draining), and stops the heartbeats.
func (s *Server) stop() {
	s.stopOnce.Do(func() {
		closed := s.sub.StatusChanged(nats.SubscriptionClosed)
		if err := s.sub.Drain(); err == nil {
			deadline := time.NewTimer(subscribeTimeout)
			tick := time.NewTicker(20 * time.Millisecond)
		wait:
			for {
				select {
				case <-closed:
					break wait
				case <-tick.C:
					if s.nc.IsClosed() {
						break wait
					}
				case <-deadline.C:
					s.log.Warn("natsplane: draining the subscription did not finish; giving up", "subject", s.subject, "after", subscribeTimeout)
					_ = s.sub.Unsubscribe()
					break wait
				}
			}
			deadline.Stop()
			tick.Stop()
		} else if !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
			s.log.Warn("natsplane: draining the subscription failed", "subject", s.subject, "err", err)
			_ = s.sub.Unsubscribe()
		}
		close(s.hbStop)
		<-s.hbDone
	})
}

// killAll kills every stream with cause; a non-empty msg is sent to each
// caller in END Reset.
func (s *Server) killAll(cause error, msg string) {
	s.mu.Lock()
	var all []*ServerStream
	for _, p := range s.peers {
		for _, st := range p.streams {
			all = append(all, st)
		}
	}
	clear(s.peers)
	s.mu.Unlock()
	for _, st := range all {
		if st.kill(cause) && msg != "" {
			st.publishEnd(wire.CodeReset, msg)
		}
	}
}

func (s *Server) maxPayload() int {
	n := int(s.nc.MaxPayload())
	if s.cfg.MaxPayload > 0 && (n <= 0 || s.cfg.MaxPayload < n) {
		n = s.cfg.MaxPayload
	}
	if n <= 0 {
		n = 1 << 20 // not connected yet: the NATS default
	}
	return n
}

func (s *Server) publish(subject string, h nats.Header, data []byte) error {
	return s.nc.PublishMsg(&nats.Msg{Subject: subject, Header: h, Data: data})
}

// onMsg receives every message on the subject. It runs on the
// subscription's goroutine and never blocks on a handler.
func (s *Server) onMsg(m *nats.Msg) {
	if len(m.Header[hdrStatus]) > 0 {
		return // a status message, not from a caller
	}
	switch kind := m.Header.Get(hdrKind); kind {
	case kindOpen, "":
		s.handleOpen(m)
	case kindStop, kindKill, kindCredit, kindPong:
		s.handleControl(kind, m)
	default:
		s.log.Debug("natsplane: message of unknown kind dropped", "subject", s.subject, "kind", kind)
	}
}

func (s *Server) handleOpen(m *nats.Msg) {
	if m.Reply == "" {
		s.log.Debug("natsplane: request without a reply subject dropped", "subject", s.subject)
		return
	}
	o, err := parseOpen(m.Header, m.Reply)
	if err != nil {
		code := wire.CodeBadRequest
		if _, ok := errors.AsType[*versionError](err); ok {
			code = wire.CodeProtocol
		}
		s.endNow(m.Reply, code, err.Error())
		return
	}
	now := time.Now()
	st := newServerStream(s, o, m.Reply, m.Data, now)
	key := o.inbox
	if key == "" {
		key = foreignKey(m.Reply)
	}

	s.mu.Lock()
	if s.draining {
		closed := s.closed
		s.mu.Unlock()
		st.release()
		if closed {
			s.endNow(m.Reply, wire.CodeDraining, "server at "+s.subject+" is closed; retry on another instance")
		} else {
			s.endNow(m.Reply, wire.CodeDraining, "server at "+s.subject+" is draining; retry on another instance")
		}
		return
	}
	p := s.peers[key]
	wake := false
	if p == nil {
		p = &peer{key: key, streams: map[uint64]*ServerStream{}}
		s.peers[key] = p
	}
	p.lastHeard = now
	if o.inbox != "" {
		every := s.cfg.HeartbeatInterval
		if o.heartbeat > 0 {
			every = max(min(every, o.heartbeat/3), MinHeartbeatInterval)
		}
		if p.every == 0 || every < p.every {
			p.every, p.nextHB, wake = every, now.Add(every), true
		}
	}
	if _, dup := p.streams[o.stream]; dup {
		s.mu.Unlock()
		st.release()
		s.log.Debug("natsplane: duplicate request dropped", "subject", s.subject, "reply", m.Reply)
		return
	}
	st.peer = p
	res, refused := s.adm.Admit(st, len(st.payload), &p.adm)
	if res == plane.Run || res == plane.Queued {
		p.streams[o.stream] = st
	} else if len(p.streams) == 0 {
		delete(s.peers, key)
	}
	s.mu.Unlock()

	if wake {
		select {
		case s.hbWake <- struct{}{}:
		default:
		}
	}
	switch res {
	case plane.Run:
		s.start(st)
	case plane.Queued:
		for {
			next, _, _, ok := s.adm.Claim()
			if !ok {
				break
			}
			s.start(next)
		}
	default:
		if res == plane.RefusedPeer {
			if s.cfg.OnLimit != nil {
				s.cfg.OnLimit("max_streams_per_conn")
			}
			s.log.Warn("natsplane: caller holds its share of handler slots; refusing its new stream", "subject", s.subject, "caller", key, "streams", p.adm.Streams())
		}
		st.state = stateEnded
		st.publishEnd(wire.CodeOverloaded, "server at "+s.subject+" is "+refused)
		st.release()
	}
}

// foreignKey is the peers key of a caller that is not a natsplane Client,
// by its reply subject. A space, which no subject holds, sets it apart
// from every Client's inbox: filed with a Client's streams, such a
// caller's stream 0 would be listed in that Client's heartbeats.
func foreignKey(reply string) string { return " " + reply }

// start runs st, then the queued streams its slot passes to, in a new
// goroutine.
func (s *Server) start(st *ServerStream) {
	s.handlers.Add(1)
	go s.runStreams(st)
}

// endNow answers a request that never became a stream.
func (s *Server) endNow(reply string, code wire.Code, msg string) {
	if err := s.publish(reply, encodeEnd(0, code, msg), nil); err != nil {
		s.log.Debug("natsplane: sending END failed", "reply", reply, "err", err)
	}
}

func (s *Server) handleControl(kind string, m *nats.Msg) {
	c, err := parseControl(kind, m.Header)
	if err != nil {
		s.log.Debug("natsplane: bad control message dropped", "subject", s.subject, "err", err)
		return
	}
	var st *ServerStream
	s.mu.Lock()
	if p := s.peers[c.inbox]; p != nil {
		p.lastHeard = time.Now()
		if kind != kindPong {
			st = p.streams[c.stream]
		}
		// A killed stream stays its caller's until its handler returns
		// (or, queued, it is dropped): it holds its slot until then, and
		// counts against the caller's share, as on the TCP plane.
	}
	s.mu.Unlock()
	if st == nil {
		return // ended already, or a pong
	}
	switch kind {
	case kindStop:
		st.stop.Fire()
	case kindKill:
		st.kill(errKilled)
	case kindCredit:
		st.addCredit(c.credit)
	}
}

// runStreams runs st, then queued streams, in one goroutine: a finishing
// handler hands its slot to the next waiting stream.
func (s *Server) runStreams(st *ServerStream) {
	defer s.handlers.Done()
	for ok := true; ok; {
		st.serve(s.h)
		st, _, _, ok = s.adm.Done(len(st.payload), &st.peer.adm)
	}
}

// removeStream forgets st once it has ended.
func (s *Server) removeStream(st *ServerStream) {
	s.mu.Lock()
	if p := st.peer; p != nil && p.streams[st.id] == st {
		delete(p.streams, st.id)
		if len(p.streams) == 0 && s.peers[p.key] == p {
			delete(s.peers, p.key)
		}
	}
	s.mu.Unlock()
}

func (s *Server) heartbeatLoop() {
	defer close(s.hbDone)
	t := time.NewTimer(s.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-s.hbStop:
			return
		case <-s.hbWake:
		case <-t.C:
		}
		if s.nc.IsClosed() {
			// For good: kill what is left and stop ticking.
			s.killAll(ErrConnClosed, "")
			return
		}
		t.Reset(s.heartbeat(time.Now()))
	}
}

// heartbeat sends the heartbeats that are due, kills the streams of
// callers gone silent, and returns how long to wait for the next round.
func (s *Server) heartbeat(now time.Time) time.Duration {
	limit := s.maxPayload() - 128 - len(s.hbServer[0]) - maxHeartbeatEntry
	var out []*nats.Msg
	var gone []*ServerStream
	wait := s.cfg.HeartbeatInterval
	s.mu.Lock()
	for key, p := range s.peers {
		if p.every == 0 {
			// A caller that is not a natsplane Client cannot grant
			// credit: a stream of its that ran out never will continue.
			for _, st := range p.streams {
				if st.blocked.Load() != 0 {
					gone = append(gone, st)
				}
			}
			continue
		}
		if now.Sub(p.lastHeard) > s.cfg.ClientTimeout {
			s.log.Warn("natsplane: caller stopped answering heartbeats; killing its streams", "subject", s.subject, "inbox", key, "streams", len(p.streams), "silent", now.Sub(p.lastHeard).Round(time.Millisecond))
			for _, st := range p.streams {
				gone = append(gone, st)
			}
			delete(s.peers, key)
			continue
		}
		if !now.Before(p.nextHB) {
			var data []byte
			for id, st := range p.streams {
				if st.killed.Load() {
					continue // ended for the caller; its handler runs on
				}
				if len(data) > limit {
					out = append(out, s.heartbeatMsg(key, data))
					data = nil
				}
				data = appendHeartbeat(data, id, st.blocked.Load())
			}
			out = append(out, s.heartbeatMsg(key, data))
			p.nextHB = now.Add(p.every)
		}
		wait = min(wait, p.nextHB.Sub(now))
	}
	s.mu.Unlock()
	for _, m := range out {
		if err := s.nc.PublishMsg(m); err != nil {
			s.log.Debug("natsplane: sending heartbeat failed", "subject", m.Subject, "err", err)
		}
	}
	for _, st := range gone {
		st.kill(ErrCallerGone)
	}
	return max(wait, time.Millisecond)
}

func (s *Server) heartbeatMsg(inbox string, data []byte) *nats.Msg {
	return &nats.Msg{Subject: inbox + ".0", Header: nats.Header{hdrKind: valHeartbeat, hdrServer: s.hbServer}, Data: data}
}

// Server stream states.
const (
	stateOpen   = iota
	stateEnded  // END sent or being sent
	stateKilled // killed: nothing more is sent
)

// ServerStream is the server's side of one stream: the request and the
// means to answer it. Its methods are safe for concurrent use.
type ServerStream struct {
	srv      *Server
	peer     *peer // set under srv.mu before the stream is visible
	id       uint64
	reply    string
	o        openMsg
	payload  []byte
	deadline time.Time
	ctx      context.Context
	cancel   context.CancelCauseFunc
	stopDL   context.CancelFunc // stops the deadline timer; nil without a deadline
	blocked  atomic.Uint64      // 1 + granted while Send waits for credit, else 0; for heartbeats
	killed   atomic.Bool        // state is stateKilled; for heartbeats

	sendMu sync.Mutex // held while publishing, so DATA and END go out in seq order
	seq    uint64     // DATA messages published; guarded by sendMu

	mu       sync.Mutex
	state    int
	granted  uint64 // cumulative credit the caller granted, in bytes
	sent     uint64 // cumulative cost of the DATA sent
	waiting  bool
	creditCh chan struct{}
	stop     latch.Latch // a graceful stop was asked
}

func newServerStream(s *Server, o openMsg, reply string, payload []byte, now time.Time) *ServerStream {
	st := &ServerStream{srv: s, id: o.stream, reply: reply, o: o, payload: payload, granted: uint64(s.cfg.InitialWindow)}
	if o.hasCredit {
		st.granted = o.credit
	}
	st.ctx, st.cancel = context.WithCancelCause(context.Background())
	if o.timeout > 0 {
		st.deadline = now.Add(o.timeout)
		st.ctx, st.stopDL = context.WithDeadline(st.ctx, st.deadline)
	}
	return st
}

// ID returns the stream id, unique among its caller's streams; 0 for a
// caller that is not a natsplane Client.
func (s *ServerStream) ID() uint64 { return s.id }

// Path returns the endpoint path the caller asked for.
func (s *ServerStream) Path() string { return s.o.path }

// Codec returns the name of the payload encoding, or "".
func (s *ServerStream) Codec() string { return s.o.codec }

// RequestID returns the request id the caller sent, or "".
func (s *ServerStream) RequestID() string { return s.o.requestID }

// TraceParent returns the W3C traceparent the caller sent, or "".
func (s *ServerStream) TraceParent() string { return s.o.traceParent }

// Header returns the value of the request header key, or "".
func (s *ServerStream) Header(key string) string { return s.o.headers[key] }

// Headers returns a new map of the request headers.
func (s *ServerStream) Headers() map[string]string {
	m := make(map[string]string, len(s.o.headers))
	for k, v := range s.o.headers {
		m[k] = v
	}
	return m
}

// Deadline returns the stream's deadline, computed from the timeout the
// caller sent when the request arrived, and whether there is one.
func (s *ServerStream) Deadline() (time.Time, bool) { return s.deadline, !s.deadline.IsZero() }

// Payload returns the request. It belongs to the handler.
func (s *ServerStream) Payload() []byte { return s.payload }

// Context returns the stream's context. It is cancelled when the caller
// kills the stream (cancelling its context, Cancel or Close before the
// end), at the deadline, when the caller stops answering heartbeats
// (ErrCallerGone), when the server's NATS connection closes
// (ErrConnClosed) and on Server.Close (ErrServerClosed); context.Cause
// says which. It is not cancelled by a graceful stop: see Stopped.
func (s *ServerStream) Context() context.Context { return s.ctx }

// DerivedContext reports whether Context descends from a context the
// server was given for the stream's path; on NATS it never does.
func (s *ServerStream) DerivedContext() bool { return false }

// Stopped returns a channel closed when the caller asks the stream to
// stop gracefully. The handler should finish soon and return normally;
// its Sends still work.
func (s *ServerStream) Stopped() <-chan struct{} {
	return s.stop.Done()
}

// Send sends p as one response message (one NATS message); the caller's
// Recv returns it whole. It returns once the message is handed to the
// NATS connection, without waiting for the network. It blocks while the
// stream is out of credit: the caller has not consumed enough of what was
// sent (each message costs len(p) + MessageOverhead bytes of credit). It
// fails once the stream has been killed or has ended (the error is the
// context's cause, or plane.ErrStreamDone), with an error that wraps
// plane.ErrTooLarge if p does not fit in the NATS max payload, and with the
// connection's error if NATS refuses the message.
func (s *ServerStream) Send(p []byte) error {
	if limit := s.srv.maxPayload(); len(p)+dataHeaderMax > limit {
		return fmt.Errorf("%w: natsplane response of %d bytes on %s, above the NATS max payload of %d bytes less %d for headers",
			plane.ErrTooLarge, len(p), s.Path(), limit, dataHeaderMax)
	}
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	s.mu.Lock()
	for s.sent >= s.granted && s.state == stateOpen {
		if s.creditCh == nil {
			s.creditCh = make(chan struct{}, 1)
		}
		s.waiting = true
		s.blocked.Store(s.granted + 1)
		ch := s.creditCh
		s.mu.Unlock()
		select {
		case <-ch:
		case <-s.ctx.Done():
			s.blocked.Store(0)
			return context.Cause(s.ctx)
		}
		s.mu.Lock()
	}
	s.blocked.Store(0)
	if s.state != stateOpen {
		s.mu.Unlock()
		if s.ctx.Err() != nil {
			return context.Cause(s.ctx)
		}
		return plane.ErrStreamDone
	}
	s.sent += uint64(len(p)) + MessageOverhead
	s.mu.Unlock()
	if s.ctx.Err() != nil {
		return context.Cause(s.ctx)
	}
	s.seq++
	h := nats.Header{hdrKind: valData, hdrSeq: {strconv.FormatUint(s.seq, 10)}}
	if err := s.srv.publish(s.reply, h, p); err != nil {
		s.seq-- // not sent: the next message takes its number
		if errors.Is(err, nats.ErrConnectionClosed) {
			s.kill(ErrConnClosed)
		}
		return fmt.Errorf("natsplane: sending a response on %s to %s: %w", s.Path(), s.reply, err)
	}
	return nil
}

// addCredit records the caller's cumulative credit.
func (s *ServerStream) addCredit(total uint64) {
	s.mu.Lock()
	if total <= s.granted {
		s.mu.Unlock()
		return // old or repeated
	}
	s.granted = total
	wake := s.waiting
	s.waiting = false
	s.mu.Unlock()
	if wake {
		select {
		case s.creditCh <- struct{}{}:
		default:
		}
	}
}

func (s *ServerStream) isKilled() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state == stateKilled
}

// kill stops the stream without sending anything more on it; it reports
// whether the stream was open.
func (s *ServerStream) kill(cause error) bool {
	s.mu.Lock()
	open := s.state == stateOpen
	if open {
		s.state = stateKilled
		s.killed.Store(true)
	}
	s.mu.Unlock()
	s.cancel(cause)
	return open
}

// discard drops a killed stream that never ran, from the queue.
func (s *ServerStream) discard() {
	s.srv.removeStream(s)
	s.release()
}

func (s *ServerStream) release() {
	s.cancel(plane.ErrStreamDone)
	if s.stopDL != nil {
		s.stopDL()
	}
}

func (s *ServerStream) publishEnd(code wire.Code, msg string) {
	s.sendMu.Lock()
	err := s.srv.publish(s.reply, encodeEnd(s.seq, code, msg), nil)
	s.sendMu.Unlock()
	if err != nil {
		s.srv.log.Debug("natsplane: sending END failed", "path", s.Path(), "reply", s.reply, "err", err)
	}
}

// serve runs the handler and ends the stream.
func (s *ServerStream) serve(h Handler) {
	var err error
	panicked := false
	if s.ctx.Err() == nil {
		err, panicked = s.call(h)
	}
	s.mu.Lock()
	open := s.state == stateOpen
	if open {
		s.state = stateEnded
	}
	wake := s.waiting // a Send left running by the handler
	s.waiting = false
	s.mu.Unlock()
	if wake {
		select {
		case s.creditCh <- struct{}{}:
		default:
		}
	}
	if open {
		code, msg := s.status(err, panicked)
		s.publishEnd(code, msg)
	}
	s.srv.removeStream(s)
	s.release()
}

func (s *ServerStream) call(h Handler) (err error, panicked bool) {
	defer func() {
		if r := recover(); r != nil {
			err, panicked = fmt.Errorf("handler for %s panicked: %v", s.Path(), r), true
			s.srv.log.Error("natsplane: handler panicked", "path", s.Path(), "request_id", s.RequestID(), "panic", r, "stack", string(debug.Stack()))
		}
	}()
	return h.ServeStream(s), false
}

func (s *ServerStream) status(err error, panicked bool) (wire.Code, string) {
	return plane.EndStatus(err, panicked, s.ctx.Err(), s.o.timeout)
}
