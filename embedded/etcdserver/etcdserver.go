// Package etcdserver runs a real one-member etcd server inside the calling
// process, for tests and for `loom up`.
//
//	srv, err := etcdserver.Start(etcdserver.Options{TickMs: 10, ElectionMs: 50})
//	if err != nil {
//		t.Fatal(err)
//	}
//	t.Cleanup(srv.Close)
//	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.ClientURL()}})
//
// It lives apart from package embedded because the etcd server is heavy to
// compile and link: only programs that import this package pay for it.
//
// The server listens on 127.0.0.1 on free ports unless told otherwise, is
// silent unless given a logger, never installs signal handlers and, with
// no Dir, keeps its data in a temporary directory that Close removes.
package etcdserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/loomrt/loom/internal/datadir"
	"github.com/loomrt/loom/internal/zapslog"
)

// DefaultReadyTimeout is how long Start waits for the server to be ready
// for clients when Options.ReadyTimeout is zero.
const DefaultReadyTimeout = 30 * time.Second

// ErrDirInUse is what Start's error is (errors.Is) when another etcd
// server uses its data directory.
var ErrDirInUse = errors.New("etcdserver: data directory in use by another etcd server")

type dirInUseError struct{ dir string }

func (e dirInUseError) Error() string {
	return fmt.Sprintf("etcdserver: data directory %s is in use by another etcd server: stop it, or give Options.Dir another directory", e.dir)
}

func (e dirInUseError) Is(target error) bool { return target == ErrDirInUse }

// Options configures an embedded etcd server. The zero value is a silent
// server with etcd's default timing on 127.0.0.1, free ports and a
// temporary data directory.
type Options struct {
	// Name is the member name; "" means "loom".
	Name string
	// Dir is the data directory. "" means a temporary directory that
	// Close removes. Start a server again on the same Dir (and the same
	// ports) to restart it with its data. A server holds its Dir alone
	// (a lock on the file loom-etcd.lock in it, on systems with flock):
	// another Start on it fails at once with ErrDirInUse.
	Dir string
	// Host is the address to listen on; "" means 127.0.0.1.
	Host string
	// ClientPort is the port clients connect to; 0 picks a free port
	// (read it back with ClientURL).
	ClientPort int
	// PeerPort is the raft peer port; 0 picks a free port.
	PeerPort int
	// TickMs is the heartbeat interval in milliseconds and ElectionMs the
	// election timeout; zero means etcd's defaults (100 and 1000). Tests
	// use 10 and 50, so that a server is leader, and a restarted one
	// serves again, within a few tens of milliseconds.
	TickMs, ElectionMs uint
	// NoFsync turns fsync off: much faster on slow disks, and data may be
	// lost in a crash. For tests only.
	NoFsync bool
	// Logger receives the server's log lines at LogLevel and above; nil
	// keeps the server silent.
	Logger *slog.Logger
	// LogLevel is the lowest level passed to Logger; zero means Info.
	LogLevel slog.Level
	// Configure, if set, edits etcd's configuration last, for anything the
	// fields above do not cover.
	Configure func(*embed.Config)
	// ReadyTimeout bounds the wait for the server to serve clients; zero
	// means DefaultReadyTimeout.
	ReadyTimeout time.Duration
}

// Server is a running embedded etcd server.
type Server struct {
	etcd      *embed.Etcd
	stop      context.CancelFunc // ends the client streams
	dir       string
	tempDir   bool
	clientURL string
	peerURL   string
	unlock    func() // releases dir
	once      sync.Once
}

// Start starts an etcd server in this process and waits until it serves
// clients. A port it cannot listen on is a [*ListenError] naming the port
// and the address (it wraps the listener's error, so errors.Is(err,
// syscall.EADDRINUSE) holds for a taken port); a Dir it cannot write to,
// or that another etcd server uses, is an error naming the directory.
func Start(opts Options) (*Server, error) {
	host := opts.Host
	if host == "" {
		host = "127.0.0.1"
	}
	if opts.ClientPort < 0 || opts.ClientPort > 65535 || opts.PeerPort < 0 || opts.PeerPort > 65535 {
		return nil, fmt.Errorf("etcdserver: ports must be in 0..65535; got client %d, peer %d", opts.ClientPort, opts.PeerPort)
	}
	for _, p := range []struct {
		what string
		port int
	}{{"client", opts.ClientPort}, {"peer", opts.PeerPort}} {
		if p.port != 0 {
			if err := probe(host, p.what, p.port); err != nil {
				return nil, err
			}
		}
	}

	dir, temp := opts.Dir, false
	if dir != "" {
		// etcd's own error would not say what to do.
		if err := datadir.Writable(dir, 0o700); err != nil {
			return nil, fmt.Errorf("etcdserver: data directory %s: %w (give Options.Dir a writable directory, or leave it empty for a temporary one)", dir, err)
		}
	}
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "loom-etcd-*"); err != nil {
			return nil, fmt.Errorf("etcdserver: data directory: %w", err)
		}
		temp = true
	}
	unlock, err := lockDir(dir)
	if err != nil {
		if temp {
			_ = os.RemoveAll(dir)
		}
		return nil, err
	}

	// A port Start picked itself may be taken by someone else before etcd
	// binds it; pick again a few times rather than fail.
	var lastErr error
	for range 3 {
		clientPort, peerPort := opts.ClientPort, opts.PeerPort
		var err error
		if clientPort == 0 {
			if clientPort, err = freePort(host, "client"); err != nil {
				lastErr = err
				break
			}
		}
		if peerPort == 0 {
			if peerPort, err = freePort(host, "peer"); err != nil {
				lastErr = err
				break
			}
		}
		s, err := start(opts, host, dir, clientPort, peerPort)
		if err == nil {
			s.tempDir, s.unlock = temp, unlock
			return s, nil
		}
		lastErr = err
		picked := opts.ClientPort == 0 || opts.PeerPort == 0
		if !picked || !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
	}
	unlock()
	if temp {
		_ = os.RemoveAll(dir)
	}
	return nil, lastErr
}

func start(opts Options, host, dir string, clientPort, peerPort int) (*Server, error) {
	name := opts.Name
	if name == "" {
		name = "loom"
	}
	clientURL := url.URL{Scheme: "http", Host: net.JoinHostPort(host, strconv.Itoa(clientPort))}
	peerURL := url.URL{Scheme: "http", Host: net.JoinHostPort(host, strconv.Itoa(peerPort))}

	cfg := embed.NewConfig()
	cfg.Name = name
	cfg.Dir = dir
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = name + "=" + peerURL.String()
	cfg.InitialClusterToken = "loom-" + name
	if opts.TickMs != 0 {
		cfg.TickMs = opts.TickMs
	}
	if opts.ElectionMs != 0 {
		cfg.ElectionMs = opts.ElectionMs
	}
	cfg.UnsafeNoFsync = opts.NoFsync
	cfg.EnableGRPCGateway = false
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zapLogger(opts.Logger, opts.LogLevel))
	stopping, stop := context.WithCancel(context.Background())
	cfg.GRPCAdditionalServerOptions = append(cfg.GRPCAdditionalServerOptions, grpc.ChainStreamInterceptor(endStreams(stopping)))
	if opts.Configure != nil {
		opts.Configure(cfg)
	}

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		stop()
		return nil, startError(err, clientURL.Host, peerURL.Host)
	}
	timeout := opts.ReadyTimeout
	if timeout <= 0 {
		timeout = DefaultReadyTimeout
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		stop()
		e.Close()
		return nil, fmt.Errorf("etcdserver: etcd on %s failed: %w", clientURL.Host, err)
	case <-timer.C:
		stop()
		e.Close()
		return nil, fmt.Errorf("etcdserver: etcd on %s not ready for clients after %v (data directory %s)", clientURL.Host, timeout, dir)
	}
	return &Server{etcd: e, stop: stop, dir: dir, clientURL: clientURL.String(), peerURL: peerURL.String()}, nil
}

// probe fails with a clear error if host:port cannot be listened on.
func probe(host, what string, port int) error {
	hp := net.JoinHostPort(host, strconv.Itoa(port))
	l, err := net.Listen("tcp", hp)
	if err != nil {
		return listenError(what, hp, err)
	}
	return l.Close()
}

// ListenError is Start's error when the server cannot listen on one of its
// ports. It wraps the listener's error, so errors.Is(err,
// syscall.EADDRINUSE) holds for a port that is taken.
type ListenError struct {
	// Port is the port's use: "client" or "peer".
	Port string
	// Addr is the address the server could not listen on, host:port.
	Addr string
	// Err is the listener's error.
	Err error
}

func (e *ListenError) Error() string {
	hint := ""
	switch {
	case errors.Is(e.Err, syscall.EADDRINUSE):
		field := map[string]string{"client": "ClientPort", "peer": "PeerPort"}[e.Port]
		hint = fmt.Sprintf(" (is another etcd running? stop it, or set Options.%s to 0 for a free one)", field)
	case errors.Is(e.Err, syscall.EADDRNOTAVAIL):
		hint = " (Options.Host is not an address of this machine)"
	}
	return fmt.Sprintf("etcdserver: cannot listen on %s for etcd %ss: %v%s", e.Addr, e.Port, e.Err, hint)
}

func (e *ListenError) Unwrap() error { return e.Err }

func listenError(what, hp string, err error) error {
	return &ListenError{Port: what, Addr: hp, Err: err}
}

// lockDir takes dir for this server alone. etcd waits without end for the
// lock of its database when another server holds it, whatever
// ReadyTimeout says; this fails at once instead: on the lock file for a
// server of this package, in this process or another, and on the
// database's own lock (bbolt's flock) for any other etcd.
func lockDir(dir string) (unlock func(), err error) {
	unlock, err = datadir.Lock(dir, "loom-etcd.lock", 0o600)
	switch {
	case errors.Is(err, datadir.ErrInUse):
		return nil, dirInUseError{dir}
	case err != nil:
		return nil, fmt.Errorf("etcdserver: data directory %s: locking it: %w", dir, err)
	}
	if datadir.Held(filepath.Join(dir, "member", "snap", "db")) {
		unlock()
		return nil, dirInUseError{dir}
	}
	return unlock, nil
}

// startError names the port a listen error is about.
func startError(err error, clientHP, peerHP string) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		var op *net.OpError
		if errors.As(err, &op) && op.Addr != nil && op.Addr.String() == peerHP {
			return listenError("peer", peerHP, err)
		}
		if errors.As(err, &op) && op.Addr != nil && op.Addr.String() == clientHP {
			return listenError("client", clientHP, err)
		}
		return fmt.Errorf("etcdserver: cannot listen on %s (clients) or %s (peers): %w", clientHP, peerHP, err)
	}
	return fmt.Errorf("etcdserver: start etcd on %s: %w", clientHP, err)
}

func freePort(host, what string) (int, error) {
	hp := net.JoinHostPort(host, "0")
	l, err := net.Listen("tcp", hp)
	if err != nil {
		return 0, listenError(what, hp, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ClientURL returns the URL clients connect to ("http://127.0.0.1:41234").
func (s *Server) ClientURL() string { return s.clientURL }

// PeerURL returns the raft peer URL.
func (s *Server) PeerURL() string { return s.peerURL }

// Dir returns the data directory.
func (s *Server) Dir() string { return s.dir }

// Etcd returns the underlying server, for what this package does not wrap.
func (s *Server) Etcd() *embed.Etcd { return s.etcd }

// Close stops the server, closing every client connection, and waits
// until it has stopped; then it removes the temporary data directory, if
// Start made one. Later calls do nothing.
func (s *Server) Close() {
	s.once.Do(func() {
		s.stop()
		s.etcd.Close()
		<-s.etcd.Server.StopNotify()
		s.unlock()
		if s.tempDir {
			_ = os.RemoveAll(s.dir)
		}
	})
}

// endStreams returns a stream interceptor that ends every stream (watches,
// keep-alives) once stopping ends, with codes.Unavailable so that clients
// reconnect and resume as they do when a server goes away. Without it,
// etcd's Close waits up to its request timeout (over 5s) for streams that
// clients keep open.
func endStreams(stopping context.Context) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, cancel := context.WithCancel(ss.Context())
		defer cancel()
		defer context.AfterFunc(stopping, cancel)()
		err := handler(srv, &stream{ServerStream: ss, ctx: ctx})
		if stopping.Err() != nil {
			return status.Error(codes.Unavailable, "etcdserver: server stopping")
		}
		return err
	}
}

type stream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *stream) Context() context.Context { return s.ctx }

// zapLogger returns a logger that passes etcd's log lines at min and above
// to l, or a no-op logger if l is nil.
func zapLogger(l *slog.Logger, min slog.Level) *zap.Logger {
	if l == nil {
		return zap.NewNop()
	}
	return zapslog.New(l, min, "etcd-server")
}
