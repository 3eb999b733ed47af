package embedded

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/loomrt/loom/internal/datadir"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
)

// DefaultReadyTimeout is how long StartNATS waits for the server to accept
// clients when NATSOptions.ReadyTimeout is zero.
const DefaultReadyTimeout = 10 * time.Second

// NATSOptions configures an embedded nats-server. The zero value is a quiet
// server without JetStream or auth on 127.0.0.1 and a free port.
type NATSOptions struct {
	// Host is the address to listen on; "" means 127.0.0.1.
	Host string
	// Port is the client port; 0 (or negative) picks a free port
	// (server.RANDOM_PORT), read it back with ClientURL.
	Port int
	// JetStream turns JetStream on.
	JetStream bool
	// StoreDir is JetStream's file store directory; "" means a temporary
	// directory that Shutdown removes. A server holds its StoreDir alone
	// (a lock on the file loom-nats.lock in it, on systems with flock):
	// another StartNATS on it fails at once with ErrStoreDirInUse.
	StoreDir string
	// MonitorPort is the HTTP monitoring port on Host: 0 is off, negative
	// picks a free port (see MonitorURL).
	MonitorPort int

	// Users maps user names to passwords for user/password auth.
	Users map[string]string
	// Token turns on token auth; it cannot be combined with Users.
	Token string
	// NKeys are the public keys (U...) of NKey users allowed to connect.
	NKeys []string
	// Operator turns on decentralised JWT auth (operator mode).
	Operator *NATSOperator
	// TLS makes the server require TLS; set ClientAuth to
	// tls.RequireAndVerifyClientCert (and ClientCAs) for mutual TLS.
	TLS *tls.Config

	// Logger receives the server's log lines; nil keeps the server quiet.
	// Set Debug or Trace in Configure for the server's debug lines.
	Logger *slog.Logger
	// Configure, if set, edits the server options last, for anything the
	// fields above do not cover.
	Configure func(*server.Options)
	// ReadyTimeout bounds the wait for the server to accept clients;
	// zero means DefaultReadyTimeout.
	ReadyTimeout time.Duration
}

// NATSOperator configures operator mode: clients authenticate with user
// JWTs (.creds files) issued by accounts that the operator signed.
type NATSOperator struct {
	// JWT is the operator's JWT.
	JWT string
	// Accounts are the account JWTs the server's in-memory resolver serves.
	Accounts []string
	// SystemAccount is the public key of the system account, which must be
	// among Accounts; "" takes the operator's system account, if any.
	SystemAccount string
}

// NATS is a running embedded nats-server.
type NATS struct {
	srv     *server.Server
	tempDir string
	unlock  func() // releases a given StoreDir
	once    sync.Once
}

// StartNATS starts a nats-server in this process and waits until it accepts
// clients. A port it cannot listen on is a [*ListenError] naming the port
// and the address (it wraps the listener's error, so errors.Is(err,
// syscall.EADDRINUSE) holds for a taken port); a StoreDir it cannot write
// to, or that another server uses, is an error naming the directory; and
// it fails if the server is not ready within ReadyTimeout.
func StartNATS(opts NATSOptions) (*NATS, error) {
	so, err := serverOptions(opts)
	if err != nil {
		return nil, err
	}
	requestedPort := so.Port
	var tempDir string
	if so.JetStream && so.StoreDir == "" {
		tempDir, err = os.MkdirTemp("", "loom-nats-*")
		if err != nil {
			return nil, fmt.Errorf("embedded: JetStream store directory: %w", err)
		}
		so.StoreDir = tempDir
	}
	unlock := func() {}
	if so.JetStream && tempDir == "" {
		// The server would say only "storage directory is not writable",
		// without naming it.
		if err := datadir.Writable(so.StoreDir, 0o750); err != nil {
			return nil, fmt.Errorf("embedded: JetStream store directory %s: %w (give NATSOptions.StoreDir a writable directory, or leave it empty for a temporary one)", so.StoreDir, err)
		}
		// nats-server would share the store with another server of this
		// process, each overwriting what the other wrote.
		if unlock, err = datadir.Lock(so.StoreDir, "loom-nats.lock", 0o600); err != nil {
			if errors.Is(err, datadir.ErrInUse) {
				return nil, storeInUseError{so.StoreDir}
			}
			return nil, fmt.Errorf("embedded: JetStream store directory %s: locking it: %w", so.StoreDir, err)
		}
	}
	release := func() {
		unlock()
		if tempDir != "" {
			_ = os.RemoveAll(tempDir)
		}
	}
	hp := net.JoinHostPort(so.Host, strconv.Itoa(requestedPort))
	if requestedPort == server.RANDOM_PORT {
		hp = net.JoinHostPort(so.Host, "0")
	}

	srv, err := server.NewServer(so)
	if err != nil {
		release()
		return nil, fmt.Errorf("embedded: nats-server options: %w", err)
	}
	log := &serverLog{l: opts.Logger}
	srv.SetLoggerV2(log, so.Debug, so.Trace, false)

	// Start returns once the listeners are up or a startup step failed; a
	// failure is reported only through Fatalf, which serverLog records.
	srv.Start()
	startErr := func() error {
		if msg := log.fatal(); msg != "" {
			if strings.HasPrefix(msg, "Error listening on port") {
				return listenError("client", hp, msg)
			}
			if strings.HasPrefix(msg, "Can't start monitoring") {
				mp := strconv.Itoa(so.HTTPPort)
				if so.HTTPPort == server.RANDOM_PORT {
					mp = "0"
				}
				return listenError("monitoring", net.JoinHostPort(so.HTTPHost, mp), msg)
			}
			return fmt.Errorf("embedded: nats-server on %s failed to start: %s", hp, msg)
		}
		timeout := opts.ReadyTimeout
		if timeout <= 0 {
			timeout = DefaultReadyTimeout
		}
		if !srv.ReadyForConnections(timeout) {
			if msg := log.fatal(); msg != "" {
				return fmt.Errorf("embedded: nats-server on %s failed to start: %s", hp, msg)
			}
			return fmt.Errorf("embedded: nats-server on %s not ready for clients after %s", hp, timeout)
		}
		return nil
	}()
	if startErr != nil {
		srv.Shutdown()
		srv.WaitForShutdown()
		release()
		return nil, startErr
	}
	return &NATS{srv: srv, tempDir: tempDir, unlock: unlock}, nil
}

func serverOptions(opts NATSOptions) (*server.Options, error) {
	so := &server.Options{
		Host:      opts.Host,
		Port:      opts.Port,
		JetStream: opts.JetStream,
		StoreDir:  opts.StoreDir,
		NoSigs:    true,
		NoLog:     true,
	}
	if so.Host == "" {
		so.Host = "127.0.0.1"
	}
	for _, p := range []struct {
		field string
		port  int
	}{{"Port", opts.Port}, {"MonitorPort", opts.MonitorPort}} {
		if p.port > 65535 {
			return nil, fmt.Errorf("embedded: NATSOptions.%s %d is not a port: want one up to 65535, or 0 for %s", p.field, p.port,
				map[string]string{"Port": "a free one", "MonitorPort": "no monitoring"}[p.field])
		}
	}
	if so.Port <= 0 {
		so.Port = server.RANDOM_PORT
	}
	if opts.MonitorPort != 0 {
		so.HTTPHost = so.Host
		so.HTTPPort = opts.MonitorPort
		if opts.MonitorPort < 0 {
			so.HTTPPort = server.RANDOM_PORT
		}
	}
	if opts.Token != "" && (len(opts.Users) > 0 || len(opts.NKeys) > 0) {
		// The server would silently ignore the token.
		return nil, errors.New("embedded: NATSOptions.Token cannot be combined with Users or NKeys")
	}
	for user, pass := range opts.Users {
		so.Users = append(so.Users, &server.User{Username: user, Password: pass})
	}
	so.Authorization = opts.Token
	for _, pub := range opts.NKeys {
		so.Nkeys = append(so.Nkeys, &server.NkeyUser{Nkey: pub})
	}
	if op := opts.Operator; op != nil {
		claims, err := jwt.DecodeOperatorClaims(op.JWT)
		if err != nil {
			return nil, fmt.Errorf("embedded: operator JWT: %w", err)
		}
		resolver := &server.MemAccResolver{}
		for i, a := range op.Accounts {
			ac, err := jwt.DecodeAccountClaims(a)
			if err != nil {
				return nil, fmt.Errorf("embedded: account JWT %d: %w", i, err)
			}
			if err := resolver.Store(ac.Subject, a); err != nil {
				return nil, fmt.Errorf("embedded: account %s: %w", ac.Subject, err)
			}
		}
		so.TrustedOperators = []*jwt.OperatorClaims{claims}
		so.AccountResolver = resolver
		so.SystemAccount = op.SystemAccount
		if so.SystemAccount == "" {
			so.SystemAccount = claims.SystemAccount
		}
		if so.SystemAccount == "" {
			so.NoSystemAccount = true
		}
	}
	if opts.TLS != nil {
		so.TLS = true
		so.TLSConfig = opts.TLS
		so.TLSVerify = opts.TLS.ClientAuth == tls.RequireAndVerifyClientCert
	}
	if opts.Configure != nil {
		opts.Configure(so)
	}
	return so, nil
}

// ErrStoreDirInUse is what StartNATS's error is (errors.Is) when another
// server of this package, in this process or another, uses its StoreDir.
var ErrStoreDirInUse = errors.New("embedded: JetStream store directory in use by another nats-server")

type storeInUseError struct{ dir string }

func (e storeInUseError) Error() string {
	return fmt.Sprintf("embedded: JetStream store directory %s is in use by another nats-server: stop it, or give NATSOptions.StoreDir another directory", e.dir)
}

func (e storeInUseError) Is(target error) bool { return target == ErrStoreDirInUse }

// ListenError is StartNATS's error when the server cannot listen on one of
// its ports. It wraps the listener's error, so errors.Is(err,
// syscall.EADDRINUSE) holds for a port that is taken.
type ListenError struct {
	// Port is the port's use: "client" or "monitoring".
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
		field, free := "Port", "0"
		if e.Port == "monitoring" {
			field, free = "MonitorPort", "-1"
		}
		hint = fmt.Sprintf(" (another process holds the port: stop it, or set NATSOptions.%s to %s for a free one)", field, free)
	case errors.Is(e.Err, syscall.EADDRNOTAVAIL):
		hint = " (NATSOptions.Host is not an address of this machine)"
	}
	return fmt.Sprintf("embedded: nats-server cannot listen on %s for its %s port: %v%s", e.Addr, e.Port, e.Err, hint)
}

func (e *ListenError) Unwrap() error { return e.Err }

// listenError turns the server's listen failure, which it reports as text
// only, into a ListenError that wraps the real one, found by listening on
// the same address again.
func listenError(port, hp, msg string) error {
	l, err := net.Listen("tcp", hp)
	if err == nil {
		_ = l.Close()
		return fmt.Errorf("embedded: nats-server cannot listen on %s for its %s port: %s", hp, port, msg)
	}
	return &ListenError{Port: port, Addr: hp, Err: err}
}

// ClientURL returns the URL clients connect to, with the port the server
// actually listens on ("nats://127.0.0.1:41234", or tls:// with TLS).
func (s *NATS) ClientURL() string { return s.srv.ClientURL() }

// MonitorURL returns the base URL of the HTTP monitoring endpoints, or ""
// if monitoring is off.
func (s *NATS) MonitorURL() string {
	addr := s.srv.MonitorAddr()
	if addr == nil {
		return ""
	}
	return "http://" + addr.String()
}

// Server returns the underlying server, for what this package does not
// wrap (nats.InProcessServer, monitoring structs, account lookups).
func (s *NATS) Server() *server.Server { return s.srv }

// InProcessConn returns a client connection to the server that does not go
// through a socket; it makes NATS a nats.InProcessConnProvider.
func (s *NATS) InProcessConn() (net.Conn, error) { return s.srv.InProcessConn() }

// Shutdown stops the server, closing every client connection, and waits
// until all of its goroutines have ended; then it removes the temporary
// JetStream store, if StartNATS made one. Later calls do nothing.
func (s *NATS) Shutdown() {
	s.once.Do(func() {
		s.srv.Shutdown()
		s.srv.WaitForShutdown()
		s.unlock()
		if s.tempDir != "" {
			_ = os.RemoveAll(s.tempDir)
		}
	})
}

// serverLog adapts the server's logger to slog and records the first fatal
// error. The server's Fatalf would exit the process with its own logger;
// here it is an error to return from StartNATS.
type serverLog struct {
	l        *slog.Logger
	mu       sync.Mutex
	firstErr string
}

func (g *serverLog) fatal() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.firstErr
}

func (g *serverLog) log(level slog.Level, format string, v []any) {
	if g.l == nil || !g.l.Enabled(context.Background(), level) {
		return
	}
	g.l.Log(context.Background(), level, fmt.Sprintf(format, v...), "component", "nats-server")
}

func (g *serverLog) Noticef(format string, v ...any) { g.log(slog.LevelInfo, format, v) }
func (g *serverLog) Warnf(format string, v ...any)   { g.log(slog.LevelWarn, format, v) }
func (g *serverLog) Errorf(format string, v ...any)  { g.log(slog.LevelError, format, v) }
func (g *serverLog) Debugf(format string, v ...any)  { g.log(slog.LevelDebug, format, v) }
func (g *serverLog) Tracef(format string, v ...any)  { g.log(slog.LevelDebug-4, format, v) }

func (g *serverLog) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	g.mu.Lock()
	if g.firstErr == "" {
		g.firstErr = msg
	}
	g.mu.Unlock()
	g.log(slog.LevelError, "%s", []any{msg})
}

var _ server.Logger = (*serverLog)(nil)
