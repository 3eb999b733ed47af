package zmtp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of Options.
const (
	DefaultSendQueue        = 8192
	DefaultHandshakeTimeout = 5 * time.Second
	// DefaultMaxPeers is how many peers a socket accepts at once, as
	// many as the request plane's connections (request_plane.max_conns).
	DefaultMaxPeers = 4096
)

// Options configures a Socket.
type Options struct {
	// Type is the socket's own type: PUB, SUB, XPUB or XSUB.
	Type SocketType
	// SendQueue bounds the messages waiting to be written to each peer
	// (plus the batch being written); a message for a peer whose queue is
	// full is dropped for that peer and counted. Default DefaultSendQueue.
	// Control messages (PONGs, subscriptions) are never dropped: a peer
	// that lets maxQueuedControl (1024) of them wait is disconnected.
	SendQueue int
	// MaxMessage bounds one message read from a peer; a peer that sends
	// more is disconnected. Default DefaultMaxMessage.
	MaxMessage int
	// HandshakeTimeout bounds the greeting and READY exchange. Default
	// DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// MaxPeers bounds the connections the socket holds at once that it
	// accepted (on all its listeners, those still in the handshake
	// included); one accepted beyond it is closed at once, and counted
	// (Refused). A peer that goes away frees its place. The connections
	// the socket dials are not counted. Default DefaultMaxPeers;
	// negative: no limit.
	MaxPeers int
	// MaxPeersSetting names the setting MaxPeers came from, such as
	// "events.zmq.max_peers" or "--zmq-broker-max-peers": the warning
	// about a refused peer names it, for the reader to know what to
	// raise. Default "Options.MaxPeers".
	MaxPeersSetting string
	// OnMessage receives each message a peer sends (SUB and XSUB sockets),
	// on that peer's reader goroutine. parts alias a buffer that is reused
	// once OnMessage returns.
	OnMessage func(p *Peer, parts [][]byte)
	// OnSubscribe reports that a peer subscribed to prefix (on) or
	// cancelled its last subscription to it (PUB and XPUB sockets). When a
	// peer goes away it is called with on false for each prefix it held.
	OnSubscribe func(p *Peer, prefix []byte, on bool)
	// OnPeer reports a peer connecting (up) and going away.
	OnPeer func(p *Peer, up bool)
	// Logger receives connection failures at debug level, and peers
	// refused beyond MaxPeers at warn level, at most once a second; nil
	// discards.
	Logger *slog.Logger
}

// Socket is a ZeroMQ socket of one pub/sub type: it listens, dials, or
// both, and keeps one Peer per connection. Every goroutine it starts ends
// by Close.
type Socket struct {
	opts   Options
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	closed    bool
	peers     map[*Peer]struct{}
	listeners []net.Listener
	subs      map[string]int // SUB, XSUB: our subscriptions, counted

	snapshot atomic.Pointer[[]*Peer]
	dropped  atomic.Uint64

	accepted    atomic.Int64  // accepted connections held, for MaxPeers
	refused     atomic.Uint64 // connections closed at accept for MaxPeers
	lastRefusal atomic.Int64  // unix ns of the last refusal logged
}

// NewSocket returns a socket of opts.Type.
func NewSocket(opts Options) *Socket {
	if opts.SendQueue <= 0 {
		opts.SendQueue = DefaultSendQueue
	}
	if opts.MaxMessage <= 0 {
		opts.MaxMessage = DefaultMaxMessage
	}
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if opts.MaxPeers == 0 {
		opts.MaxPeers = DefaultMaxPeers
	}
	if opts.MaxPeersSetting == "" {
		opts.MaxPeersSetting = "Options.MaxPeers"
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Socket{opts: opts, ctx: ctx, cancel: cancel, peers: make(map[*Peer]struct{}), subs: make(map[string]int)}
	s.snapshot.Store(&[]*Peer{})
	return s
}

// ErrClosed reports a call on a closed socket.
var ErrClosed = errors.New("zmtp: socket closed")

// SplitEndpoint turns a ZeroMQ endpoint "tcp://host:port" (or a bare
// host:port) into the host:port to dial or listen on. Only tcp is
// supported.
func SplitEndpoint(ep string) (string, error) {
	addr := ep
	if scheme, rest, ok := strings.Cut(ep, "://"); ok {
		if scheme != "tcp" {
			return "", fmt.Errorf("zmtp: endpoint %q: only tcp:// is supported", ep)
		}
		addr = rest
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return "", fmt.Errorf("zmtp: endpoint %q: want tcp://host:port: %w", ep, err)
	}
	return addr, nil
}

// Listen accepts peers on the endpoint ("tcp://host:port"; port 0 picks a
// free one) and returns the address it listens on.
func (s *Socket) Listen(ep string) (net.Addr, error) {
	addr, err := SplitEndpoint(ep)
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("zmtp: listen on %s: %w", ep, err)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return nil, ErrClosed
	}
	s.listeners = append(s.listeners, l)
	s.wg.Add(1)
	s.mu.Unlock()
	go s.accept(l)
	return l.Addr(), nil
}

func (s *Socket) accept(l net.Listener) {
	defer s.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// A transient failure (out of file descriptors): pause.
			s.opts.Logger.Debug("zmtp: accept failed", "addr", l.Addr().String(), "err", err)
			select {
			case <-s.ctx.Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		if n := s.accepted.Add(1); s.opts.MaxPeers > 0 && n > int64(s.opts.MaxPeers) {
			s.accepted.Add(-1)
			s.refuse(c, l)
			continue
		}
		if !s.goTracked(func() {
			defer s.accepted.Add(-1)
			_ = s.serve(c)
		}) {
			s.accepted.Add(-1)
			c.Close()
			return
		}
	}
}

// refuse closes a connection accepted beyond MaxPeers, logging at most
// once a second so that a flood does not flood the log.
func (s *Socket) refuse(c net.Conn, l net.Listener) {
	defer c.Close()
	s.refused.Add(1)
	now := time.Now().UnixNano()
	if last := s.lastRefusal.Load(); now-last >= int64(time.Second) && s.lastRefusal.CompareAndSwap(last, now) {
		s.opts.Logger.Warn("zmtp: peer refused: the socket holds its maximum of peers ("+s.opts.MaxPeersSetting+")",
			"addr", l.Addr().String(), "remote", c.RemoteAddr().String(), "max", s.opts.MaxPeers)
	}
}

// goTracked starts fn as a goroutine the socket waits for, unless closed.
func (s *Socket) goTracked(fn func()) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		fn()
	}()
	return true
}

// Link is a connection the socket dials and keeps: after a failure it
// dials again with a backoff until closed.
type Link struct {
	s      *Socket
	ep     string
	cancel context.CancelFunc
	done   chan struct{}
	up     atomic.Bool
}

// Endpoint returns the endpoint the link dials.
func (l *Link) Endpoint() string { return l.ep }

// Connected reports whether the link has a live peer now.
func (l *Link) Connected() bool { return l.up.Load() }

// Close stops the link, closing its connection, and waits for it.
func (l *Link) Close() {
	l.cancel()
	<-l.done
}

// Dial keeps a connection to the endpoint ("tcp://host:port"), dialing
// again after each failure with a jittered backoff from 20ms to 2s.
func (s *Socket) Dial(ep string) (*Link, error) {
	addr, err := SplitEndpoint(ep)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(s.ctx)
	l := &Link{s: s, ep: ep, cancel: cancel, done: make(chan struct{})}
	if !s.goTracked(func() { defer close(l.done); l.run(ctx, addr) }) {
		cancel()
		return nil, ErrClosed
	}
	return l, nil
}

func (l *Link) run(ctx context.Context, addr string) {
	backoff := 20 * time.Millisecond
	for ctx.Err() == nil {
		d := net.Dialer{Timeout: 2 * time.Second}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			stop := context.AfterFunc(ctx, func() { c.Close() })
			start := time.Now()
			err = l.s.serveWith(c, &l.up)
			stop()
			if time.Since(start) > 5*time.Second {
				backoff = 20 * time.Millisecond
			}
		}
		if ctx.Err() != nil {
			return
		}
		l.s.opts.Logger.Debug("zmtp: connection failed; dialing again", "endpoint", l.ep, "err", err, "after", backoff)
		t := time.NewTimer(backoff/2 + rand.N(backoff/2+1))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// Peer is one connection of a socket.
type Peer struct {
	s      *Socket
	conn   net.Conn
	typ    SocketType
	remote string

	// A writer goroutine runs only while the queue holds something: the
	// push that finds no writer starts one, and it ends when it finds the
	// queue empty, so a quiet peer costs one goroutine, its reader.
	mu      sync.Mutex
	q       [][]byte
	spare   [][]byte
	control int  // control messages in q
	writing bool // a writer runs (or failed: none starts again)
	closed  bool
	writer  sync.WaitGroup // the writer running, if any

	// PUB, XPUB: the peer's subscriptions. The reader changes them,
	// Send reads them.
	subMu    sync.Mutex
	subs     map[string]subscription
	prefixes []string // the keys of subs, in no order
	subBytes int      // their total length
	dropped  atomic.Uint64
}

// subscription is how many times a peer subscribed to a prefix, and where
// the prefix is in the peer's prefixes.
type subscription struct{ n, at int }

// Type returns the peer's socket type.
func (p *Peer) Type() SocketType { return p.typ }

// RemoteAddr returns the peer's address.
func (p *Peer) RemoteAddr() string { return p.remote }

// Dropped returns how many messages for this peer were dropped because its
// queue was full.
func (p *Peer) Dropped() uint64 { return p.dropped.Load() }

// Close disconnects the peer.
func (p *Peer) Close() { p.conn.Close() }

// serve runs an accepted connection; closing the socket closes it, even
// mid-handshake.
func (s *Socket) serve(c net.Conn) error {
	stop := context.AfterFunc(s.ctx, func() { c.Close() })
	defer stop()
	return s.serveWith(c, nil)
}

// serveWith runs one connection: handshake, then the reader loop here, with
// a writer goroutine while something waits to be written, until either
// fails or the socket closes.
func (s *Socket) serveWith(c net.Conn, up *atomic.Bool) error {
	defer c.Close()
	peerType, r, err := Handshake(c, s.opts.Type, s.opts.MaxMessage, s.opts.HandshakeTimeout)
	if err != nil {
		s.opts.Logger.Debug("zmtp: handshake failed", "remote", c.RemoteAddr().String(), "err", err)
		return err
	}
	p := &Peer{s: s, conn: c, typ: peerType, remote: c.RemoteAddr().String(), subs: make(map[string]subscription)}
	if !s.addPeer(p) {
		return ErrClosed
	}
	if up != nil {
		up.Store(true)
		defer up.Store(false)
	}
	if s.opts.OnPeer != nil {
		s.opts.OnPeer(p, true)
	}
	err = p.readLoop(r)
	c.Close()
	p.mu.Lock()
	p.closed = true // no writer starts after this
	p.mu.Unlock()
	p.writer.Wait()
	s.removePeer(p)
	if s.opts.OnSubscribe != nil {
		for prefix := range p.subs {
			s.opts.OnSubscribe(p, []byte(prefix), false)
		}
	}
	if s.opts.OnPeer != nil {
		s.opts.OnPeer(p, false)
	}
	if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && s.ctx.Err() == nil {
		s.opts.Logger.Debug("zmtp: peer disconnected", "remote", p.remote, "err", err)
	}
	return err
}

// addPeer registers p; a subscribing socket queues its subscriptions to it
// first, under the same lock as Subscribe, so none is missed or doubled.
func (s *Socket) addPeer(p *Peer) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if !s.opts.Type.publishes() && len(s.subs) > 0 {
		// One control message, however many subscriptions.
		var wire []byte
		for prefix := range s.subs {
			wire = AppendSubscription(wire, []byte(prefix), true)
		}
		p.push(wire, true)
	}
	s.peers[p] = struct{}{}
	s.storeSnapshot()
	return true
}

func (s *Socket) removePeer(p *Peer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.peers, p)
	s.storeSnapshot()
}

func (s *Socket) storeSnapshot() {
	ps := make([]*Peer, 0, len(s.peers))
	for p := range s.peers {
		ps = append(ps, p)
	}
	s.snapshot.Store(&ps)
}

func (p *Peer) readLoop(r *Reader) error {
	for {
		parts, cmd, err := r.Next()
		if err != nil {
			return err
		}
		if cmd {
			if err := p.command(parts[0]); err != nil {
				return err
			}
			continue
		}
		if p.s.opts.Type.publishes() {
			// From a subscriber: a subscription, or a message PUB
			// sockets ignore.
			if len(parts) == 1 && len(parts[0]) > 0 && parts[0][0] <= 1 {
				p.subscription(parts[0][1:], parts[0][0] == 1)
			}
			continue
		}
		if p.s.opts.OnMessage != nil {
			p.s.opts.OnMessage(p, parts)
		}
	}
}

func (p *Peer) command(body []byte) error {
	c, err := ParseCommand(body)
	if err != nil {
		return err
	}
	switch c.Name {
	case "SUBSCRIBE", "CANCEL":
		if p.s.opts.Type.publishes() {
			p.subscription(c.Data, c.Name == "SUBSCRIBE")
		}
	case "PING":
		// PING: TTL (2 bytes), then up to 16 bytes of context to echo.
		if len(c.Data) >= 2 {
			ctx := c.Data[2:]
			if len(ctx) > 16 {
				return protoErr("PING context of %d bytes (at most 16)", len(ctx))
			}
			body := append([]byte{4}, "PONG"...)
			p.push(appendFrame(nil, flagCommand, append(body, ctx...)), true)
		}
	case "ERROR":
		return protoErr("peer sent ERROR")
	}
	return nil
}

// maxSubscriptions and maxSubscriptionBytes bound the distinct prefixes
// one peer may hold, and their total length.
const (
	maxSubscriptions     = 4096
	maxSubscriptionBytes = 1 << 20
)

// subscription applies a peer's subscribe or cancel, counted per prefix as
// libzmq does. Each costs the same however many the peer holds.
func (p *Peer) subscription(prefix []byte, on bool) {
	p.subMu.Lock()
	e, ok := p.subs[string(prefix)]
	switch {
	case ok && (on || e.n > 1):
		if on {
			e.n++
		} else {
			e.n--
		}
		p.subs[string(prefix)] = e
		p.subMu.Unlock()
		return
	case on && (len(p.subs) >= maxSubscriptions || p.subBytes+len(prefix) > maxSubscriptionBytes):
		p.subMu.Unlock()
		p.s.opts.Logger.Debug("zmtp: peer exceeds the subscription limit; ignoring", "remote", p.remote,
			"limit", maxSubscriptions, "limit_bytes", maxSubscriptionBytes)
		return
	case on:
		key := string(prefix)
		p.subs[key] = subscription{n: 1, at: len(p.prefixes)}
		p.prefixes = append(p.prefixes, key)
		p.subBytes += len(key)
	case !ok:
		p.subMu.Unlock()
		return
	default:
		// The last prefix takes the place of the one cancelled.
		last := len(p.prefixes) - 1
		moved := p.prefixes[last]
		p.prefixes[e.at] = moved
		p.subs[moved] = subscription{n: p.subs[moved].n, at: e.at}
		p.prefixes[last] = ""
		p.prefixes = p.prefixes[:last]
		delete(p.subs, string(prefix))
		p.subBytes -= len(prefix)
	}
	p.subMu.Unlock()
	if p.s.opts.OnSubscribe != nil {
		p.s.opts.OnSubscribe(p, prefix, on)
	}
}

// Subscribed reports whether the peer subscribed to a prefix of topic.
func (p *Peer) Subscribed(topic []byte) bool {
	p.subMu.Lock()
	defer p.subMu.Unlock()
	for _, prefix := range p.prefixes {
		if len(prefix) <= len(topic) && string(topic[:len(prefix)]) == prefix {
			return true
		}
	}
	return false
}

// maxQueuedControl bounds the control messages (PONGs, subscriptions)
// waiting for one peer. A peer that lets more pile up is not reading (it
// pings without reading the PONGs, or it is stuck) and is disconnected:
// dropping a control message would break the protocol, and a subscriber
// that connects again sends its subscriptions anew.
const maxQueuedControl = 1024

// maxIdleQueue bounds the entries of each of the two arrays a peer's
// queue keeps while no writer runs (1.5 KiB): enough for the bursts of a
// steady publisher, where SendQueue entries would be 192 KiB.
const maxIdleQueue = 64

// push queues a wire message. Control messages ignore the queue's limit,
// up to maxQueuedControl, beyond which the peer is disconnected. It
// reports false if the message was dropped.
func (p *Peer) push(wire []byte, control bool) bool {
	p.mu.Lock()
	if control && !p.closed && p.control >= maxQueuedControl {
		p.mu.Unlock()
		p.s.opts.Logger.Debug("zmtp: peer does not read; disconnecting", "remote", p.remote, "queued_control", maxQueuedControl)
		p.conn.Close()
		return false
	}
	if p.closed || (!control && len(p.q) >= p.s.opts.SendQueue) {
		closed := p.closed
		p.mu.Unlock()
		if !closed {
			p.dropped.Add(1)
			p.s.dropped.Add(1)
		}
		return false
	}
	p.q = append(p.q, wire)
	if control {
		p.control++
	}
	start := !p.writing
	if start {
		// Counted under mu, before closed can be set: serveWith's
		// Wait, after it sets closed, sees every writer started.
		p.writing = true
		p.writer.Add(1)
	}
	p.mu.Unlock()
	if start {
		go p.writeLoop()
	}
	return true
}

// writeLoop writes the queue, in batches, until it finds it empty or the
// peer closed. It is the only writer: push starts it when none runs.
func (p *Peer) writeLoop() {
	defer p.writer.Done()
	p.mu.Lock()
	for len(p.q) > 0 && !p.closed {
		batch := p.q
		p.q = p.spare[:0]
		p.control = 0
		p.mu.Unlock()

		bufs := net.Buffers(batch)
		_, err := bufs.WriteTo(p.conn)
		clear(batch)
		p.mu.Lock()
		p.spare = batch[:0]
		if err != nil {
			// writing stays true: no writer starts again, and what is
			// queued until the reader sees the close is dropped with
			// the peer.
			p.mu.Unlock()
			p.conn.Close() // the reader sees it and cleans up
			return
		}
	}
	// A burst's arrays (up to SendQueue entries each) are not kept for
	// the next one: a peer that caught up costs about what a quiet one
	// does.
	if cap(p.q) > maxIdleQueue {
		p.q = nil
	}
	if cap(p.spare) > maxIdleQueue {
		p.spare = nil
	}
	p.writing = false
	p.mu.Unlock()
}

// idle reports whether nothing waits to be written to p.
func (p *Peer) idle() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed || (len(p.q) == 0 && !p.writing)
}

// Send queues a message (its whole wire form, from AppendMessage) to every
// peer subscribed to a prefix of topic, and returns to how many it was
// queued and for how many it was dropped because their queue was full.
// Only PUB and XPUB sockets send messages.
func (s *Socket) Send(topic, wire []byte) (queued, dropped int) {
	for _, p := range *s.snapshot.Load() {
		if !p.Subscribed(topic) {
			continue
		}
		if p.push(wire, false) {
			queued++
		} else {
			dropped++
		}
	}
	return queued, dropped
}

// Subscribe adds a subscription to prefix (SUB and XSUB sockets): it is
// sent to every peer now and to every peer that connects later. A
// subscription made n times needs n Unsubscribe calls.
func (s *Socket) Subscribe(prefix []byte) { s.setSubscription(prefix, true) }

// Unsubscribe cancels one Subscribe of prefix.
func (s *Socket) Unsubscribe(prefix []byte) { s.setSubscription(prefix, false) }

func (s *Socket) setSubscription(prefix []byte, on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := string(prefix)
	n := s.subs[key]
	switch {
	case on:
		s.subs[key] = n + 1
		if n > 0 {
			return
		}
	case n == 0:
		return
	case n > 1:
		s.subs[key] = n - 1
		return
	default:
		delete(s.subs, key)
	}
	wire := AppendSubscription(nil, prefix, on)
	for p := range s.peers {
		p.push(wire, true)
	}
}

// Peers returns the connected peers.
func (s *Socket) Peers() []*Peer { return *s.snapshot.Load() }

// Subscribers returns how many peers are subscribed to a prefix of topic.
func (s *Socket) Subscribers(topic []byte) int {
	n := 0
	for _, p := range *s.snapshot.Load() {
		if p.Subscribed(topic) {
			n++
		}
	}
	return n
}

// Dropped returns how many messages were dropped for full peer queues.
func (s *Socket) Dropped() uint64 { return s.dropped.Load() }

// Refused returns how many connections were closed at accept because the
// socket held Options.MaxPeers.
func (s *Socket) Refused() uint64 { return s.refused.Load() }

// Drain waits until every peer's queue is written or ctx ends.
func (s *Socket) Drain(ctx context.Context) error {
	for {
		idle := true
		for _, p := range *s.snapshot.Load() {
			if !p.idle() {
				idle = false
				break
			}
		}
		if idle {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// Close stops listening and dialing, disconnects every peer (what is
// still queued is dropped; Drain first to avoid that), and waits for every
// goroutine of the socket.
func (s *Socket) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.cancel()
	for _, l := range s.listeners {
		l.Close()
	}
	for p := range s.peers {
		p.conn.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}
