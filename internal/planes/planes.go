// Package planes manages a runtime's request planes: it starts the plane
// the configuration names when the first endpoint is served, opens calls
// on the plane an instance's discovery record names, keeps what callers
// learn about addresses (a server sent GOAWAY, a server stopped
// answering), and stops serving and calling at shutdown.
//
// It is the one place that knows the planes by name. The TCP plane
// (internal/mux) and the NATS plane (internal/natsplane) are reached only
// through it; a third plane is one more case here. The runtime gives it a
// Handler for the requests that arrive and sees streams only through the
// Stream and ClientStream interfaces. Errors wrap internal/plane's
// sentinels (plane.ErrUnreachable, plane.ErrPoolClosed, plane.ErrTooLarge)
// for the runtime to map to its own.
package planes

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/internal/mux"
	"github.com/loomrt/loom/internal/natsplane"
	"github.com/loomrt/loom/internal/plane"
)

// Transport names, as discovery records carry them.
const (
	TCP   = "tcp"
	NATS  = "nats"
	Local = "local" // reachable only inside its own process
)

// Speaks reports whether a runtime can call an instance whose record names
// transport t. Instances of other planes (a Dynamo worker's, read from a
// record of Dynamo's) are never routed to.
func Speaks(t string) bool { return t == TCP || t == NATS || t == Local }

// Stream is what serving one request needs from a plane's server side.
type Stream interface {
	Path() string
	Codec() string
	Payload() []byte
	Context() context.Context
	Stopped() <-chan struct{}
	Send(p []byte) error
	RequestID() string
	TraceParent() string
	Headers() map[string]string
	// DerivedContext reports that Context descends from the context
	// Handler.StreamContext gave for the stream's path.
	DerivedContext() bool
}

// ClientStream is the caller's end of one call on a plane.
type ClientStream interface {
	Recv() ([]byte, error)
	Stop()
	Cancel()
	Close() error
	Responded() bool
	// Buffered reports whether Recv would return without waiting.
	Buffered() bool
}

// Handler serves the requests that arrive on every plane.
type Handler interface {
	// ServeStream serves one request. stop is a context whose Done is
	// the stream's stop signal (finish gracefully); it costs nothing
	// until used. The error ends the stream: a *plane.StreamError keeps
	// its code, any other error is an application error.
	ServeStream(s Stream, stop context.Context) error
	// StreamContext returns the parent of the context of a request for
	// path (the endpoint's context), or nil if path is not served.
	StreamContext(path string) context.Context
}

// Config is what the planes are built from.
type Config struct {
	RequestPlane config.RequestPlane
	// FailureCooldown is how long an address that stopped answering is
	// avoided (client.failure_cooldown).
	FailureCooldown time.Duration
	// ID is the instance id, which names the NATS plane's subject.
	ID     uint64
	Logger *slog.Logger
	// OnLimit counts a peer hitting the request-plane limit it names.
	OnLimit func(limit string)
	// OnStall, if set, counts a server called over transport that
	// stopped answering while calls waited on it.
	OnStall func(transport string)
	// NATS returns the runtime's NATS connection, connecting on first use.
	NATS func(ctx context.Context) (*nats.Conn, error)
}

// Target is the instance a call goes to, as its discovery record says.
type Target struct {
	Transport string
	Address   string
	TLS       bool // the instance serves TLS
}

// Planes is a runtime's request planes, started on first use. It is safe
// for concurrent use.
type Planes struct {
	cfg Config
	h   Handler

	mu      sync.Mutex
	closed  bool // Close was called: no new caller pool
	tcp     *mux.Server
	tcpAddr string
	tcpDone chan struct{}
	tcpTLS  bool
	pool    *mux.Pool
	natsSrv *natsplane.Server
	natsCli *natsplane.Client

	poolRO atomic.Pointer[mux.Pool] // pool, read without mu on every call
	// addrs is what callers learned about each address they call: the
	// server there sent GOAWAY, or stopped answering. A caller keeps the
	// Addr of each instance it may route to (see Addr), so that a pick
	// reads it without a lookup, and gives it back when the instance
	// leaves (Release): an address no caller holds is forgotten, or a
	// long-lived caller would keep one for every server it ever called.
	addrs  sync.Map   // address -> *Addr
	addrMu sync.Mutex // serialises Addr and Release: the holders' count
}

// Addr is what callers learned about one address (a TCP address, or a
// NATS subject): its server sent GOAWAY, or stopped answering. It is read
// on every pick, so without a lock.
type Addr struct {
	draining     atomic.Bool  // the server sent GOAWAY
	stalledUntil atomic.Int64 // unix ns until which it is avoided: it stopped answering
	holders      int          // callers holding it (Addr less Release); Planes.addrMu guards it
}

// Draining reports whether the server at the address sent GOAWAY (and no
// new server registered there since).
func (a *Addr) Draining() bool { return a.draining.Load() }

// StalledUntil returns until when (unix ns) the address is avoided
// because its server stopped answering while calls waited on it; 0 if it
// never did.
func (a *Addr) StalledUntil() int64 { return a.stalledUntil.Load() }

// New returns the planes of a runtime that serves requests with h. Nothing
// listens or connects until Serve or Open.
func New(cfg Config, h Handler) *Planes {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Planes{cfg: cfg, h: h}
}

// Serve makes sure the configured request plane is serving and returns
// its transport name, address and whether it requires TLS, for discovery
// records. ctx bounds starting it.
func (p *Planes) Serve(ctx context.Context) (transport, addr string, tls bool, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch p.cfg.RequestPlane.Transport {
	case TCP, "":
		if p.tcp == nil {
			if err := p.startTCP(ctx); err != nil {
				return "", "", false, err
			}
		}
		return TCP, p.tcpAddr, p.tcpTLS, nil
	case NATS:
		if p.cfg.RequestPlane.TLSClientAuth {
			// Silently serving every caller would leave a deployment
			// that asked for mutual TLS without it.
			return "", "", false, errors.New("request_plane.tls_client_auth is set, and request_plane.transport is nats: the NATS plane has no client certificates to verify (its callers are whoever the NATS server lets publish on loom.rpc.>; restrict that with NATS permissions); unset tls_client_auth or serve on tcp")
		}
		subject, err := p.startNATS(ctx)
		return NATS, subject, false, err
	}
	return "", "", false, fmt.Errorf("request_plane.transport %q: use tcp or nats", p.cfg.RequestPlane.Transport)
}

// startTCP listens on request_plane.host:port; p.mu is held.
func (p *Planes) startTCP(ctx context.Context) error {
	rc := p.cfg.RequestPlane
	if err := checkAdvertise(rc); err != nil {
		return err
	}
	tlsCfg, err := serverTLS(rc, p.cfg.Logger)
	if err != nil {
		return err
	}
	hostPort := net.JoinHostPort(rc.Host, strconv.Itoa(rc.Port))
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", hostPort)
	if err != nil {
		return fmt.Errorf("request plane cannot listen on %s: %w (set request_plane.port, LOOM_REQUEST_PLANE_PORT, to a free port or 0)", hostPort, err)
	}
	addr := rc.Advertise
	if addr == "" {
		addr = ln.Addr().String()
	}
	srv := mux.NewServer(mux.ServerConfig{
		MaxFrameSize:         rc.MaxFrameSize,
		MaxConcurrentStreams: rc.MaxConcurrentStreams,
		QueueSize:            rc.QueueSize,
		MaxStreamsPerConn:    rc.MaxStreamsPerConn,
		MaxRunningBytes:      rc.MaxRunningBytes,
		MaxConns:             rc.MaxConns,
		FrameTimeout:         rc.FrameTimeout,
		MaxQueuedPongs:       rc.MaxQueuedPongs,
		IdleTimeout:          rc.IdleTimeout,
		OnLimit:              p.cfg.OnLimit,
		KeepaliveInterval:    rc.KeepaliveInterval,
		KeepaliveTimeout:     rc.KeepaliveTimeout,
		TLS:                  tlsCfg,
		Logger:               p.cfg.Logger,
		StreamContext:        p.h.StreamContext,
	}, mux.HandlerFunc(func(s *mux.ServerStream) error { return serve(p.h, s) }))
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, mux.ErrServerClosed) {
			p.cfg.Logger.Error("request plane stopped", "addr", addr, "err", err)
		}
	}()
	p.tcp, p.tcpAddr, p.tcpDone, p.tcpTLS = srv, addr, done, tlsCfg != nil
	p.cfg.Logger.Debug("request plane listening", "transport", TCP, "addr", addr, "tls", tlsCfg != nil)
	return nil
}

// checkAdvertise refuses an address other processes could not dial this
// one at: request_plane.advertise that is not host:port, or, with
// advertise unset, a listen address of every interface (0.0.0.0), which
// would otherwise be advertised as it is.
func checkAdvertise(rc config.RequestPlane) error {
	if rc.Advertise == "" {
		if ip := net.ParseIP(rc.Host); rc.Host == "" || ip != nil && ip.IsUnspecified() {
			return fmt.Errorf("request_plane.host %q listens on every address, and request_plane.advertise is unset: other processes would be told to dial %s; set request_plane.advertise (LOOM_REQUEST_PLANE_ADVERTISE) to the host:port they reach this process at",
				rc.Host, net.JoinHostPort(rc.Host, strconv.Itoa(rc.Port)))
		}
		return nil
	}
	host, port, err := net.SplitHostPort(rc.Advertise)
	if err == nil && host == "" {
		err = errors.New("no host")
	}
	if n, perr := strconv.Atoi(port); err == nil && (perr != nil || n < 1 || n > 65535) {
		err = fmt.Errorf("port %q is not 1 to 65535", port)
	}
	if err != nil {
		return fmt.Errorf("request_plane.advertise %q is not the host:port other processes dial (%v); set LOOM_REQUEST_PLANE_ADVERTISE to one, such as 10.0.0.5:9345", rc.Advertise, err)
	}
	return nil
}

// Subject is the NATS subject an instance serves its endpoints on when
// request_plane.transport is nats: one per instance.
func Subject(id uint64) string { return fmt.Sprintf(subjectPrefix+"%x", id) }

// subjectPrefix starts every subject the NATS plane serves on; callers
// publish nowhere else.
const subjectPrefix = "loom.rpc."

// startNATS serves on the instance's NATS subject; p.mu is held.
func (p *Planes) startNATS(ctx context.Context) (string, error) {
	if p.natsSrv != nil {
		return p.natsSrv.Address(), nil
	}
	nc, err := p.cfg.NATS(ctx)
	if err != nil {
		return "", fmt.Errorf("request_plane.transport nats: %w", err)
	}
	rc := p.cfg.RequestPlane
	srv, err := natsplane.NewServer(nc, Subject(p.cfg.ID), natsplane.ServerConfig{
		MaxConcurrentStreams: rc.MaxConcurrentStreams,
		QueueSize:            rc.QueueSize,
		MaxStreamsPerCaller:  rc.MaxStreamsPerConn,
		MaxRunningBytes:      rc.MaxRunningBytes,
		Logger:               p.cfg.Logger,
		OnLimit:              p.cfg.OnLimit,
	}, natsplane.HandlerFunc(func(s *natsplane.ServerStream) error { return serve(p.h, s) }))
	if err != nil {
		return "", err
	}
	p.natsSrv = srv
	return srv.Address(), nil
}

// serve hands one stream to h. It is generic over the stream type so that
// the stop context holds only the stream pointer: stored in an interface
// without an allocation.
func serve[S Stream](h Handler, s S) error { return h.ServeStream(s, streamStop[S]{s}) }

// streamStop is a context whose Done is a network stream's stop signal. It
// asks the stream for its channel only when used.
type streamStop[S interface{ Stopped() <-chan struct{} }] struct{ s S }

func (c streamStop[S]) Deadline() (time.Time, bool) { return time.Time{}, false }
func (c streamStop[S]) Done() <-chan struct{}       { return c.s.Stopped() }
func (c streamStop[S]) Value(any) any               { return nil }
func (c streamStop[S]) Err() error {
	select {
	case <-c.s.Stopped():
		return context.Canceled
	default:
		return nil
	}
}

// Open starts a call to t on the plane its record names. An error wraps
// plane.ErrUnreachable when t cannot be reached (or this runtime cannot
// speak its plane), plane.ErrPoolClosed after Close, plane.ErrTooLarge when
// req is above what t accepts; it is a *plane.StreamError when ctx ended.
func (p *Planes) Open(ctx context.Context, t Target, req plane.Request) (ClientStream, error) {
	switch t.Transport {
	case TCP:
		if tlsOn := p.cfg.RequestPlane.TLSCAFile != ""; t.TLS != tlsOn {
			if t.TLS {
				return nil, fmt.Errorf("%w: %s serves TLS; set request_plane.tls_ca_file (LOOM_REQUEST_PLANE_TLS_CA_FILE) to the CA that signed its certificate", plane.ErrUnreachable, t.Address)
			}
			return nil, fmt.Errorf("%w: %s serves plain TCP, and this runtime calls with TLS (request_plane.tls_ca_file is set); serve it with TLS too (request_plane.tls_cert_file, tls_key_file) or unset tls_ca_file here", plane.ErrUnreachable, t.Address)
		}
		pool, err := p.tcpPool()
		if err != nil {
			return nil, err
		}
		return pool.Open(ctx, t.Address, req)
	case NATS:
		// A record is data anyone with write access to discovery may
		// have written: a call never publishes, with this process's
		// NATS permissions, to a subject Loom does not serve on.
		if !strings.HasPrefix(t.Address, subjectPrefix) {
			return nil, fmt.Errorf("%w: its record names NATS subject %q, and Loom serves only under %s>; not calling it (was the record written by Loom?)", plane.ErrUnreachable, t.Address, subjectPrefix)
		}
		c, err := p.natsClient(ctx)
		if err != nil {
			return nil, err
		}
		return c.Open(ctx, t.Address, req)
	case Local:
		// Only reachable inside its own process, and not found in this
		// one: it has shut down and discovery has not caught up yet.
		return nil, fmt.Errorf("%w: gone (transport local)", plane.ErrUnreachable)
	}
	return nil, fmt.Errorf("%w: transport %q, which this runtime does not speak", plane.ErrUnreachable, t.Transport)
}

func (p *Planes) tcpPool() (*mux.Pool, error) {
	if pool := p.poolRO.Load(); pool != nil {
		return pool, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pool != nil {
		return p.pool, nil
	}
	if p.closed {
		return nil, plane.ErrPoolClosed
	}
	rc := p.cfg.RequestPlane
	getTLS, err := clientTLS(rc, p.cfg.Logger)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", plane.ErrUnreachable, err)
	}
	p.pool = mux.NewPool(mux.ClientConfig{
		MaxFrameSize:      rc.MaxFrameSize,
		ConnsPerHost:      rc.ConnsPerHost,
		KeepaliveInterval: rc.KeepaliveInterval,
		KeepaliveTimeout:  rc.KeepaliveTimeout,
		StallTimeout:      rc.StallTimeout,
		FrameTimeout:      rc.FrameTimeout,
		GetTLS:            getTLS,
		Logger:            p.cfg.Logger,
		OnDrain:           p.onDrain,
		OnStall:           func(addr string) { p.onStall(TCP, addr) },
	})
	p.poolRO.Store(p.pool)
	return p.pool, nil
}

func (p *Planes) natsClient(ctx context.Context) (*natsplane.Client, error) {
	p.mu.Lock()
	c, closed := p.natsCli, p.closed
	p.mu.Unlock()
	if c != nil {
		return c, nil
	}
	if closed {
		return nil, plane.ErrPoolClosed
	}
	nc, err := p.cfg.NATS(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: it serves on NATS, and this runtime cannot connect to NATS: %w", plane.ErrUnreachable, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, plane.ErrPoolClosed
	}
	if p.natsCli == nil {
		p.natsCli = natsplane.NewClient(nc, natsplane.ClientConfig{
			Logger: p.cfg.Logger,
			// A stream that has responded fails once its server has
			// been silent this long, as a TCP connection's does once a
			// ping goes unanswered this long.
			HeartbeatTimeout: p.cfg.RequestPlane.KeepaliveTimeout,
			StallTimeout:     p.cfg.RequestPlane.StallTimeout,
			OnStall:          func(subject string) { p.onStall(NATS, subject) },
		})
	}
	return p.natsCli, nil
}

// onDrain records that the server at addr sent GOAWAY: new calls avoid
// it until a new server registers there.
func (p *Planes) onDrain(addr string) {
	if a := p.held(addr); a != nil {
		a.draining.Store(true)
	}
}

// onStall records that the server at addr (a TCP address or a NATS
// subject) stopped answering: new calls avoid it for the failure cooldown.
func (p *Planes) onStall(transport, addr string) {
	if a := p.held(addr); a != nil {
		a.stalledUntil.Store(time.Now().Add(p.cfg.FailureCooldown).UnixNano())
	}
	if f := p.cfg.OnStall; f != nil {
		f(transport)
	}
}

// held returns the Addr of a, if a caller holds it: what is learned
// about an address no caller holds would be read by none.
func (p *Planes) held(a string) *Addr {
	if v, ok := p.addrs.Load(a); ok {
		return v.(*Addr)
	}
	return nil
}

// Addr returns what callers learned about the address of an instance
// whose record names transport and addr, shared by every caller here; nil
// for a transport that keeps nothing (local). Keep it for as long as the
// instance may be called, and give it back with Release when it leaves:
// it is not replaced while held.
func (p *Planes) Addr(transport, addr string) *Addr {
	if transport != TCP && transport != NATS {
		return nil
	}
	p.addrMu.Lock()
	defer p.addrMu.Unlock()
	a := p.held(addr)
	if a == nil {
		a = new(Addr)
		p.addrs.Store(addr, a)
	}
	a.holders++
	return a
}

// Release gives back a, which Addr returned for addr; once no caller
// holds it, the address is forgotten. A nil a is ignored.
func (p *Planes) Release(addr string, a *Addr) {
	if a == nil {
		return
	}
	p.addrMu.Lock()
	defer p.addrMu.Unlock()
	if a.holders--; a.holders == 0 {
		p.addrs.CompareAndDelete(addr, a)
		if pool := p.poolRO.Load(); pool != nil {
			pool.Forget(addr)
		}
	}
}

// Usable reports whether an instance with this transport and address
// should get new requests: its server has not sent GOAWAY (TCP), and has
// not stopped answering within the failure cooldown (TCP and NATS). now
// is in unix ns.
func (p *Planes) Usable(transport, addr string, now int64) bool {
	if transport != TCP && transport != NATS {
		return true
	}
	v, ok := p.addrs.Load(addr)
	if !ok {
		return true
	}
	a := v.(*Addr)
	return !a.draining.Load() && a.stalledUntil.Load() <= now
}

// Held returns what the planes keep for the servers they call: the
// addresses they learned about (see Addr), and the TCP pool's hosts and
// connections. For tests and diagnostics.
func (p *Planes) Held() (addrs, hosts, conns int) {
	p.addrs.Range(func(any, any) bool { addrs++; return true })
	if pool := p.poolRO.Load(); pool != nil {
		hosts, conns = pool.Held()
	}
	return addrs, hosts, conns
}

// Restarted says that a new record appeared at addr: a new server there,
// which has sent no GOAWAY.
func (p *Planes) Restarted(addr string) {
	if v, ok := p.addrs.Load(addr); ok {
		v.(*Addr).draining.Store(false)
	}
}

// Shutdown sends GOAWAY on every plane this runtime serves and waits for
// the streams in flight until ctx ends, then closes them. Calls keep
// working until Close.
func (p *Planes) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	tcp, done, natsSrv := p.tcp, p.tcpDone, p.natsSrv
	p.mu.Unlock()
	var errs []error
	if tcp != nil {
		if err := tcp.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("request plane shutdown: %w", err))
			_ = tcp.Close()
		}
		<-done
	}
	if natsSrv != nil {
		if err := natsSrv.Shutdown(ctx); err != nil {
			_ = natsSrv.Close()
			errs = append(errs, fmt.Errorf("nats request plane shutdown: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Close closes the callers' pools: every call still open fails, and
// Open fails with plane.ErrPoolClosed. Serving stops with Shutdown.
func (p *Planes) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	var errs []error
	if p.pool != nil {
		errs = append(errs, p.pool.Close())
	}
	if p.natsCli != nil {
		errs = append(errs, p.natsCli.Close())
	}
	return errors.Join(errs...)
}

// serverTLS returns the TLS configuration of the TCP plane's server, or
// nil for plain TCP. Its certificate, and the CAs it verifies callers
// with, are read again when their files change (see tlsFiles).
func serverTLS(rc config.RequestPlane, log *slog.Logger) (*tls.Config, error) {
	if rc.TLSCertFile == "" && rc.TLSKeyFile == "" {
		if rc.TLSClientAuth {
			return nil, errors.New("request_plane.tls_client_auth is set without request_plane.tls_cert_file and request_plane.tls_key_file: mutual TLS needs this server's own certificate; set both (LOOM_REQUEST_PLANE_TLS_CERT_FILE, LOOM_REQUEST_PLANE_TLS_KEY_FILE) or unset tls_client_auth")
		}
		return nil, nil
	}
	cert, err := watchKeyPair(log, rc.TLSCertFile, rc.TLSKeyFile)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert.Current(), nil },
		MinVersion:     tls.VersionTLS12,
	}
	if rc.TLSClientAuth {
		if rc.TLSCAFile == "" {
			return nil, errors.New("request_plane.tls_client_auth is set without request_plane.tls_ca_file: set it (LOOM_REQUEST_PLANE_TLS_CA_FILE) to the CA that signs the callers' certificates, or unset tls_client_auth")
		}
		ca, err := watchCAPool(log, rc.TLSCAFile)
		if err != nil {
			return nil, err
		}
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
		cfg.GetConfigForClient = (&serverClientCAs{base: cfg, ca: ca}).config
	}
	return cfg, nil
}

// clientTLS returns what gives the TCP plane's callers the TLS
// configuration of each connection they dial, or nil for plain TCP. The
// CAs and the client certificate are read again when their files change
// (see tlsFiles).
func clientTLS(rc config.RequestPlane, log *slog.Logger) (func() (*tls.Config, error), error) {
	if rc.TLSCAFile == "" {
		return nil, nil
	}
	ca, err := watchCAPool(log, rc.TLSCAFile)
	if err != nil {
		return nil, err
	}
	files := &clientFiles{ca: ca}
	if rc.TLSCertFile != "" || rc.TLSKeyFile != "" {
		if files.cert, err = watchKeyPair(log, rc.TLSCertFile, rc.TLSKeyFile); err != nil {
			return nil, err
		}
	}
	return files.config, nil
}
