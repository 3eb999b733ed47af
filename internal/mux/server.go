package mux

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/loomrt/loom/internal/latch"
	"github.com/loomrt/loom/internal/plane"
	"github.com/loomrt/loom/internal/wire"
)

// Defaults for the zero values of ServerConfig and ClientConfig.
const (
	DefaultMaxConcurrentStreams = plane.DefaultMaxConcurrentStreams
	DefaultQueueSize            = plane.DefaultQueueSize
	DefaultKeepaliveInterval    = 5 * time.Second
	DefaultKeepaliveTimeout     = 5 * time.Second
	// DefaultFrameTimeout bounds how long one frame may take to arrive
	// whole once its first byte has.
	DefaultFrameTimeout = 10 * time.Second
	// DefaultMaxConns is how many connections a Server holds at once.
	DefaultMaxConns = 4096
	// DefaultMaxQueuedPongs is how many PONGs may wait unwritten on a
	// connection before its peer, which sends PINGs without reading, is
	// dropped.
	DefaultMaxQueuedPongs = 256
	// DefaultIdleTimeout is how long a connection may hold no stream
	// before the server asks its client to close it.
	DefaultIdleTimeout = 5 * time.Minute
)

func frameTimeoutDefault(d time.Duration) time.Duration {
	switch {
	case d < 0:
		return 0
	case d == 0:
		return DefaultFrameTimeout
	}
	return d
}

// ServerConfig configures a Server. The zero value works.
type ServerConfig struct {
	// MaxFrameSize is the largest frame the server accepts, so the
	// largest OPEN (request plus its header). Default
	// wire.DefaultMaxFrameSize (4 MiB).
	MaxFrameSize int
	// MaxConcurrentStreams is how many handlers may run at once, over
	// all connections. Default DefaultMaxConcurrentStreams.
	MaxConcurrentStreams int
	// QueueSize is how many streams may wait for a running slot. A
	// stream that finds MaxConcurrentStreams running and QueueSize
	// waiting is refused at once with END Overloaded. Default
	// DefaultQueueSize; negative means no queue.
	QueueSize int
	// MaxStreamsPerConn is how many streams, running and queued, one
	// connection may hold, so that one client cannot take every handler
	// slot. Default MaxConcurrentStreams/2 when that is at least 64;
	// negative means no limit.
	MaxStreamsPerConn int
	// MaxRunningBytes bounds the request bytes held by running streams;
	// a stream beyond it waits in the queue. Default
	// plane.DefaultMaxRunningBytes.
	MaxRunningBytes int
	// KeepaliveInterval is how long a connection may be silent before
	// the server sends a PING; KeepaliveTimeout is how long it then
	// waits for any byte, and how long a write may block (up to half as
	// long again), before it drops the connection and kills its streams. Defaults
	// DefaultKeepaliveInterval and DefaultKeepaliveTimeout; a negative
	// interval disables keepalive.
	KeepaliveInterval, KeepaliveTimeout time.Duration
	// TLS, if set, makes the server speak TLS; set ClientAuth and
	// ClientCAs in it for mutual TLS.
	TLS *tls.Config
	// Logger receives connection-level events. Default slog.Default().
	Logger *slog.Logger
	// MaxConns is how many connections the server holds at once; one
	// accepted beyond it is closed at once. Default DefaultMaxConns;
	// negative: no limit.
	MaxConns int
	// FrameTimeout bounds how long a frame may take to arrive whole once
	// its first byte has: a peer trickling bytes is dropped. Time between
	// frames is bounded by keepalive instead. Default DefaultFrameTimeout;
	// negative: no bound.
	FrameTimeout time.Duration
	// MaxQueuedPongs is how many PONGs may wait unwritten on a connection
	// before its peer is dropped. Default DefaultMaxQueuedPongs.
	MaxQueuedPongs int
	// IdleTimeout is how long a connection may hold no stream (running or
	// queued) before the server sends GOAWAY with code OK: the client
	// opens no new stream on it and closes it, and dials anew for its
	// next request; the server is not draining. A client that neither
	// closes the connection nor opens a stream within IdleTimeout (at
	// most 5 s) more is dropped. Only streams count: PINGs and other
	// frames keep a connection alive for keepalive, not for this. It
	// needs keepalive on. Default DefaultIdleTimeout; negative: never.
	IdleTimeout time.Duration
	// OnLimit, if set, is called when a peer hits one of the limits
	// above or its share of streams, with the limit's name
	// ("max_conns", "frame_timeout", "max_queued_pongs",
	// "max_streams_per_conn", "idle_timeout"); for metrics. It must not
	// block.
	OnLimit func(limit string)
	// StreamContext, if set, returns the parent of the context of a
	// stream opened for path (nil for none). It runs on the connection's
	// reader and must not block. The parent's cancellation reaches the
	// handler through its context only: it does not kill the stream, so
	// Send still works and the handler decides how the stream ends.
	StreamContext func(path string) context.Context
	// InlineBudget is how long a handler may run on the connection's
	// reader goroutine before another goroutine takes over reading (see
	// Handler); it is checked every half budget, so a handler may run up
	// to 1.5 budgets. Default DefaultInlineBudget; negative: handlers
	// never run on the reader.
	InlineBudget time.Duration
}

// DefaultInlineBudget is how long a handler runs on its connection's
// reader before the reading is handed to another goroutine: long enough
// for a handler that computes its answer at once, short enough that the
// connection's other streams barely notice one that waits.
const DefaultInlineBudget = time.Millisecond

func (c *ServerConfig) setDefaults() {
	if c.MaxFrameSize <= 0 {
		c.MaxFrameSize = wire.DefaultMaxFrameSize
	}
	c.MaxFrameSize = min(max(c.MaxFrameSize, wire.MinMaxFrameSize), wire.MaxMaxFrameSize)
	if c.MaxConcurrentStreams <= 0 {
		c.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	if c.QueueSize == 0 {
		c.QueueSize = DefaultQueueSize
	}
	c.KeepaliveInterval, c.KeepaliveTimeout = keepaliveDefaults(c.KeepaliveInterval, c.KeepaliveTimeout)
	if c.MaxConns == 0 {
		c.MaxConns = DefaultMaxConns
	}
	c.FrameTimeout = frameTimeoutDefault(c.FrameTimeout)
	if c.MaxQueuedPongs <= 0 {
		c.MaxQueuedPongs = DefaultMaxQueuedPongs
	}
	switch {
	case c.IdleTimeout < 0:
		c.IdleTimeout = 0
	case c.IdleTimeout == 0:
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.InlineBudget == 0 {
		c.InlineBudget = DefaultInlineBudget
	}
}

func keepaliveDefaults(interval, timeout time.Duration) (time.Duration, time.Duration) {
	if interval < 0 {
		return 0, 0
	}
	if interval == 0 {
		interval = DefaultKeepaliveInterval
	}
	if timeout <= 0 {
		timeout = DefaultKeepaliveTimeout
	}
	return interval, timeout
}

// Handler serves streams.
type Handler interface {
	// ServeStream runs once per stream. It reads
	// the request from s, sends responses with s.Send, and returns to end
	// the stream: nil ends it with OK, a *StreamError with its code and
	// message, any other error with Application and the error's text. A
	// panic ends it with Internal. Nothing is sent if the client killed
	// the stream or the connection is gone.
	//
	// A stream admitted at once starts on its connection's reader
	// goroutine, so that a handler that answers at once costs no
	// goroutine hand-off. If it is still running after
	// ServerConfig.InlineBudget, or Send would wait for credit, another
	// goroutine takes over reading the connection, and the handler goes
	// on undisturbed: a handler may block as long as it likes.
	ServeStream(s *ServerStream) error
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(s *ServerStream) error

// ServeStream calls f(s).
func (f HandlerFunc) ServeStream(s *ServerStream) error { return f(s) }

// Server accepts connections and runs a Handler for every stream opened on
// them.
type Server struct {
	cfg ServerConfig
	h   Handler
	log *slog.Logger

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*serverConn]struct{}
	draining  bool
	closed    bool
	changed   chan struct{} // closed when conns shrink; for Shutdown
	wg        sync.WaitGroup

	nconns      atomic.Int64 // connections accepted and not yet ended
	lastRefusal atomic.Int64 // unix ns of the last refused-connection log line

	// The inline watchdog (see watchdog) runs while handlers run on
	// readers: dogOn says it runs, dogSeen that an inline run started
	// since its last tick; dogStop ends it for good.
	dogOn, dogSeen atomic.Bool
	dogStop        chan struct{}
	dogStopper     sync.Once

	adm     *plane.Admission[*ServerStream]
	work    chan *ServerStream // hands a stream to an idle worker
	idle    atomic.Int32       // workers parked on work
	quit    chan struct{}      // closed to end idle workers
	quitter sync.Once
	workers sync.WaitGroup
}

// maxIdleWorkers bounds the handler goroutines kept parked for the next
// stream; beyond it a finishing worker exits.
const maxIdleWorkers = 256

// NewServer returns a Server that runs h for every stream.
func NewServer(cfg ServerConfig, h Handler) *Server {
	cfg.setDefaults()
	s := &Server{
		cfg:       cfg,
		h:         h,
		log:       cfg.Logger,
		listeners: map[net.Listener]struct{}{},
		conns:     map[*serverConn]struct{}{},
		work:      make(chan *ServerStream),
		quit:      make(chan struct{}),
		dogStop:   make(chan struct{}),
	}
	s.adm = plane.NewAdmission(plane.Limits{
		MaxRunning:      cfg.MaxConcurrentStreams,
		QueueSize:       cfg.QueueSize,
		MaxRunningBytes: cfg.MaxRunningBytes,
		MaxPerPeer:      cfg.MaxStreamsPerConn,
	}, (*ServerStream).isKilled, (*ServerStream).release)
	return s
}

// retryAccept reports whether an Accept error passes: a timeout, or the
// process or the system out of file descriptors or memory for a moment
// (a burst of connections). Giving up on those would leave the process
// registered and serving its open connections while refusing every new
// one until it restarts.
func retryAccept(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// Serve accepts connections on ln until Shutdown or Close, then returns
// ErrServerClosed; it returns other errors from ln.Accept that do not
// pass (see retryAccept). Serve closes ln when it returns.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.draining {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()
	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			draining := s.draining
			s.mu.Unlock()
			if draining {
				return ErrServerClosed
			}
			if retryAccept(err) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Warn("mux: accept failed; retrying", "addr", ln.Addr().String(), "err", err, "in", delay)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		if n := s.nconns.Add(1); s.cfg.MaxConns > 0 && n > int64(s.cfg.MaxConns) {
			s.nconns.Add(-1)
			s.refuseConn(nc)
			continue
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			s.nconns.Add(-1)
			nc.Close()
			return ErrServerClosed
		}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.nconns.Add(-1)
			s.serveConn(nc)
		}()
	}
}

// Shutdown drains the server gracefully. It closes the listeners, sends
// GOAWAY (code Draining) on every connection, and from then on refuses new
// streams with END Draining. Then it waits until every stream accepted
// before the GOAWAY has ended (its handler has returned and its END frame
// has been written, queued streams included), every handler goroutine has
// returned, and every connection has been closed by both sides. If ctx
// ends first, Shutdown calls Close, which kills the remaining streams, and
// returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	for ln := range s.listeners {
		ln.Close()
	}
	conns := make([]*serverConn, 0, len(s.conns))
	for sc := range s.conns {
		conns = append(conns, sc)
	}
	s.mu.Unlock()
	for _, sc := range conns {
		sc.goAway()
	}
	select {
	case <-s.adm.Idle():
	case <-ctx.Done():
		s.Close()
		return ctx.Err()
	}
	for {
		s.mu.Lock()
		if len(s.conns) == 0 {
			s.mu.Unlock()
			s.stopWatchdog()
			s.wg.Wait()
			s.stopWorkers()
			s.workers.Wait()
			return nil
		}
		if s.changed == nil {
			s.changed = make(chan struct{})
		}
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			s.Close()
			return ctx.Err()
		}
	}
}

// stopWorkers ends the idle workers; busy ones end when their handler
// returns.
func (s *Server) stopWorkers() { s.quitter.Do(func() { close(s.quit) }) }

// Close stops the server at once: it closes the listeners and every
// connection, which kills every stream (handler contexts are cancelled
// with cause ErrServerClosed). It waits for the connections' goroutines,
// not for handlers to return.
func (s *Server) Close() error {
	s.mu.Lock()
	s.draining, s.closed = true, true
	for ln := range s.listeners {
		ln.Close()
	}
	conns := make([]*serverConn, 0, len(s.conns))
	for sc := range s.conns {
		conns = append(conns, sc)
	}
	s.mu.Unlock()
	for _, sc := range conns {
		sc.shutdown(ErrServerClosed)
	}
	s.stopWatchdog()
	s.wg.Wait()
	s.stopWorkers()
	return nil
}

func (s *Server) notifyLocked() {
	if s.changed != nil {
		close(s.changed)
		s.changed = nil
	}
}

// refuseConn closes a connection accepted beyond MaxConns, logging at
// most once a second so that a flood does not flood the log.
func (s *Server) refuseConn(nc net.Conn) {
	defer nc.Close()
	if f := s.cfg.OnLimit; f != nil {
		f("max_conns")
	}
	now := time.Now().UnixNano()
	if last := s.lastRefusal.Load(); now-last >= int64(time.Second) && s.lastRefusal.CompareAndSwap(last, now) {
		s.log.Warn("mux: connection refused: the server holds its maximum of connections (request_plane.max_conns)", "remote", nc.RemoteAddr().String(), "max", s.cfg.MaxConns)
	}
}

// start runs st on an idle worker, or on a new one if none is idle. A
// worker that finishes a stream takes the next queued one, then parks for
// the next start, so that serving a stream costs no goroutine creation.
func (s *Server) start(st *ServerStream) {
	select {
	case s.work <- st:
	default:
		s.workers.Add(1)
		go s.worker(st)
	}
}

func (s *Server) worker(st *ServerStream) {
	defer s.workers.Done()
	for st != nil {
		st.serve(s.h)
		if st = s.next(st); st == nil {
			st = s.park()
		}
	}
}

// next releases st's admission slot and returns the queued stream that
// takes it, or nil.
func (s *Server) next(st *ServerStream) *ServerStream {
	if next, _, _, ok := s.adm.Done(len(st.open.Payload()), &st.conn.peerCount); ok {
		return next
	}
	return nil
}

// park waits as an idle worker for the next stream; nil: the worker
// should exit.
func (s *Server) park() *ServerStream {
	if s.idle.Add(1) > maxIdleWorkers {
		s.idle.Add(-1)
		return nil
	}
	select {
	case st := <-s.work:
		s.idle.Add(-1)
		return st
	case <-s.quit:
		s.idle.Add(-1)
		return nil
	}
}

func (s *Server) serveConn(nc net.Conn) {
	handedOff := false // the reading, and this goroutine's count of s.wg, went to another goroutine
	defer func() {
		if !handedOff {
			s.wg.Done()
		}
	}()
	deadline := time.Now().Add(handshakeTimeout)
	if s.cfg.TLS != nil {
		tc := tls.Server(nc, s.cfg.TLS)
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			s.log.Debug("mux: TLS handshake failed", "remote", nc.RemoteAddr().String(), "err", err)
			nc.Close()
			return
		}
		nc = tc
	}
	local := wire.Preface{Version: wire.Version, MaxFrameSize: uint32(s.cfg.MaxFrameSize)}
	nc.SetDeadline(deadline)
	peer, err := wire.ReadPreface(nc)
	if err != nil {
		var ve *wire.VersionError
		if errors.As(err, &ve) {
			// Tell a newer or older client why, in a form it can read:
			// our preface, then a GOAWAY.
			var w wire.Writer
			w.GoAway(0, wire.CodeProtocol, fmt.Sprintf("unsupported protocol version %d: this server speaks version %d", ve.Got, wire.Version))
			nc.Write(append(wire.AppendPreface(nil, local), w.Bytes()...))
		}
		s.log.Debug("mux: bad preface", "remote", nc.RemoteAddr().String(), "err", err)
		nc.Close()
		return
	}
	if _, err := nc.Write(wire.AppendPreface(nil, local)); err != nil {
		nc.Close()
		return
	}
	nc.SetDeadline(time.Time{})

	sc := &serverConn{srv: s}
	lim := limits{frameTimeout: s.cfg.FrameTimeout, maxPongs: s.cfg.MaxQueuedPongs, onLimit: s.cfg.OnLimit,
		idle: s.cfg.IdleTimeout, activity: sc.activity, onIdle: sc.idleGoAway}
	sc.conn = newConn(nc, peer, s.cfg.MaxFrameSize, s.cfg.KeepaliveInterval, s.cfg.KeepaliveTimeout, lim, s.log)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		nc.Close()
		return
	}
	s.conns[sc] = struct{}{}
	draining := s.draining
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		sc.writeLoop()
	}()
	if draining {
		sc.goAway()
	}
	handedOff = sc.read()
}

// read runs the connection's read loop on the calling goroutine, which
// holds a count of srv.wg. It reports whether the loop was handed to
// another goroutine, which then holds that count; otherwise the
// connection has ended.
func (sc *serverConn) read() (handedOff bool) {
	if sc.readLoop() {
		return true
	}
	s := sc.srv
	s.mu.Lock()
	delete(s.conns, sc)
	s.notifyLocked()
	s.mu.Unlock()
	return false
}

// Reader roles of a serverConn, in rstate.
const (
	readerReading = iota // the reader goroutine is reading frames
	readerInline         // it is running a handler; another goroutine may take over reading
	readerHanded         // another goroutine took over reading
)

// inlineSkip is how many streams a connection hands to workers after a
// handler ran past its inline budget: an endpoint whose handlers wait
// then costs the connection one budget per inlineSkip streams.
const inlineSkip = 64

// serveInline runs st on the reader goroutine. It reports whether the
// reading was handed to another goroutine meanwhile; then the calling
// goroutine has become a worker and has finished as one.
func (sc *serverConn) serveInline(st *ServerStream) (handedOff bool) {
	s := sc.srv
	sc.gen++
	st.gen = sc.gen
	inline := sc.gen<<2 | readerInline
	st.inline.Store(true)
	sc.inlineSt = st // for a handoff, which enters it in the stream map
	sc.rstate.Store(inline)
	// Read first: after the first run of a tick, this shared flag is
	// only read, not written, so calls on many cores do not bounce it.
	if !s.dogSeen.Load() {
		s.dogSeen.Store(true)
	}
	if !s.dogOn.Load() {
		s.startWatchdog()
	}
	st.serve(s.h)
	// After a handoff, sc's reader state (gen) is the new reader's: only
	// the CAS may touch it.
	//lint:ignore SA4016 readerReading is the zero role, named for the reader
	if sc.rstate.CompareAndSwap(inline, st.gen<<2|readerReading) {
		sc.inlineSt = nil
		if next := s.next(st); next != nil {
			s.start(next)
		}
		return false
	}
	// handoff counted this goroutine among the workers.
	if next := s.next(st); next != nil {
		s.worker(next)
		return true
	}
	if next := s.park(); next != nil {
		s.worker(next)
		return true
	}
	s.workers.Done()
	return true
}

// epoch is the origin of monotonic.
var epoch = time.Now()

// monotonic returns the time since epoch.
func monotonic() int64 { return int64(time.Since(epoch)) }

// startWatchdog starts the watchdog unless it runs. The caller is a
// reader, which holds a count of s.wg.
func (s *Server) startWatchdog() {
	if s.dogOn.CompareAndSwap(false, true) {
		s.wg.Add(1)
		go s.watchdog()
	}
}

func (s *Server) stopWatchdog() { s.dogStopper.Do(func() { close(s.dogStop) }) }

// watchdog hands the reading of a connection to a new goroutine when the
// handler its reader runs inline has run past the budget. It ticks every
// half budget while handlers run inline, and exits after a tick in which
// none ran: a timer armed per handler would cost every call (arming one
// wakes the runtime's network poller), where this costs a few wake-ups a
// millisecond, only while the server is busy. An inline run is timed
// from the first tick that saw it, so that starting one reads no clock:
// it started less than a tick earlier, so a run is handed off after one
// to one and a half budgets, as it would be if timed from its start.
func (s *Server) watchdog() {
	defer s.wg.Done()
	budget := int64(s.cfg.InlineBudget)
	t := time.NewTicker(max(s.cfg.InlineBudget/2, 10*time.Microsecond))
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-s.dogStop:
			// The server is closing: every handler still on a reader
			// gives the reading up at once, so that the connection's end
			// reaches it. A run that starts after dogOn is cleared
			// starts a watchdog that comes here too.
			s.dogOn.Store(false)
			s.checkInline(0)
			return
		}
		seen := s.dogSeen.Swap(false)
		if s.checkInline(budget) || seen {
			continue
		}
		// Nothing ran inline for a tick: stop. A run that started after
		// the check and saw dogOn set relies on this goroutine: look
		// again after clearing it (each side writes its flag, then reads
		// the other's).
		s.dogOn.Store(false)
		if !s.checkInline(budget) || !s.dogOn.CompareAndSwap(false, true) {
			return
		}
	}
}

// checkInline hands off the reading of every connection whose inline
// handler has been seen running for budget, and reports whether any
// handler runs inline.
func (s *Server) checkInline(budget int64) bool {
	now := monotonic()
	active := false
	s.mu.Lock()
	for sc := range s.conns {
		v := sc.rstate.Load()
		if v&3 != readerInline {
			continue
		}
		active = true
		if v != sc.dogRun {
			sc.dogRun, sc.dogSince = v, now // a run not seen before
		}
		if now-sc.dogSince < budget {
			continue
		}
		if sc.handoff(v >> 2) {
			go sc.readOn()
		}
	}
	s.mu.Unlock()
	return active
}

// handoff takes the reader role from the goroutine running inline run
// gen, counting that goroutine as a worker from now on, and flushes what
// the handler queued. The caller must then read (readOn). It reports
// false if the role was not there to take.
func (sc *serverConn) handoff(gen uint64) bool {
	if !sc.rstate.CompareAndSwap(gen<<2|readerInline, gen<<2|readerHanded) {
		return false
	}
	// The new reader must find the stream: CANCEL and CREDIT for it
	// arrive, and the connection's end kills what the map holds.
	sc.insert(sc.inlineSt)
	sc.srv.workers.Add(1)
	sc.wmu.Lock()
	sc.commit() // wakes the writer for what the inline handler queued
	return true
}

// readOn continues the read loop on this goroutine after a handoff.
func (sc *serverConn) readOn() {
	sc.skipInline = inlineSkip
	if !sc.read() {
		sc.srv.wg.Done()
	}
}

// flushOwed writes what inline handlers queued, before the reader waits
// for the next frame: a handler's DATA and END leave in one write, and
// the ENDs of many streams opened in one read leave together, with no
// hand-off to the writer goroutine. A large batch, or one that a write
// in flight will take, is left to the writer.
func (sc *serverConn) flushOwed() {
	if !sc.owed.Swap(false) {
		return
	}
	sc.wmu.Lock()
	if n := sc.w.Len(); n == 0 || n > maxDirectFlush || !sc.canWrite() {
		sc.commit()
		return
	}
	sc.commitFlush()
}

// maxDirectFlush bounds the batch the reader writes itself: a small write
// goes into the socket buffer at once, where a large one could wait for
// the peer to read.
const maxDirectFlush = 64 << 10

const streamShards = 16

type streamShard struct {
	mu sync.Mutex
	m  map[uint32]*ServerStream
	_  [40]byte // keep shards on separate cache lines
}

// serverConn is one client connection on a Server.
type serverConn struct {
	*conn
	srv *Server

	// Open streams, running or queued, in shards, so that handlers
	// ending on many cores do not queue on one lock.
	shards   [streamShards]streamShard
	nstreams atomic.Int64

	mu        sync.Mutex // taken by the reader per OPEN and by goAway
	lastID    uint32
	goingAway atomic.Bool // written under mu
	gone      bool        // the reader ended and killed the streams

	peerCount   plane.Peer  // streams this connection holds in admission
	warnedShare atomic.Bool // its refusal for holding its share was logged

	// Inline serving (see serveInline). rstate is the inline run's
	// generation << 2 | the reader's role; gen and skipInline belong to
	// whichever goroutine reads.
	rstate     atomic.Uint64
	gen        uint64
	owed       atomic.Bool // inline handlers queued frames without waking the writer
	skipInline int
	// inlineSt is the stream of the inline run in rstate, which is not
	// in the stream map until a handoff enters it. Written by the reader
	// before it stores rstate, read by whoever wins rstate's CAS.
	inlineSt *ServerStream
	// The watchdog's, under srv.mu: the rstate of the inline run it saw
	// last, and when it first saw it (monotonic).
	dogRun   uint64
	dogSince int64
}

// readLoop reads frames until the connection ends, then kills its
// streams; it returns true early if the reading was handed to another
// goroutine while a handler ran inline.
func (sc *serverConn) readLoop() (handedOff bool) {
	var err error
	for err == nil {
		if !sc.rd.FrameBuffered() {
			sc.flushOwed()
		}
		var f wire.Frame
		f, err = sc.rd.ReadFrame()
		if err != nil {
			break
		}
		switch f.Type {
		case wire.TypeOpen:
			var inline *ServerStream
			inline, err = sc.handleOpen(f)
			if inline != nil && sc.serveInline(inline) {
				return true
			}
		case wire.TypeCancel:
			sc.handleCancel(f)
		case wire.TypeCredit:
			err = sc.handleCredit(f)
		case wire.TypePing:
			sc.writePong(f.Payload)
		case wire.TypePong:
			// Any byte read counts as liveness; nothing else to do.
		case wire.TypeGoAway:
			// A client sends GOAWAY only before closing on a protocol error.
			_, code, reason, _ := wire.ParseGoAway(f.Payload)
			sc.log.Warn("mux: client closed the connection", "remote", sc.nc.RemoteAddr().String(), "code", code, "reason", string(reason))
			err = fmt.Errorf("client sent GOAWAY (%v): %s", code, reason)
		default:
			err = fmt.Errorf("%w: %v frames are not sent by clients (stream %d)", wire.ErrProtocol, f.Type, f.Stream)
		}
	}
	if errors.Is(err, wire.ErrFrameTimeout) {
		sc.tripped("frame_timeout", err)
	}
	if errors.Is(err, wire.ErrProtocol) {
		sc.mu.Lock()
		last := sc.lastID
		sc.mu.Unlock()
		sc.fail(last, wire.CodeProtocol, err)
	}
	sc.shutdown(fmt.Errorf("%w: reading from %s: %w", ErrConnLost, sc.nc.RemoteAddr(), err))
	<-sc.done
	cause := sc.err
	sc.mu.Lock()
	sc.gone = true
	sc.mu.Unlock()
	for i := range sc.shards {
		sh := &sc.shards[i]
		sh.mu.Lock()
		streams := sh.m
		sh.m = nil
		for _, st := range streams {
			st.removed = true
		}
		sh.mu.Unlock()
		for _, st := range streams {
			st.kill(cause)
		}
	}
	return false
}

// writeEnd queues an END; direct lets the calling goroutine write it (see
// commitFlush), which the reader must not.
func (sc *serverConn) writeEnd(id uint32, code wire.Code, msg string, direct bool) {
	if sc.begin(context.Background(), false) == nil {
		sc.w.End(id, code, msg)
		if direct {
			sc.commitFlush()
		} else {
			sc.commit()
		}
	}
}

// handleOpen opens a stream. It returns the stream if the reader should
// serve it inline; others go to a worker, the queue, or are refused.
// writeEndInline queues an END from a handler that ran inline: while the
// reader role is still with it, the reader writes the END before it next
// waits for a frame (flushOwed); after a handoff it is written as any
// handler's.
func (sc *serverConn) writeEndInline(id uint32, gen uint64, code wire.Code, msg string) {
	if sc.begin(context.Background(), false) != nil {
		return
	}
	sc.w.End(id, code, msg)
	if sc.rstate.Load() == gen<<2|readerInline {
		sc.owed.Store(true)
		sc.wmu.Unlock()
		return
	}
	sc.commitFlush()
}

// handleOpen opens a stream. It returns the stream if the reader should
// serve it inline; others go to a worker, the queue, or are refused.
func (sc *serverConn) handleOpen(f wire.Frame) (*ServerStream, error) {
	id := f.Stream
	req := make([]byte, len(f.Payload))
	copy(req, f.Payload)
	o, perr := wire.ParseOpen(req)

	sc.mu.Lock()
	if id <= sc.lastID {
		sc.mu.Unlock()
		return nil, fmt.Errorf("%w: OPEN on stream %d, not above the last opened stream %d", wire.ErrProtocol, id, sc.lastID)
	}
	sc.lastID = id
	if sc.goingAway.Load() {
		sc.mu.Unlock()
		sc.writeEnd(id, wire.CodeDraining, "server is draining (GOAWAY sent); retry on another instance", false)
		return nil, nil
	}
	if perr != nil {
		sc.mu.Unlock()
		sc.writeEnd(id, wire.CodeBadRequest, perr.Error(), false)
		return nil, nil
	}
	var parent context.Context
	if f := sc.srv.cfg.StreamContext; f != nil {
		parent = f(str(o.Path()))
	}
	st := newServerStream(sc, id, o, parent)
	sc.nstreams.Add(1)
	sc.mu.Unlock()

	// The stream enters the stream map (for CANCEL, CREDIT and the
	// connection's end) before this reader reads on, unless it runs on
	// this reader: then only if the reading is handed over (handoff), as
	// until then nothing reads frames for it.
	switch a, msg := sc.srv.adm.Admit(st, len(st.open.Payload()), &sc.peerCount); a {
	case plane.Run:
		if sc.srv.cfg.InlineBudget > 0 && sc.skipInline == 0 {
			return st, nil
		}
		sc.skipInline = max(sc.skipInline-1, 0)
		sc.insert(st)
		sc.srv.start(st)
	case plane.Queued:
		// Claim below, or a handler ending meanwhile, may start it.
		sc.insert(st)
		for {
			next, _, _, ok := sc.srv.adm.Claim()
			if !ok {
				break
			}
			sc.srv.start(next)
		}
	case plane.Refused, plane.RefusedPeer:
		if a == plane.RefusedPeer {
			if f := sc.srv.cfg.OnLimit; f != nil {
				f("max_streams_per_conn")
			}
			if sc.warnedShare.CompareAndSwap(false, true) {
				sc.log.Warn("mux: connection holds its share of handler slots; refusing its new streams (logged once per connection)", "remote", sc.nc.RemoteAddr().String(), "stream", id, "streams", sc.peerCount.Streams())
			}
		}
		st.state.Store(stateEnded)
		sc.writeEnd(id, wire.CodeOverloaded, "server "+msg, false)
		sc.removeStream(st)
		st.release()
	}
	return nil, nil
}

func (sc *serverConn) lookup(id uint32) *ServerStream {
	sh := sc.shard(id)
	sh.mu.Lock()
	st := sh.m[id]
	sh.mu.Unlock()
	return st
}

func (sc *serverConn) handleCancel(f wire.Frame) {
	st := sc.lookup(f.Stream)
	if st == nil {
		return // already ended: the CANCEL crossed our END
	}
	if f.Flags == wire.FlagStop {
		st.stop.Fire()
		return
	}
	sc.removeStream(st)
	st.kill(errKilled)
}

func (sc *serverConn) handleCredit(f wire.Frame) error {
	n, err := wire.ParseCredit(f.Payload)
	if err != nil {
		return err
	}
	if st := sc.lookup(f.Stream); st != nil {
		return st.addCredit(n)
	}
	return nil
}

// insert enters st in the stream map, unless it was removed already
// (it ended on a worker first).
func (sc *serverConn) insert(st *ServerStream) {
	sh := sc.shard(st.id)
	sh.mu.Lock()
	if !st.removed {
		if sh.m == nil {
			sh.m = make(map[uint32]*ServerStream)
		}
		sh.m[st.id] = st
	}
	sh.mu.Unlock()
}

// removeStream forgets st, once; once a draining connection has no
// streams left it is closed.
func (sc *serverConn) removeStream(st *ServerStream) {
	sh := sc.shard(st.id)
	sh.mu.Lock()
	if st.removed {
		sh.mu.Unlock()
		return
	}
	st.removed = true
	delete(sh.m, st.id)
	sh.mu.Unlock()
	// goAway sets goingAway before it counts the streams, this decrements
	// before it reads goingAway: one of the two sees the connection idle.
	if sc.nstreams.Add(-1) == 0 && sc.goingAway.Load() {
		sc.closeAfterFlush(false, nil)
	}
}

func (sc *serverConn) shard(id uint32) *streamShard { return &sc.shards[id%streamShards] }

// goAway starts draining the connection: GOAWAY with the last stream
// accepted, then close once the streams have ended.
func (sc *serverConn) goAway() {
	sc.mu.Lock()
	if sc.goingAway.Load() || sc.gone {
		sc.mu.Unlock()
		return
	}
	sc.goingAway.Store(true)
	last, idle := sc.lastID, sc.nstreams.Load() == 0
	sc.mu.Unlock()
	if sc.begin(context.Background(), false) == nil {
		sc.w.GoAway(last, wire.CodeDraining, "server is shutting down")
		sc.commit()
	}
	if idle {
		sc.closeAfterFlush(false, nil)
	}
}

// activity reports the last stream id opened and whether streams are
// open, for the idle check.
func (sc *serverConn) activity() (uint32, bool) {
	sc.mu.Lock()
	last := sc.lastID
	sc.mu.Unlock()
	return last, sc.nstreams.Load() > 0
}

// idleGoAway asks the client of an idle connection to close it: GOAWAY
// with code OK, which says the connection goes, not the server. Streams
// the client opened before reading it are served as usual.
func (sc *serverConn) idleGoAway() {
	sc.mu.Lock()
	if sc.goingAway.Load() || sc.gone {
		sc.mu.Unlock()
		return
	}
	last := sc.lastID
	sc.mu.Unlock()
	idle := sc.srv.cfg.IdleTimeout
	if sc.begin(context.Background(), false) == nil {
		sc.w.GoAway(last, wire.CodeOK, fmt.Sprintf("connection idle for %v (request_plane.idle_timeout); open a new one", idle))
		sc.commit()
	}
	if f := sc.srv.cfg.OnLimit; f != nil {
		f("idle_timeout")
	}
	sc.log.Info("mux: asking the client of an idle connection to close it", "limit", "idle_timeout", "remote", sc.nc.RemoteAddr().String(), "idle", idle)
}

var errKilled = &StreamError{Code: wire.CodeCancelled, Message: "stream killed by the client"}

// Server stream states.
const (
	stateOpen   = iota
	stateEnded  // END written or being written
	stateKilled // killed or connection lost: no more frames
)

// ServerStream is the server's side of one stream: the request and the
// means to answer it. Its methods are safe for concurrent use.
type ServerStream struct {
	// One is allocated per stream: the fields are ordered so that the
	// small ones pack, into the 192-byte size class (184 bytes).
	conn     *serverConn
	id       uint32
	state    atomic.Int32
	open     wire.Open // aliases req, which is never written after parsing
	deadline time.Time
	ctx      context.Context    // sctx, or a context with the deadline derived from it
	sctx     *streamCtx         // cancelled by kill and release
	stopDL   context.CancelFunc // stops the deadline timer; nil without a deadline
	derived  bool               // ctx descends from ServerConfig.StreamContext's
	removed  bool               // removeStream ran, or the connection's end took it; under its shard's lock

	inline atomic.Bool // started on the reader goroutine, which may still hold the reader role
	gen    uint64      // its inline run's generation; set before the handler starts
	// Guarded by the connection's wmu, which every DATA frame takes:
	waiting  bool  // Send waits on creditCh
	credit   int64 // bytes of DATA the client still accepts (may go negative by one frame)
	creditCh chan struct{}

	stop latch.Latch // a graceful stop was asked
}

// newServerStream returns a stream for a parsed OPEN whose slices alias a
// buffer the stream now owns.
func newServerStream(sc *serverConn, id uint32, o wire.Open, parent context.Context) *ServerStream {
	st := &ServerStream{conn: sc, id: id, open: o, credit: int64(sc.peer.InitialWindow), derived: parent != nil}
	if parent == nil {
		parent = context.Background()
	}
	st.sctx = newStreamCtx(parent)
	st.ctx = st.sctx
	if o.Timeout > 0 {
		st.deadline = time.Now().Add(o.Timeout)
		st.ctx, st.stopDL = context.WithDeadline(st.ctx, st.deadline)
	}
	return st
}

func str(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// ID returns the stream id, unique on its connection.
func (s *ServerStream) ID() uint32 { return s.id }

// RemoteAddr returns the client's address.
func (s *ServerStream) RemoteAddr() net.Addr { return s.conn.nc.RemoteAddr() }

// Path returns the endpoint path the client asked for.
func (s *ServerStream) Path() string { return str(s.open.Path()) }

// Codec returns the name of the payload encoding, or "".
func (s *ServerStream) Codec() string { return str(s.open.Codec()) }

// RequestID returns the request id the client sent, or "".
func (s *ServerStream) RequestID() string { return str(s.open.RequestID()) }

// TraceParent returns the W3C traceparent the client sent, or "".
func (s *ServerStream) TraceParent() string { return str(s.open.TraceParent()) }

// Header returns the value of the request header key, or "".
func (s *ServerStream) Header(key string) string {
	v, _ := s.open.Header(key)
	return str(v)
}

// Headers returns a new map of the request headers.
func (s *ServerStream) Headers() map[string]string {
	m := make(map[string]string, s.open.NumHeaders())
	for k, v := range s.open.Headers() {
		m[str(k)] = str(v)
	}
	return m
}

// DerivedContext reports whether the stream's context descends from the
// one ServerConfig.StreamContext returned for its path.
func (s *ServerStream) DerivedContext() bool { return s.derived }

// Deadline returns the stream's deadline, computed from the timeout the
// client sent when the OPEN arrived, and whether there is one.
func (s *ServerStream) Deadline() (time.Time, bool) { return s.deadline, !s.deadline.IsZero() }

// Payload returns the request. It belongs to the handler.
func (s *ServerStream) Payload() []byte { return s.open.Payload() }

// Context returns the stream's context. It is cancelled when the client
// kills the stream (cancelling its context, Cancel or Close before the
// end), at the deadline, when the connection is lost and when the server
// is closed; context.Cause says which. It is not cancelled by a graceful
// stop: see Stopped.
func (s *ServerStream) Context() context.Context { return s.ctx }

// Stopped returns a channel closed when the client asks the stream to stop
// gracefully. The handler should finish soon and return normally; its
// Sends still work.
func (s *ServerStream) Stopped() <-chan struct{} {
	return s.stop.Done()
}

// Send sends p as one response message; the client's Recv returns it
// whole. Send copies p into the connection's write batch and returns
// without waiting for the network. It blocks while the stream is out of
// credit (the client has not consumed enough of what was sent) or the
// connection's batch is full. It fails once the stream has been killed or
// has ended (the error is the context's cause, or ErrStreamDone), and
// with an error that wraps ErrTooLarge if p is above the client's maximum
// frame size.
func (s *ServerStream) Send(p []byte) error { return s.send(nil, p) }

// SendPrefixed sends prefix followed by p as one response message, as
// Send(append(prefix, p...)) would, without joining them first: an
// encoder's header goes straight into the write batch with the bytes it
// frames, which are copied once.
func (s *ServerStream) SendPrefixed(prefix, p []byte) error { return s.send(prefix, p) }

func (s *ServerStream) send(prefix, p []byte) error {
	if n := len(prefix) + len(p); n > int(s.conn.peer.MaxFrameSize) {
		return fmt.Errorf("%w: response of %d bytes on %s, above the client's max frame size %d", ErrTooLarge, n, s.Path(), s.conn.peer.MaxFrameSize)
	}
	// One lock per message: the stream's credit lives under the
	// connection's write lock, which appending the frame takes anyway.
	// The state read under it is the only check of the stream's end: a
	// kill sets it before cancelling the context, and asking the context
	// too would cost a streamed item about a tenth of its time
	// (docs/performance.md, the seventh pass).
	c := s.conn.conn
	if s.inline.Load() {
		if s.sendInline(prefix, p) {
			return nil
		}
		// Send may wait, for credit or for the batch: the reader must
		// not, so another goroutine takes over reading first.
		s.inline.Store(false)
		if s.conn.handoff(s.gen) {
			go s.conn.readOn()
		}
	}
	if err := c.begin(s.ctx, true); err != nil {
		return err
	}
	for s.credit <= 0 && s.state.Load() == stateOpen {
		if c.w.Len() > 0 && c.canWrite() {
			// What this stream waits for is the client reading what is
			// queued, which nobody is writing: write it rather than wait
			// for the writer goroutine to be scheduled. (A client that
			// stops reading then holds this handler in the write, as it
			// holds one writing its END, until the write deadline that
			// keepalive sets; a kill meanwhile takes effect after it.)
			c.commitFlush()
			if err := c.begin(s.ctx, true); err != nil {
				return err
			}
			continue
		}
		if s.creditCh == nil {
			s.creditCh = make(chan struct{}, 1)
		}
		s.waiting = true
		ch := s.creditCh
		c.wmu.Unlock()
		select {
		case <-ch:
		case <-s.ctx.Done():
			return context.Cause(s.ctx)
		}
		if err := c.begin(s.ctx, true); err != nil {
			return err
		}
	}
	if s.state.Load() != stateOpen {
		c.wmu.Unlock()
		if s.ctx.Err() != nil {
			return context.Cause(s.ctx)
		}
		return ErrStreamDone
	}
	s.credit -= int64(wire.HeaderSize + len(prefix) + len(p))
	c.w.DataPrefixed(s.id, prefix, p)
	c.commitData()
	return nil
}

// sendInline queues p without waking the writer, if the handler still
// runs on the reader and nothing needs waiting for: the reader writes it
// with the stream's END, or before it next waits for a frame, and a
// handoff flushes it. It reports false if p was not queued.
func (s *ServerStream) sendInline(prefix, p []byte) bool {
	c := s.conn.conn
	c.wmu.Lock()
	if s.conn.rstate.Load() != s.gen<<2|readerInline || c.dead || c.wClosing || c.w.Len() >= softPending || s.credit <= 0 || s.state.Load() != stateOpen {
		c.wmu.Unlock()
		return false
	}
	s.credit -= int64(wire.HeaderSize + len(prefix) + len(p))
	c.w.DataPrefixed(s.id, prefix, p)
	if !s.conn.owed.Load() { // a load, not a store, per message of a run
		s.conn.owed.Store(true)
	}
	c.wmu.Unlock()
	return true
}

func (s *ServerStream) addCredit(n uint32) error {
	c := s.conn.conn
	c.wmu.Lock()
	s.credit += int64(n)
	if s.credit > wire.MaxWindow {
		credit := s.credit
		c.wmu.Unlock()
		return fmt.Errorf("%w: credit on stream %d grew to %d, above the maximum window %d", wire.ErrProtocol, s.id, credit, wire.MaxWindow)
	}
	wake := s.waiting
	s.waiting = false
	ch := s.creditCh
	c.wmu.Unlock()
	if wake {
		notify(ch)
	}
	return nil
}

func (s *ServerStream) isKilled() bool { return s.state.Load() == stateKilled }

// kill stops the stream without sending anything more on it.
func (s *ServerStream) kill(cause error) {
	s.state.CompareAndSwap(stateOpen, stateKilled)
	s.sctx.cancel(cause)
}

func (s *ServerStream) release() {
	s.sctx.cancel(ErrStreamDone)
	if s.stopDL != nil {
		s.stopDL()
	}
}

// serve runs the handler and ends the stream.
func (s *ServerStream) serve(h Handler) {
	var err error
	panicked := false
	if s.ctx.Err() == nil {
		err, panicked = s.call(h)
	}
	if s.state.CompareAndSwap(stateOpen, stateEnded) {
		code, msg := s.status(err, panicked)
		if s.inline.Load() {
			s.conn.writeEndInline(s.id, s.gen, code, msg)
		} else {
			s.conn.writeEnd(s.id, code, msg, true)
		}
		s.conn.removeStream(s)
	}
	s.release()
}

func (s *ServerStream) call(h Handler) (err error, panicked bool) {
	defer func() {
		if r := recover(); r != nil {
			err, panicked = fmt.Errorf("handler for %s panicked: %v", s.Path(), r), true
			s.conn.log.Error("mux: handler panicked", "path", s.Path(), "request_id", s.RequestID(), "panic", r, "stack", string(debug.Stack()))
		}
	}()
	return h.ServeStream(s), false
}

func (s *ServerStream) status(err error, panicked bool) (wire.Code, string) {
	return plane.EndStatus(err, panicked, s.ctx.Err(), s.open.Timeout)
}
