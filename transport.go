package loom

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loomrt/loom/codec"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/internal/mux"
	"github.com/loomrt/loom/internal/natsplane"
	"github.com/loomrt/loom/internal/tlsfiles"
	"github.com/loomrt/loom/internal/wire"
)

// Transports are the request planes a runtime serves and calls on. Each
// served endpoint's discovery record names its transport and address;
// callers in other processes follow the record, callers in this process
// take the local fast path.
const (
	TransportTCP   = "tcp"
	TransportNATS  = "nats"
	TransportLocal = "local" // reachable only inside its own process
)

// netStream is what serving one request needs from a transport's server
// side; the TCP and NATS planes both provide it.
type netStream interface {
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
	// the plane was given for the stream's path (the endpoint's).
	DerivedContext() bool
}

// clientStream is the caller's end of one call on a transport.
type clientStream interface {
	Recv() ([]byte, error)
	Stop()
	Cancel()
	Close() error
	Responded() bool
}

// planes holds the runtime's request planes, started on first use.
type planes struct {
	mu       sync.Mutex
	tcp      *mux.Server
	tcpAddr  string
	tcpDone  chan struct{}
	tcpTLS   bool
	pool     *mux.Pool
	natsSrv  *natsplane.Server
	natsCli  *natsplane.Client
	poolRO   atomic.Pointer[mux.Pool] // pool, read without mu on every call
	draining sync.Map                 // address -> struct{}: the server there sent GOAWAY
	stalled  sync.Map                 // address -> unix ns until which it is avoided: it stopped answering
	byPath   sync.Map                 // endpoint path -> *served
}

// serveOn makes sure the configured request plane is serving and returns
// its transport name, address and whether it requires TLS, for discovery
// records.
func (rt *Runtime) serveOn(ctx context.Context) (transport, addr string, tls bool, err error) {
	p := &rt.planes
	p.mu.Lock()
	defer p.mu.Unlock()
	switch rt.cfg.RequestPlane.Transport {
	case TransportTCP, "":
		if p.tcp == nil {
			if err := rt.startTCP(ctx); err != nil {
				return "", "", false, err
			}
		}
		return TransportTCP, p.tcpAddr, p.tcpTLS, nil
	case TransportNATS:
		subject, err := rt.startNATSPlane(ctx)
		return TransportNATS, subject, false, err
	}
	return "", "", false, fmt.Errorf("request_plane.transport %q: use tcp or nats", rt.cfg.RequestPlane.Transport)
}

// startTCP listens on request_plane.host:port; p.mu is held.
func (rt *Runtime) startTCP(ctx context.Context) error {
	rc := rt.cfg.RequestPlane
	tlsCfg, err := serverTLS(rc)
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
		OnLimit:              rt.metrics.LimitHit,
		KeepaliveInterval:    rc.KeepaliveInterval,
		KeepaliveTimeout:     rc.KeepaliveTimeout,
		TLS:                  tlsCfg,
		Logger:               rt.log,
		StreamContext:        rt.endpointContext,
	}, mux.HandlerFunc(func(s *mux.ServerStream) error { return serveStream(rt, s) }))
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, mux.ErrServerClosed) {
			rt.log.Error("request plane stopped", "addr", addr, "err", err)
		}
	}()
	rt.planes.tcp, rt.planes.tcpAddr, rt.planes.tcpDone, rt.planes.tcpTLS = srv, addr, done, tlsCfg != nil
	rt.log.Debug("request plane listening", "transport", TransportTCP, "addr", addr, "tls", tlsCfg != nil)
	return nil
}

// endpointContext is the parent of the transport context of a request
// for path: the endpoint's, so that the request needs no context of its
// own (each costs allocations and a lock on the parent).
func (rt *Runtime) endpointContext(path string) context.Context {
	if v, ok := rt.planes.byPath.Load(path); ok {
		return v.(*served).streamParent()
	}
	return nil
}

// serveStream serves one request that arrived over the network. It is
// generic over the stream type so that its stop signal reaches the handler
// without an allocation, and without making the stop channel unless the
// handler asks for it.
func serveStream[S netStream](rt *Runtime, s S) error {
	v, ok := rt.planes.byPath.Load(s.Path())
	if !ok {
		return mux.Errorf(wire.CodeNotFound, "%s is not served by this instance (its discovery record is stale)", s.Path())
	}
	sv := v.(*served)
	c, err := codec.ByName(s.Codec())
	if err != nil {
		return mux.Errorf(wire.CodeBadRequest, "%s: %v", s.Path(), err)
	}
	sv.m.BytesIn.Add(float64(len(s.Payload())))
	ctx := s.Context()
	if sv.intercepted() {
		ctx = context.WithValue(ctx, callKey{}, &Call{Side: ServerSide, RequestID: s.RequestID(), Header: s.Headers(), traceParent: s.TraceParent()})
	}
	_, out, err := sv.raw(ctx, streamStop[S]{s}, c, s.Payload(), s, s.DerivedContext())
	sv.m.BytesOut.Add(float64(out))
	return toWire(err)
}

// open starts a call to cand on the transport its record names.
func (rt *Runtime) open(ctx context.Context, cand *Candidate, req mux.Request) (clientStream, error) {
	switch cand.Transport {
	case TransportTCP:
		if tlsOn := rt.cfg.RequestPlane.TLSCAFile != ""; cand.TLS != tlsOn {
			if cand.TLS {
				return nil, fmt.Errorf("%w: %s instance %x at %s serves TLS; set request_plane.tls_ca_file (LOOM_REQUEST_PLANE_TLS_CA_FILE) to the CA that signed its certificate", ErrUnreachable, cand.Path(), cand.ID, cand.Address)
			}
			return nil, fmt.Errorf("%w: %s instance %x at %s serves plain TCP, and this runtime calls with TLS (request_plane.tls_ca_file is set)", ErrUnreachable, cand.Path(), cand.ID, cand.Address)
		}
		pool, err := rt.tcpPool()
		if err != nil {
			return nil, err
		}
		return pool.Open(ctx, cand.Address, req)
	case TransportNATS:
		return rt.openNATS(ctx, cand, req)
	case TransportLocal:
		// Only reachable inside its own process, and not found in this
		// one: it has shut down and discovery has not caught up yet.
		return nil, fmt.Errorf("%w: %s instance %x is gone (transport local)", ErrUnreachable, cand.Path(), cand.ID)
	}
	return nil, fmt.Errorf("%w: %s instance %x has transport %q, which this runtime does not speak", ErrUnreachable, cand.Path(), cand.ID, cand.Transport)
}

func (rt *Runtime) tcpPool() (*mux.Pool, error) {
	p := &rt.planes
	if pool := p.poolRO.Load(); pool != nil {
		return pool, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pool != nil {
		return p.pool, nil
	}
	if rt.isClosed() {
		return nil, fmt.Errorf("%w: runtime shut down", ErrClosed)
	}
	rc := rt.cfg.RequestPlane
	tlsCfg, err := clientTLS(rc)
	if err != nil {
		return nil, err
	}
	p.pool = mux.NewPool(mux.ClientConfig{
		MaxFrameSize:      rc.MaxFrameSize,
		ConnsPerHost:      rc.ConnsPerHost,
		KeepaliveInterval: rc.KeepaliveInterval,
		KeepaliveTimeout:  rc.KeepaliveTimeout,
		FrameTimeout:      rc.FrameTimeout,
		TLS:               tlsCfg,
		Logger:            rt.log,
		OnDrain:           func(addr string) { p.draining.Store(addr, struct{}{}) },
		OnStall: func(addr string) {
			p.stalled.Store(addr, time.Now().Add(rt.cfg.Client.FailureCooldown).UnixNano())
		},
	})
	p.poolRO.Store(p.pool)
	return p.pool, nil
}

// stopServing sends GOAWAY on every request plane this runtime serves
// and waits for the streams in flight until ctx ends, then closes them.
func (rt *Runtime) stopServing(ctx context.Context) error {
	p := &rt.planes
	p.mu.Lock()
	tcp, done := p.tcp, p.tcpDone
	p.mu.Unlock()
	var errs []error
	if tcp != nil {
		if err := tcp.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("loom: request plane shutdown: %w", err))
			_ = tcp.Close()
		}
		<-done
	}
	errs = append(errs, rt.stopNATSServing(ctx))
	return errors.Join(errs...)
}

// closeCallers closes the pools calls go out on.
func (rt *Runtime) closeCallers() error {
	p := &rt.planes
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	if p.pool != nil {
		errs = append(errs, p.pool.Close())
	}
	errs = append(errs, rt.closeNATSCaller())
	return errors.Join(errs...)
}

// streamStop is a context whose Done is a network stream's stop signal,
// so that Stopped(ctx) and WithStop work for requests from the network. It
// holds only the stream pointer, so it is stored in an interface without
// an allocation, and asks the stream for its channel only when used.
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

func serverTLS(rc config.RequestPlane) (*tls.Config, error) {
	if rc.TLSCertFile == "" && rc.TLSKeyFile == "" {
		if rc.TLSClientAuth {
			return nil, errors.New("request_plane.tls_client_auth needs tls_cert_file and tls_key_file")
		}
		return nil, nil
	}
	cert, err := tlsfiles.KeyPair("request_plane.tls_cert_file", rc.TLSCertFile, "request_plane.tls_key_file", rc.TLSKeyFile)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if rc.TLSClientAuth {
		if rc.TLSCAFile == "" {
			return nil, errors.New("request_plane.tls_client_auth needs tls_ca_file to verify client certificates")
		}
		pool, err := tlsfiles.CAPool("request_plane.tls_ca_file", rc.TLSCAFile)
		if err != nil {
			return nil, err
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

func clientTLS(rc config.RequestPlane) (*tls.Config, error) {
	if rc.TLSCAFile == "" {
		return nil, nil
	}
	pool, err := tlsfiles.CAPool("request_plane.tls_ca_file", rc.TLSCAFile)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if rc.TLSCertFile != "" || rc.TLSKeyFile != "" {
		cert, err := tlsfiles.KeyPair("request_plane.tls_cert_file", rc.TLSCertFile, "request_plane.tls_key_file", rc.TLSKeyFile)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}
