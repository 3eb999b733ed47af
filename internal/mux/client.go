package mux

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loomrt/loom/internal/plane"
	"github.com/loomrt/loom/internal/wire"
)

// Client defaults.
const (
	DefaultInitialWindow = plane.DefaultInitialWindow
	// DefaultMaxWindowFactor is MaxWindow's default, in initial windows:
	// 1 MiB with the default initial window.
	DefaultMaxWindowFactor = 4
	DefaultDialTimeout     = 5 * time.Second
	DefaultStallTimeout    = 400 * time.Millisecond
)

// maxStreamID is the last stream id a client connection uses, the
// protocol's largest; after it the connection drains and the pool dials a
// new one.
const maxStreamID = wire.MaxStreamID

// ClientConfig configures a Pool. The zero value works.
type ClientConfig struct {
	// MaxFrameSize is the largest frame, so the largest response
	// message, the client accepts. Default wire.DefaultMaxFrameSize.
	MaxFrameSize int
	// ConnsPerHost is how many connections the pool keeps to one
	// address; streams go to the least loaded. Default one per 4 CPUs
	// (GOMAXPROCS), at least 1: on many cores one connection's write
	// lock would be taken by every call.
	ConnsPerHost int
	// InitialWindow is the credit in bytes each stream grants the
	// server: at most about this much (plus one message) is buffered per
	// stream when the caller reads slowly. Default DefaultInitialWindow.
	InitialWindow int
	// MaxWindow is the largest window a stream's credit grows to: a
	// stream that has moved a whole window and whose caller then finds
	// nothing to read doubles its window, up to this, so that a fast
	// stream is not held back by the time credit takes to go round.
	// Default DefaultMaxWindowFactor × InitialWindow, or InitialWindow
	// with one CPU (GOMAXPROCS 1): there the caller and the server do not
	// run side by side, so a larger window only spreads a stream over
	// more memory. At or below InitialWindow the window never grows.
	MaxWindow int
	// DialTimeout bounds connecting, the TLS handshake and the preface
	// exchange. Default DefaultDialTimeout.
	DialTimeout time.Duration
	// KeepaliveInterval and KeepaliveTimeout work as in ServerConfig: a
	// connection silent for the interval gets a PING, and one that stays
	// silent for the timeout more fails all its streams with ErrConnLost.
	KeepaliveInterval, KeepaliveTimeout time.Duration
	// StallTimeout is how long a PING may go unanswered, sent after a
	// quarter of it of silence from a server while streams are open on
	// its connection, before the server is deemed stalled (frozen or
	// overloaded, not known dead). Then the streams still waiting for
	// their first response fail with a Reset wrapping ErrStalled (the
	// request got no answer, so it may go elsewhere), OnStall is called,
	// and Open to that address fails at once with ErrUnreachable wrapping
	// ErrStalled until the server is heard from again: connections to it
	// are redialled in the background, never by a caller. Streams that
	// had responded are left to keepalive. Default DefaultStallTimeout;
	// negative: off.
	StallTimeout time.Duration
	// OnStall, if set, is called when the server at addr stops answering
	// while streams are open to it. It must not block.
	OnStall func(addr string)
	// FrameTimeout bounds how long a frame from the server may take to
	// arrive whole once its first byte has. Default DefaultFrameTimeout;
	// negative: no bound.
	FrameTimeout time.Duration
	// TLS, if set, makes the pool speak TLS; ServerName defaults to the
	// host of the address. Set Certificates for mutual TLS.
	TLS *tls.Config
	// GetTLS, if set, is called at each dial for the TLS configuration of
	// that connection, in place of TLS (nil: plain TCP), so that a CA or
	// a client certificate renewed on disk is used by the next
	// connection. An error fails the dial with ErrUnreachable.
	GetTLS func() (*tls.Config, error)
	// Logger receives connection-level events. Default slog.Default().
	Logger *slog.Logger
	// OnDrain, if set, is called when the server at addr sends GOAWAY,
	// so the caller can stop routing new requests there. It runs on the
	// connection's reader goroutine and must not block.
	OnDrain func(addr string)
}

// Pool opens streams on pooled, multiplexed connections. It is safe for
// concurrent use.
type Pool struct {
	cfg ClientConfig
	log *slog.Logger

	mu     sync.Mutex
	hosts  map[string]*host
	conns  map[*clientConn]struct{}
	closed bool
	wg     sync.WaitGroup

	// full maps an address to its usable connections once there are
	// ConnsPerHost of them: Open takes one without the pool's lock.
	full     sync.Map // string -> []*clientConn, never mutated
	isClosed atomic.Bool

	ctx    context.Context // ends at Close: background dials stop
	cancel context.CancelFunc
}

type host struct {
	conns   []*clientConn // usable: not draining, not dead
	dial    *dialCall     // in flight
	drained bool          // the last connection got GOAWAY and none replaced it
	// stalled: a connection to the server stopped answering and it has
	// not been heard from since. Callers are refused at once; only
	// background dials reach it.
	stalled bool
	// forgotten: Forget was called while a dial was in flight; the host
	// goes if that dial fails.
	forgotten bool
}

type dialCall struct {
	done chan struct{}
	err  error
}

// NewPool returns a Pool. It dials lazily, on the first Open to an
// address.
func NewPool(cfg ClientConfig) *Pool {
	if cfg.MaxFrameSize <= 0 {
		cfg.MaxFrameSize = wire.DefaultMaxFrameSize
	}
	cfg.MaxFrameSize = min(max(cfg.MaxFrameSize, wire.MinMaxFrameSize), wire.MaxMaxFrameSize)
	if cfg.ConnsPerHost <= 0 {
		cfg.ConnsPerHost = max(1, runtime.GOMAXPROCS(0)/4)
	}
	if cfg.InitialWindow <= 0 {
		cfg.InitialWindow = DefaultInitialWindow
	}
	cfg.InitialWindow = min(cfg.InitialWindow, wire.MaxWindow)
	if cfg.MaxWindow <= 0 {
		cfg.MaxWindow = cfg.InitialWindow
		if runtime.GOMAXPROCS(0) > 1 {
			cfg.MaxWindow = DefaultMaxWindowFactor * cfg.InitialWindow
		}
	}
	cfg.MaxWindow = min(max(cfg.MaxWindow, cfg.InitialWindow), wire.MaxWindow)
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	cfg.FrameTimeout = frameTimeoutDefault(cfg.FrameTimeout)
	switch {
	case cfg.StallTimeout < 0:
		cfg.StallTimeout = 0
	case cfg.StallTimeout == 0:
		cfg.StallTimeout = DefaultStallTimeout
	}
	cfg.KeepaliveInterval, cfg.KeepaliveTimeout = keepaliveDefaults(cfg.KeepaliveInterval, cfg.KeepaliveTimeout)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Pool{cfg: cfg, log: cfg.Logger, hosts: map[string]*host{}, conns: map[*clientConn]struct{}{}, ctx: ctx, cancel: cancel}
}

// Open opens a stream to the server at addr and sends req. The deadline of
// ctx travels with the request; ending ctx kills the stream. Open returns
// once the request is queued for writing, without waiting for the server.
//
// An error from Open means the request was not sent: it may be retried
// anywhere. It wraps ErrUnreachable if no connection could be made,
// ErrTooLarge if req is above the server's maximum frame size, and is a
// *StreamError if ctx had ended.
func (p *Pool) Open(ctx context.Context, addr string, req Request) (*ClientStream, error) {
	h := wire.OpenHeader{Path: req.Path, Codec: req.Codec, RequestID: req.RequestID, TraceParent: req.TraceParent, Headers: req.Headers}
	n, err := h.Size()
	if err != nil {
		return nil, fmt.Errorf("mux: request to %s at %s: %w", req.Path, addr, err)
	}
	for range 8 {
		if ctx.Err() != nil {
			return nil, ctxError(ctx, true)
		}
		c, err := p.conn(ctx, addr)
		if err != nil {
			return nil, err
		}
		if c.stalled.Load() {
			return nil, p.stalledErr(addr)
		}
		if max := int(c.peer.MaxFrameSize); n+len(req.Payload) > max {
			return nil, fmt.Errorf("%w: request to %s is %d bytes, above the max frame size %d of the server at %s", ErrTooLarge, req.Path, n+len(req.Payload), max, addr)
		}
		if dl, ok := ctx.Deadline(); ok {
			// Measured after dialing, so the server sees the time left.
			if h.Timeout = time.Until(dl); h.Timeout <= 0 {
				return nil, &StreamError{Code: wire.CodeDeadlineExceeded, Message: "deadline passed before the request was sent", BeforeFirstResponse: true, Err: context.DeadlineExceeded}
			}
		}
		st, err := c.open(ctx, &h, req.Payload)
		if err != errConnUnusable {
			return st, err
		}
		p.forget(c, false) // it began draining or died: take another
	}
	return nil, fmt.Errorf("%w: no usable connection to %s", ErrUnreachable, addr)
}

// Draining reports whether the server at addr has sent GOAWAY on the
// pool's connection to it and no new connection has been made since,
// while that connection is open: once it has closed, the pool forgets
// the address.
func (p *Pool) Draining(addr string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	h := p.hosts[addr]
	return h != nil && h.drained
}

// Held returns what the pool keeps: the addresses it has state for and
// its open connections. Both follow the servers called lately; they are
// for tests and diagnostics.
func (p *Pool) Held() (hosts, conns int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.hosts), len(p.conns)
}

// Forget drops what the pool keeps for addr if it has no connection
// there: its callers will not call it again (the instance there left).
// Without it, a server that stopped answering and then went would be
// kept as stalled for good, as only calling it again clears that. A
// dial in flight decides when it ends.
func (p *Pool) Forget(addr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	h := p.hosts[addr]
	switch {
	case h == nil || len(h.conns) > 0:
	case h.dial != nil:
		h.forgotten = true
	default:
		delete(p.hosts, addr)
	}
}

// Close closes every connection, which fails every open stream with
// ErrConnLost, and waits for the connections' goroutines. Open fails with
// ErrPoolClosed afterwards.
func (p *Pool) Close() error {
	p.mu.Lock()
	p.closed = true
	p.isClosed.Store(true)
	p.full.Clear()
	conns := make([]*clientConn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	p.cancel()
	for _, c := range conns {
		c.shutdown(fmt.Errorf("%w: %w", ErrConnLost, ErrPoolClosed))
	}
	p.wg.Wait()
	return nil
}

// conn returns a usable connection to addr, dialing if there is none or
// fewer than ConnsPerHost.
func (p *Pool) conn(ctx context.Context, addr string) (*clientConn, error) {
	if v, ok := p.full.Load(addr); ok && !p.isClosed.Load() {
		return leastLoaded(v.([]*clientConn)), nil
	}
	p.mu.Lock()
	for {
		if p.closed {
			p.mu.Unlock()
			return nil, ErrPoolClosed
		}
		h := p.hosts[addr]
		if h == nil {
			h = &host{}
			p.hosts[addr] = h
		}
		if h.stalled && len(h.conns) == 0 {
			if h.dial == nil {
				p.redial(addr, h)
			}
			p.mu.Unlock()
			return nil, p.stalledErr(addr)
		}
		if h.dial == nil && len(h.conns) < p.cfg.ConnsPerHost && !h.stalled {
			call := &dialCall{done: make(chan struct{})}
			h.dial = call
			p.mu.Unlock()
			c, err := p.dial(ctx, addr)
			p.mu.Lock()
			h.dial = nil
			call.err = err
			close(call.done)
			if err == nil && p.closed {
				c.nc.Close()
				err = ErrPoolClosed
			}
			if err != nil {
				if len(h.conns) == 0 && !h.drained {
					delete(p.hosts, addr)
				}
				p.mu.Unlock()
				return nil, err
			}
			p.adopt(addr, h, c)
			p.mu.Unlock()
			return c, nil
		}
		if len(h.conns) > 0 {
			best := leastLoaded(h.conns)
			p.mu.Unlock()
			return best, nil
		}
		call := h.dial
		p.mu.Unlock()
		select {
		case <-call.done:
			// A dial that failed on its caller's context says nothing
			// about the address: dial again with ours.
			if call.err != nil && !errors.Is(call.err, context.Canceled) && !errors.Is(call.err, context.DeadlineExceeded) {
				return nil, call.err
			}
		case <-ctx.Done():
			return nil, ctxError(ctx, true)
		}
		p.mu.Lock()
	}
}

// adopt makes c a usable connection of h and starts its goroutines;
// p.mu is held.
func (p *Pool) adopt(addr string, h *host, c *clientConn) {
	h.conns = append(h.conns, c)
	p.publish(addr, h)
	h.drained, h.forgotten = false, false
	p.conns[c] = struct{}{}
	p.wg.Add(2)
	go func() {
		defer p.wg.Done()
		c.writeLoop()
	}()
	go func() {
		defer p.wg.Done()
		c.readLoop()
	}()
}

// stalledErr is the error of an Open refused because the server at addr
// stopped answering.
func (p *Pool) stalledErr(addr string) error {
	return fmt.Errorf("%w: %w: the server at %s did not answer a PING within %v while streams waited on it (frozen or overloaded); it is redialled in the background",
		ErrUnreachable, ErrStalled, addr, p.cfg.StallTimeout)
}

// setStalled records that a connection to addr stopped answering, or
// was heard from again.
func (p *Pool) setStalled(addr string, on bool) {
	p.mu.Lock()
	if h := p.hosts[addr]; h != nil {
		h.stalled = on
	}
	p.mu.Unlock()
}

// redial dials a stalled server in the background, so that no caller
// waits on a server that may be frozen (its kernel accepts the
// connection, the preface never comes); p.mu is held. A dial that
// succeeds makes the address usable again; one refused says the server
// is dead rather than frozen, and the next Open dials as usual.
func (p *Pool) redial(addr string, h *host) {
	call := &dialCall{done: make(chan struct{})}
	h.dial = call
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		c, err := p.dial(p.ctx, addr)
		p.mu.Lock()
		defer p.mu.Unlock()
		h.dial = nil
		call.err = err
		close(call.done)
		if err == nil && p.closed {
			c.nc.Close()
			return
		}
		if err != nil {
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() || h.forgotten {
				h.stalled = false
				if len(h.conns) == 0 && (!h.drained || h.forgotten) && p.hosts[addr] == h {
					delete(p.hosts, addr)
				}
			}
			p.log.Debug("mux: redialling a server that stopped answering failed", "addr", addr, "err", err)
			return
		}
		h.stalled = false
		p.adopt(addr, h, c)
		p.log.Info("mux: server that stopped answering is reachable again", "addr", addr)
	}()
}

func (p *Pool) dial(ctx context.Context, addr string) (*clientConn, error) {
	deadline := time.Now().Add(p.cfg.DialTimeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	cfg := p.cfg.TLS
	if p.cfg.GetTLS != nil {
		var err error
		if cfg, err = p.cfg.GetTLS(); err != nil {
			return nil, fmt.Errorf("%w: TLS with %s: %w", ErrUnreachable, addr, err)
		}
	}
	d := net.Dialer{Deadline: deadline}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%w: dial %s: %w", ErrUnreachable, addr, err)
	}
	if cfg != nil {
		if cfg.ServerName == "" {
			cfg = cfg.Clone()
			cfg.ServerName, _, _ = net.SplitHostPort(addr)
		}
		tc := tls.Client(nc, cfg)
		hctx, cancel := context.WithDeadline(ctx, deadline)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			nc.Close()
			return nil, fmt.Errorf("%w: TLS handshake with %s: %w", ErrUnreachable, addr, err)
		}
		nc = tc
	}
	local := wire.Preface{Version: wire.Version, MaxFrameSize: uint32(p.cfg.MaxFrameSize), InitialWindow: uint32(p.cfg.InitialWindow)}
	peer, err := handshake(nc, local, deadline)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("%w: preface exchange with %s: %w", ErrUnreachable, addr, err)
	}
	lim := limits{frameTimeout: p.cfg.FrameTimeout, maxPongs: DefaultMaxQueuedPongs, stall: p.cfg.StallTimeout}
	c := &clientConn{
		conn:    newConn(nc, peer, p.cfg.MaxFrameSize, p.cfg.KeepaliveInterval, p.cfg.KeepaliveTimeout, lim, p.log),
		pool:    p,
		addr:    addr,
		window:  int64(p.cfg.InitialWindow),
		maxWin:  int64(p.cfg.MaxWindow),
		streams: map[uint32]*ClientStream{},
		nextID:  1,
	}
	c.lim.busy = func() bool { return c.load.Load() > 0 }
	c.lim.opened = func() uint32 {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.nextID - 1
	}
	c.lim.onStall = c.onStall
	c.lim.onAlive = c.onAlive
	c.reader = backgroundReader
	c.bgWake = make(chan struct{}, 1)
	if c.kaInterval > 0 && c.kaTimeout > 0 {
		c.callerReads = true
		c.lim.onTick = c.tickRead
	}
	if lim.frameTimeout > 0 {
		c.rd.SetFrameTimeout(lim.frameTimeout, c.setReadDeadline)
	}
	c.rd.SetInterrupt(c.interrupted)
	return c, nil
}

// leastLoaded returns the connection with the fewest open streams,
// preferring one whose server answers.
func leastLoaded(conns []*clientConn) *clientConn {
	best := conns[0]
	for _, c := range conns[1:] {
		if s, bs := c.stalled.Load(), best.stalled.Load(); s != bs {
			if bs {
				best = c
			}
		} else if c.load.Load() < best.load.Load() {
			best = c
		}
	}
	return best
}

// publish updates the lock-free view of addr's connections; p.mu is held.
// h.conns is never mutated in place, so the view can share it.
func (p *Pool) publish(addr string, h *host) {
	if len(h.conns) >= p.cfg.ConnsPerHost && !p.closed {
		p.full.Store(addr, h.conns)
	} else {
		p.full.Delete(addr)
	}
}

// forget removes c from the usable connections of its host; drained says
// it is because of a GOAWAY.
func (p *Pool) forget(c *clientConn, drained bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	h := p.hosts[c.addr]
	if h == nil {
		return
	}
	for i, x := range h.conns {
		if x == c {
			h.conns = append(h.conns[:i:i], h.conns[i+1:]...)
			p.publish(c.addr, h)
			if drained && len(h.conns) == 0 {
				h.drained = true
			}
			break
		}
	}
	if len(h.conns) == 0 && h.dial == nil && !h.drained && !h.stalled {
		delete(p.hosts, c.addr)
	}
}

// errConnUnusable makes Open pick another connection.
var errConnUnusable = errors.New("mux: connection unusable")

// clientConn is one connection of a Pool.
type clientConn struct {
	*conn
	pool   *Pool
	addr   string
	window int64  // the initial window of its streams
	maxWin int64  // the largest window a stream grows to
	nextID uint32 // guarded by wmu and mu: ids go on the wire in order
	load   atomic.Int32
	// stalled: the server did not answer a PING while streams waited,
	// and has sent nothing since.
	stalled atomic.Bool

	mu       sync.Mutex
	streams  map[uint32]*ClientStream
	draining bool
	goAway   string // the server's GOAWAY, for error messages

	// The read role (see readFor): whoever holds it reads the socket and
	// delivers every stream's frames. reader is the caller holding it,
	// backgroundReader when readLoop does, nil when nobody reads: the
	// connection holds no stream, and the next caller to wait reads for
	// itself. Guarded by mu.
	reader *ClientStream
	// rerr is a protocol error a caller met while reading; readLoop ends
	// the connection with it. Guarded by mu.
	rerr error
	// callerReads: callers may take the read role. It needs keepalive's
	// ticks, which give an idle connection its reader back.
	callerReads bool
	bgWake      chan struct{} // wakes readLoop to take the role; cap 1

	// intr asks the caller holding the read role to look up from a
	// blocked read (its stream was killed): a past read deadline goes
	// with it. Guarded by dmu, as every read deadline is.
	dmu  sync.Mutex
	intr bool
}

// backgroundReader marks the read role as readLoop's.
var backgroundReader = new(ClientStream)

func (c *clientConn) open(ctx context.Context, h *wire.OpenHeader, payload []byte) (*ClientStream, error) {
	st := newClientStream(c)
	if err := c.begin(ctx, true); err != nil {
		if ctx.Err() != nil {
			return nil, ctxError(ctx, true)
		}
		return nil, errConnUnusable
	}
	// wmu is held from here to commit.
	c.mu.Lock()
	if c.draining || c.nextID > maxStreamID {
		c.draining = true
		c.mu.Unlock()
		c.commit()
		c.pool.forget(c, false)
		return nil, errConnUnusable
	}
	// The id is written under the stream's lock too: a reader that kept
	// this stream from an earlier call checks it there (see push). Only
	// here does a stream's lock nest inside c.mu, for a stream no
	// caller's Recv holds yet; takeRead nests them the other way, for
	// the caller's own stream.
	st.mu.Lock()
	st.id = c.nextID
	st.mu.Unlock()
	c.nextID++
	c.streams[st.id] = st
	c.load.Add(1)
	c.mu.Unlock()
	if c.slowTick.Load() && c.slowTick.Swap(false) {
		// Keepalive checks slowly on an idle connection: bring it to
		// the pace that notices a frozen server.
		notify(c.poke)
	}
	err := c.w.Open(st.id, h, payload)
	c.commitFlush()
	if err != nil {
		c.removeStream(st.id)
		return nil, err
	}
	if done := ctx.Done(); done != nil {
		st.ctx, st.done = ctx, done
		stop := context.AfterFunc(ctx, func() { st.abort(ctxError(ctx, false)) })
		st.mu.Lock()
		st.watched = true
		ended := st.err != nil
		if !ended {
			st.stopWatch = stop
		}
		st.mu.Unlock()
		if ended && stop() {
			st.mu.Lock()
			st.watched = false
			st.mu.Unlock()
		}
	}
	return st, nil
}

// onStall runs on the writer when the server stopped answering while
// streams are open: the streams still waiting for their first response
// fail, so that their callers can go elsewhere, and new streams are
// refused until the server is heard from again.
func (c *clientConn) onStall() {
	c.stalled.Store(true)
	c.pool.setStalled(c.addr, true)
	// First the caller's view, so that the failed streams' retries
	// already avoid the address.
	if f := c.pool.cfg.OnStall; f != nil {
		f(c.addr)
	}
	cause := fmt.Errorf("%w: the server at %s did not answer a PING within %v", ErrStalled, c.addr, c.pool.cfg.StallTimeout)
	c.mu.Lock()
	streams := maps.Clone(c.streams)
	c.mu.Unlock()
	failed := 0
	for id, st := range streams {
		if st.killIf(c, id, &StreamError{Code: wire.CodeReset, Message: cause.Error(), Err: cause}) {
			failed++
		}
	}
	c.log.Warn("mux: server stopped answering; streams waiting for their first response failed, new ones go elsewhere",
		"addr", c.addr, "ping_unanswered", c.pool.cfg.StallTimeout, "failed", failed, "still_open", len(streams)-failed)
}

// onAlive runs on the writer when a stalled server is heard from again.
func (c *clientConn) onAlive() {
	c.stalled.Store(false)
	c.pool.setStalled(c.addr, false)
}

// readLoop is the connection's background reader. It reads while no
// caller does: on a new connection, while streams are open whose callers
// are not reading, and on an idle connection once keepalive ticks (to see
// the server's GOAWAY, PINGs and close). A lone caller reads its own
// response (readFor), as a raw TCP client would, saving the hand-off from
// this goroutine to it, which on several cores also woke another thread.
// When the connection ends, here or in a caller's read, readLoop fails
// its streams.
func (c *clientConn) readLoop() {
	var err error
	woken := false // the role starts as readLoop's: dial gives it
	closed := c.done
	for {
		c.mu.Lock()
		if woken && c.reader == nil {
			c.reader = backgroundReader
		}
		mine := c.reader == backgroundReader
		err = c.rerr
		c.mu.Unlock()
		if err == nil && mine {
			err = c.readBackground()
		}
		if err != nil {
			break
		}
		select {
		case <-c.bgWake:
		case <-closed:
			// If a caller is reading, it meets the closed socket and
			// hands the role back through bgWake.
			closed = nil
		}
		woken = true
	}
	if errors.Is(err, wire.ErrFrameTimeout) {
		c.tripped("frame_timeout", err)
	}
	if errors.Is(err, wire.ErrProtocol) {
		c.log.Warn("mux: server broke the protocol", "addr", c.addr, "err", err)
		c.fail(0, wire.CodeProtocol, err)
	}
	c.shutdown(fmt.Errorf("%w: reading from %s: %w", ErrConnLost, c.addr, err))
	<-c.done
	cause := c.err
	c.mu.Lock()
	if c.goAway != "" && !errors.Is(cause, ErrPoolClosed) {
		cause = fmt.Errorf("%w (after GOAWAY: %s)", cause, c.goAway)
	}
	streams := c.streams
	c.streams = nil
	c.mu.Unlock()
	for id, st := range streams {
		st.fail(c, id, cause)
	}
	c.pool.forget(c, false)
	c.pool.ended(c)
}

// ended removes c, whose connection has ended, from the pool, and its
// host if nothing is left there: a server that drained and went is
// forgotten once its last connection has closed, or the pool would keep
// every address it ever called.
func (p *Pool) ended(c *clientConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
	if h := p.hosts[c.addr]; h != nil && len(h.conns) == 0 && h.dial == nil && !h.stalled {
		delete(p.hosts, c.addr)
	}
}

// readBackground reads for every stream until the connection has none
// and callers may read, or an error ends it.
func (c *clientConn) readBackground() error {
	// The stream of the last DATA frame: a stream's DATA tends to come
	// in runs. Ids are never reused on a connection, and a stream that
	// left the map has ended (push drops what still comes for it, and
	// what comes for an earlier call of a reused stream), so a cached
	// stream is as good as a lookup.
	var last lastStream
	for {
		f, err := c.rd.ReadFrame()
		if err == wire.ErrInterrupted {
			continue // meant for a caller that held the role before
		}
		if err != nil {
			return err
		}
		if err := c.dispatch(f, &last); err != nil {
			return err
		}
		if c.callerReads && c.load.Load() == 0 && !c.rd.FrameBuffered() {
			// A closed connection is read on until its end: readLoop has
			// seen the close already, and nothing would give it the role
			// back (no caller, no keepalive tick), so it would never fail
			// the streams and return.
			c.mu.Lock()
			idle := len(c.streams) == 0 && !closed(c.done)
			if idle {
				c.reader = nil
			}
			c.mu.Unlock()
			if idle {
				return nil
			}
		}
	}
}

// takeRead gives s the read role if nobody holds it; s.mu is held.
func (c *clientConn) takeRead(s *ClientStream) bool {
	if !c.callerReads {
		return false
	}
	c.mu.Lock()
	free := c.reader == nil
	if free {
		c.reader = s
	}
	c.mu.Unlock()
	return free
}

// readFor reads the connection for s's caller, which holds the read role,
// until s has a message or has ended, delivering what other streams get
// on the way. Then it gives the role up: to nobody if the connection holds
// no stream, else to readLoop, since open streams must be read for.
func (c *clientConn) readFor(s *ClientStream) {
	// The caller's own stream is the likeliest to have frames: its first
	// DATA needs no lookup in the connection's map. Should s have been
	// killed meanwhile, push and end see it under its lock and drop the
	// frames, as a lookup finding no stream would.
	last := lastStream{st: s, id: s.id}
	for {
		f, err := c.rd.ReadFrame()
		switch {
		case err == wire.ErrInterrupted:
			// s was killed, or the request was for an earlier holder.
		case err != nil:
			// The Reader keeps the error: readLoop reads it again and
			// ends the connection.
			c.handRead(nil)
			return
		default:
			if err := c.dispatch(f, &last); err != nil {
				c.handRead(err)
				return
			}
			if c.rd.FrameBuffered() {
				continue
			}
		}
		if s.delivered() {
			c.leaveRead()
			return
		}
	}
}

// leaveRead gives up the read role of a caller whose stream has what it
// waited for: to nobody if the connection holds no stream and is open,
// else to readLoop. A closed connection's readLoop may be waiting for the
// role to come back (it saw the close while this caller read), and no
// keepalive tick will come to give it back: it must be woken.
func (c *clientConn) leaveRead() {
	c.mu.Lock()
	c.reader = nil
	busy := len(c.streams) > 0 || closed(c.done)
	if busy {
		c.reader = backgroundReader
	}
	c.mu.Unlock()
	if busy {
		c.wakeBackground()
	}
}

// handRead hands the read role to readLoop, with the protocol error that
// ends the connection if err is not nil.
func (c *clientConn) handRead(err error) {
	c.mu.Lock()
	if err != nil && c.rerr == nil {
		c.rerr = err
	}
	c.reader = backgroundReader
	c.mu.Unlock()
	c.wakeBackground()
}

func (c *clientConn) wakeBackground() { notify(c.bgWake) }

// tickRead runs at keepalive's ticks: an idle connection nobody reads gets
// readLoop reading it, so that a server's GOAWAY or close is seen before
// the next caller needs the connection.
func (c *clientConn) tickRead() {
	c.mu.Lock()
	free := c.reader == nil
	c.mu.Unlock()
	if free {
		c.wakeBackground()
	}
}

// interrupt cuts short the read of s's caller if it holds the read role,
// so that Recv returns s's end at once.
func (c *clientConn) interrupt(s *ClientStream) {
	c.mu.Lock()
	reading := c.reader == s
	c.mu.Unlock()
	if !reading {
		return
	}
	c.dmu.Lock()
	c.intr = true
	c.nc.SetReadDeadline(aLongTimeAgo)
	c.dmu.Unlock()
}

// interrupted reports to the Reader whether a read that timed out was
// interrupted, and clears the request and its deadline.
func (c *clientConn) interrupted() bool {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if !c.intr {
		return false
	}
	c.intr = false
	c.nc.SetReadDeadline(time.Time{})
	return true
}

// setReadDeadline sets the Reader's frame deadlines, keeping an
// interrupt's past deadline until the reader has seen it.
func (c *clientConn) setReadDeadline(t time.Time) error {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if c.intr {
		t = aLongTimeAgo
	}
	return c.nc.SetReadDeadline(t)
}

var aLongTimeAgo = time.Unix(1, 0)

// lastStream is a reader's cache of the stream of its last DATA frame,
// with the id it had then: the stream may since have ended and serve
// another call (Release), so its id is read only under its lock.
type lastStream struct {
	st *ClientStream
	id uint32
}

// dispatch delivers one frame from the server; last caches the stream of
// the reader's last DATA frame.
func (c *clientConn) dispatch(f wire.Frame, last *lastStream) error {
	switch f.Type {
	case wire.TypeData:
		if last.st == nil || last.id != f.Stream {
			last.st, last.id = c.lookup(f.Stream), f.Stream
		}
		if last.st != nil {
			return last.st.push(c, f.Stream, f.Payload, c.rd)
		}
	case wire.TypeEnd:
		code, msg, _ := wire.ParseEnd(f.Payload)
		st := last.st
		if st == nil || last.id != f.Stream {
			st = c.lookup(f.Stream)
		} else {
			last.st = nil
		}
		if st != nil {
			// Out of the map before its caller can see the end, as a
			// stream it may release and reuse must be.
			c.removeStream(f.Stream)
			st.end(c, f.Stream, code, msg)
		}
	case wire.TypePing:
		c.writePong(f.Payload)
	case wire.TypePong:
	case wire.TypeGoAway:
		last, code, reason, _ := wire.ParseGoAway(f.Payload)
		c.handleGoAway(last, code, string(reason))
	default:
		return fmt.Errorf("%w: %v frames are not sent by servers (stream %d)", wire.ErrProtocol, f.Type, f.Stream)
	}
	return nil
}

func (c *clientConn) lookup(id uint32) *ClientStream {
	c.mu.Lock()
	st := c.streams[id]
	c.mu.Unlock()
	return st
}

// removeStream forgets stream id; a draining connection closes once it has
// no streams.
func (c *clientConn) removeStream(id uint32) {
	c.mu.Lock()
	_, ok := c.streams[id]
	if ok {
		delete(c.streams, id)
		c.load.Add(-1)
	}
	idle := ok && c.draining && len(c.streams) == 0
	c.mu.Unlock()
	if idle {
		c.closeAfterFlush(true, fmt.Errorf("%w: drained", ErrConnLost))
	}
}

func (c *clientConn) handleGoAway(last uint32, code wire.Code, reason string) {
	if code == wire.CodeOK {
		// The server closes this connection, not itself: new streams
		// go to a new connection; this one closes once its streams end.
		c.mu.Lock()
		c.draining = true
		c.goAway = fmt.Sprintf("%v, last stream %d: %s", code, last, reason)
		idle := len(c.streams) == 0
		c.mu.Unlock()
		c.log.Debug("mux: server closes an idle connection", "addr", c.addr, "reason", reason)
		c.pool.forget(c, false)
		if idle {
			c.closeAfterFlush(true, fmt.Errorf("%w: closed at the server's request (%s)", ErrConnLost, reason))
		}
		return
	}
	c.mu.Lock()
	c.draining = true
	c.goAway = fmt.Sprintf("%v, last stream %d: %s", code, last, reason)
	idle := len(c.streams) == 0
	c.mu.Unlock()
	if code != wire.CodeDraining {
		c.log.Warn("mux: server sent GOAWAY", "addr", c.addr, "code", code, "reason", reason)
	}
	c.pool.forget(c, true)
	if f := c.pool.cfg.OnDrain; f != nil {
		f(c.addr)
	}
	if idle {
		c.closeAfterFlush(true, fmt.Errorf("%w: drained", ErrConnLost))
	}
}

func (c *clientConn) writeFrame(id uint32, t wire.Type, arg uint32) {
	if c.begin(context.Background(), false) != nil {
		return
	}
	if t == wire.TypeCredit {
		c.w.Credit(id, arg)
	} else {
		c.w.Cancel(id, wire.Flags(arg))
	}
	c.commitFlush()
}

// ctxError is the stream error for an ended context.
func ctxError(ctx context.Context, before bool) *StreamError { return plane.CtxError(ctx, before) }

// ClientStream is the caller's side of one stream. Recv must be called
// from one goroutine at a time; Stop and Cancel may be called from any.
type ClientStream struct {
	c *clientConn

	window atomic.Int64  // credit the server has left, by our count
	flags  atomic.Uint32 // streamEnded, streamAbortNow: read without the lock
	// id never changes while the stream serves a call; it sits here to
	// pack with flags, so that a stream (one per call) fits the 192-byte
	// size class. It is written under mu (see newClientStream).
	id uint32

	// The caller's context, if it can end: Recv checks it, so that a
	// stream whose context has ended returns the end at once, before
	// the context's AfterFunc has run.
	ctx  context.Context
	done <-chan struct{}

	// Owned by Recv:
	out   *recvBuf // DATA frames (header, payload) being read
	off   int      // read offset in out
	owed  int64    // bytes consumed and not yet granted back
	moved int64    // bytes consumed since the window last grew
	// win is the stream's window: the credit it grants in all. Recv
	// writes it, under mu; grow reads it under mu.
	win int64

	mu        sync.Mutex
	stopWatch func() bool // stops the context watch; nil without one
	in        *recvBuf    // DATA frames appended by the reader
	err       error       // how the stream ended: io.EOF or a *StreamError; nil while open
	responded bool        // a DATA frame arrived
	waiting   bool
	stopSent  bool
	byEnd     bool      // err came from the server's END: nothing but its caller touches the stream now
	watched   bool      // a context watch was set and may still run (its stop did not report it stopped)
	cond      sync.Cond // Recv waits on it; L is &mu
}

// The bits of ClientStream.flags.
const (
	streamEnded    = 1 << iota // err is set
	streamAbortNow             // err is delivered before buffered messages
)

func (s *ClientStream) isEnded() bool    { return s.flags.Load()&streamEnded != 0 }
func (s *ClientStream) abortFirst() bool { return s.flags.Load()&streamAbortNow != 0 }

// recvBuf holds received messages. Buffers are pooled: a unary call
// borrows one for its response instead of allocating, and a stream's
// buffer, grown to hold what a fast server sends while its caller is not
// running, goes back to a list of large buffers for the next stream
// instead of being grown anew (and collected) by every stream.
type recvBuf struct{ b []byte }

const (
	// maxPooledRecvBuf is the largest buffer in the pool every stream
	// starts from.
	maxPooledRecvBuf = 64 << 10
	// maxLargeRecvBuf is the largest buffer kept in the list of grown
	// ones: a stream grows its buffer to its window and one pooled
	// buffer's size, about 1.06 MiB at the default MaxWindow.
	maxLargeRecvBuf = 4 << 20
	// maxIdleLargeRecvBytes bounds the bytes of the grown buffers kept
	// for later streams: seven at the default MaxWindow.
	maxIdleLargeRecvBytes = 8 << 20
)

var (
	recvBufs = sync.Pool{New: func() any { return &recvBuf{b: make([]byte, 0, 512)} }}
	// largeRecvBufs is a list a collection does not empty, unlike a
	// sync.Pool: a fast stream's buffer is a megabyte, and with a pool
	// the first streams after each collection made theirs anew, a
	// megabyte of garbage (zeroed when made) every few streams of a
	// process that streams fast enough to collect often
	// (docs/performance.md, the eighth pass).
	largeRecvBufs = bufList{max: maxIdleLargeRecvBytes}
)

// putRecvBuf returns b to the pool its size belongs to.
func putRecvBuf(b *recvBuf) {
	b.b = b.b[:0]
	switch c := cap(b.b); {
	case c <= maxPooledRecvBuf:
		recvBufs.Put(b)
	case c <= maxLargeRecvBuf:
		largeRecvBufs.put(b)
	}
}

// bufList keeps up to max bytes of buffers, the last put first out.
type bufList struct {
	mu    sync.Mutex
	bufs  []*recvBuf
	bytes int
	max   int
}

// get takes the most recently put buffer of at least n bytes, or returns
// nil if none is that large.
func (l *bufList) get(n int) *recvBuf {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := len(l.bufs) - 1; i >= 0; i-- {
		if b := l.bufs[i]; cap(b.b) >= n {
			l.bufs = slices.Delete(l.bufs, i, i+1)
			l.bytes -= cap(b.b)
			return b
		}
	}
	return nil
}

// put keeps b, letting the oldest buffers go while the list would hold
// more than max bytes.
func (l *bufList) put(b *recvBuf) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if cap(b.b) > l.max {
		return
	}
	for l.bytes+cap(b.b) > l.max {
		l.bytes -= cap(l.bufs[0].b)
		l.bufs = slices.Delete(l.bufs, 0, 1)
	}
	l.bufs = append(l.bufs, b)
	l.bytes += cap(b.b)
}

// grow makes room for n more bytes in s.in, whose bytes so far are b
// (not yet stored in s.in.b), and returns them; s.mu is held. Beyond
// the small pool's size it takes a buffer from the list of large ones,
// or makes one as large as the stream can need: credit bounds what waits
// unread to the window and one message, so buffers of one size serve
// every stream with that window.
func (s *ClientStream) grow(b []byte, n int) []byte {
	want := len(b) + n
	large := int(s.win) + maxPooledRecvBuf
	if max(want, 2*cap(b)) <= maxPooledRecvBuf || want > large || large > maxLargeRecvBuf {
		return slices.Grow(b, n)
	}
	v := largeRecvBufs.get(want)
	if v == nil {
		v = &recvBuf{b: make([]byte, 0, large)}
	}
	nb := append(v.b[:0], b...)
	old := s.in
	old.b = b
	v.b = nil
	s.in = v
	putRecvBuf(old)
	return nb
}

// release returns the stream's buffers to the pool; s.mu is held and the
// stream has ended, so push will not touch them again.
func (s *ClientStream) release() {
	for _, b := range [2]*recvBuf{s.in, s.out} {
		if b != nil {
			putRecvBuf(b)
		}
	}
	s.in, s.out, s.off = nil, nil, 0
}

// Recv returns the next response message. It returns io.EOF after the last
// one when the stream ended with OK, and otherwise a *StreamError: the
// code and message the server ended it with, Cancelled or DeadlineExceeded
// (wrapping the context's error) when the caller ended it (at once: a
// Recv after the context ended returns its end), or Reset
// wrapping ErrConnLost when its connection died. Messages that arrived
// before an END or a connection loss are returned first.
//
// The returned slice is valid until the next call to Recv or Close.
func (s *ClientStream) Recv() ([]byte, error) {
	for {
		// Messages already swapped into out are read without the lock:
		// only Recv touches out, and the reader appends to in. The lock
		// is taken once per batch of messages, not once per message.
		if s.done != nil && !s.abortFirst() && closed(s.done) {
			s.abort(ctxError(s.ctx, false))
		}
		if s.out != nil && s.off < len(s.out.b) && !s.abortFirst() {
			// A DATA frame as it came: its header was checked by the
			// reader.
			b := s.out.b
			n := int(binary.BigEndian.Uint32(b[s.off+6:]))
			start := s.off + wire.HeaderSize
			s.off = start + n
			p := b[start:s.off:s.off]
			s.owed += int64(wire.HeaderSize + n)
			s.moved += int64(wire.HeaderSize + n)
			if s.owed >= s.win/2 && !s.isEnded() {
				grant := s.owed
				s.owed = 0
				s.window.Add(grant)
				s.c.writeFrame(s.id, wire.TypeCredit, uint32(grant))
			}
			return p, nil
		}
		s.mu.Lock()
		if s.abortFirst() {
			s.release()
			err := s.err
			s.mu.Unlock()
			return nil, err
		}
		if s.in != nil && len(s.in.b) > 0 {
			// The message returned last lives in out: it is valid until
			// this call, so out can take new messages now.
			s.in, s.out, s.off = s.out, s.in, 0
			if s.in != nil {
				s.in.b = s.in.b[:0]
			}
			s.mu.Unlock()
			continue
		}
		if s.err != nil {
			s.release()
			err := s.err
			s.mu.Unlock()
			return nil, err
		}
		if grant := s.widen(); grant > 0 {
			s.mu.Unlock()
			s.window.Add(grant)
			s.c.writeFrame(s.id, wire.TypeCredit, uint32(grant))
			continue
		}
		if s.c.takeRead(s) {
			s.mu.Unlock()
			s.c.readFor(s)
			continue
		}
		s.waiting = true
		s.cond.Wait()
		s.mu.Unlock()
	}
}

// widen doubles the stream's window, up to the connection's maxWin, when
// its caller is about to wait for a message after the stream moved a whole
// window since the window last grew: the server then likely waits for
// credit too, the window being smaller than what is in flight while credit
// goes round (the caller's grant, the server's reader and handler, the
// writes and reads between). It returns the credit to grant now, what was
// owed and the growth; 0 if the window stays. A stream that never moves a
// window (a unary call, a few tokens a second) never grows. s.mu is held.
func (s *ClientStream) widen() int64 {
	if s.moved < s.win || s.win >= s.c.maxWin {
		return 0
	}
	more := min(s.win, s.c.maxWin-s.win)
	s.win += more
	s.moved = 0
	grant := s.owed + more
	s.owed = 0
	return grant
}

// delivered reports whether Recv has something to return: a message or
// the stream's end.
func (s *ClientStream) delivered() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err != nil || (s.in != nil && len(s.in.b) > 0)
}

// closed reports whether ch is closed; nothing is ever sent on it.
func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// Stop asks the server to finish the stream gracefully: the handler sees
// Stopped and ends the stream soon; Recv returns what it still sends, then
// the end.
func (s *ClientStream) Stop() {
	s.mu.Lock()
	send := s.err == nil && !s.stopSent
	s.stopSent = true
	s.mu.Unlock()
	if send {
		s.c.writeFrame(s.id, wire.TypeCancel, uint32(wire.FlagStop))
	}
}

// Cancel kills the stream: the server cancels the handler's context and
// sends nothing more, and Recv returns a Cancelled *StreamError at once.
// It does nothing if the stream has already ended.
func (s *ClientStream) Cancel() {
	if s.isEnded() {
		return // the common case, after the end: no lock
	}
	s.mu.Lock()
	ended := s.err != nil
	s.mu.Unlock()
	if !ended {
		s.abort(&StreamError{Code: wire.CodeCancelled, Message: "cancelled by the caller"})
	}
}

// Close releases the stream, killing it if it has not ended. Call it when
// done with every stream, also after Recv returned an error, and not
// concurrently with Recv: the last message Recv returned becomes invalid.
func (s *ClientStream) Close() error {
	s.Cancel()
	s.mu.Lock()
	s.release()
	s.mu.Unlock()
	return nil
}

// Release is Close for a caller that keeps no reference to the stream:
// the stream may serve a later call on the pool, which saves a unary call
// an allocation. It must be the caller's last use of s, and only for a
// caller that gave s to no one else (a context.AfterFunc calling Stop
// must have been stopped). A stream that was cancelled, killed or failed,
// or whose context watch may still run, is not reused.
func (s *ClientStream) Release() {
	s.Cancel()
	s.mu.Lock() // Close's release and the reuse check, under one lock
	s.release()
	reuse := s.reusable()
	s.mu.Unlock()
	if reuse {
		clientStreams.Put(s)
	}
}

// reusable reports whether nothing but its caller can still reach s: it
// ended by the server's END, so no kill or connection loss touched it,
// and no context watch may still run. s.mu is held.
func (s *ClientStream) reusable() bool { return s.byEnd && !s.watched && s.stopWatch == nil }

// clientStreams holds released streams for later calls.
var clientStreams sync.Pool

// newClientStream returns a stream for a call on c: a released one,
// reset under its lock (a reader may still hold it from its earlier
// call, and checks its connection and id under that lock), or a new one.
func newClientStream(c *clientConn) *ClientStream {
	s, _ := clientStreams.Get().(*ClientStream)
	if s == nil {
		s = &ClientStream{c: c, win: c.window}
		s.window.Store(c.window)
		s.cond.L = &s.mu
		return s
	}
	s.mu.Lock()
	s.c, s.win, s.id = c, c.window, 0
	s.window.Store(c.window)
	s.flags.Store(0)
	s.ctx, s.done = nil, nil
	s.out, s.off, s.owed, s.moved = nil, 0, 0, 0
	s.stopWatch, s.in, s.err = nil, nil, nil
	s.responded, s.waiting, s.stopSent, s.byEnd, s.watched = false, false, false, false, false
	s.mu.Unlock()
	return s
}

// Buffered reports whether Recv would return without waiting: a message
// or the stream's end has arrived and not yet been returned. It reads
// nothing from the connection. Like Recv, it is for the stream's caller.
func (s *ClientStream) Buffered() bool {
	if s.out != nil && s.off < len(s.out.b) {
		return true
	}
	if s.done != nil && closed(s.done) {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return (s.in != nil && len(s.in.b) > 0) || s.err != nil || s.abortFirst()
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

// push queues a DATA payload, and the DATA frames for the same stream
// that rd holds already read, under one lock and with one wake-up of
// Recv; called by the reader. The buffer keeps the frames as they came
// (header, payload): the frames after the first are copied in one piece
// (wire.Reader.DataRun), and the run's credit is taken from the window
// once.
func (s *ClientStream) push(c *clientConn, id uint32, p []byte, rd *wire.Reader) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil || s.c != c || s.id != id {
		// Cancelled here (the server will stop), or a reader's cached
		// stream released since and serving another call.
		return nil
	}
	window := s.window.Load()
	if window <= 0 {
		return fmt.Errorf("%w: DATA on stream %d without credit", wire.ErrProtocol, s.id)
	}
	if s.in == nil {
		s.in = recvBufs.Get().(*recvBuf)
	}
	b := s.in.b
	n := wire.HeaderSize + len(p)
	if cap(b)-len(b) < n {
		b = s.grow(b, n)
	}
	b = append(b, byte(wire.TypeData), 0, byte(s.id>>24), byte(s.id>>16), byte(s.id>>8), byte(s.id),
		byte(len(p)>>24), byte(len(p)>>16), byte(len(p)>>8), byte(len(p)))
	b = append(b, p...)
	used := int64(n)
	if run := rd.DataRun(s.id, window-used); len(run) > 0 {
		if cap(b)-len(b) < len(run) {
			b = s.grow(b, len(run))
		}
		b = append(b, run...)
		used += int64(len(run))
	}
	s.in.b = b
	s.window.Add(-used)
	s.responded = true
	s.wake()
	if t, id, ok := rd.Peek(); ok && t == wire.TypeData && id == s.id && window-used <= 0 {
		return fmt.Errorf("%w: DATA on stream %d without credit", wire.ErrProtocol, s.id)
	}
	return nil
}

// end records the server's END for stream id on c.
func (s *ClientStream) end(c *clientConn, id uint32, code wire.Code, msg []byte) {
	s.mu.Lock()
	if s.c != c || s.id != id {
		s.mu.Unlock()
		return
	}
	if s.err == nil {
		if code == wire.CodeOK {
			s.err = io.EOF
		} else {
			s.err = &StreamError{Code: code, Message: string(msg), BeforeFirstResponse: !s.responded}
		}
		s.byEnd = true
		s.flags.Or(streamEnded)
		s.wake()
	}
	s.unwatchLocked()
}

// fail ends stream id on c because the connection is gone.
func (s *ClientStream) fail(c *clientConn, id uint32, cause error) {
	s.mu.Lock()
	if s.c != c || s.id != id {
		s.mu.Unlock()
		return
	}
	if s.err == nil {
		s.err = &StreamError{Code: wire.CodeReset, Message: cause.Error(), BeforeFirstResponse: !s.responded, Err: cause}
		s.flags.Or(streamEnded)
		s.wake()
	}
	s.unwatchLocked()
}

// abort kills the stream from this side.
func (s *ClientStream) abort(e *StreamError) { s.kill(e, false) }

// killIf kills stream id on c if no response has arrived yet (see kill),
// and not if s has since been released and serves another call.
func (s *ClientStream) killIf(c *clientConn, id uint32, e *StreamError) bool {
	s.mu.Lock()
	if s.c != c || s.id != id {
		// Released after its END, which its caller saw: nothing to
		// kill, and the call it serves now is not this one.
		s.mu.Unlock()
		return false
	}
	return s.killLocked(e, true)
}

// kill ends the stream with e and asks the server to kill it; with
// onlyWaiting, only if no response has arrived. It reports whether it
// ended the stream.
func (s *ClientStream) kill(e *StreamError, onlyWaiting bool) bool {
	s.mu.Lock()
	return s.killLocked(e, onlyWaiting)
}

// killLocked is kill with s.mu held; it unlocks it. A stream it ends is
// never reused (Release), so what follows the unlock may use s.id.
func (s *ClientStream) killLocked(e *StreamError, onlyWaiting bool) bool {
	if s.err != nil || (onlyWaiting && s.responded) {
		s.mu.Unlock()
		return false
	}
	e.BeforeFirstResponse = !s.responded
	s.err = e
	s.flags.Or(streamEnded | streamAbortNow)
	s.wake()
	s.mu.Unlock()
	s.c.interrupt(s)
	s.c.removeStream(s.id)
	s.c.writeFrame(s.id, wire.TypeCancel, uint32(wire.FlagKill))
	s.unwatch()
	return true
}

func (s *ClientStream) unwatch() {
	s.mu.Lock()
	s.unwatchLocked()
}

// unwatchLocked stops the context watch; s.mu is held, and unlocked
// before the watch is stopped. Only a watch whose stop reports it stopped
// lets the stream be reused: one that fired may still be aborting it.
func (s *ClientStream) unwatchLocked() {
	stop := s.stopWatch
	s.stopWatch = nil
	s.mu.Unlock()
	if stop != nil && stop() {
		s.mu.Lock()
		s.watched = false
		s.mu.Unlock()
	}
}
