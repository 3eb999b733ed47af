package natsconn

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/metrics"
)

// Defaults that Connect uses for fields of config.NATS left at their zero
// value. They match config's defaults.
const (
	DefaultURL            = nats.DefaultURL
	DefaultName           = "loom"
	DefaultConnectTimeout = 5 * time.Second
	DefaultReconnectWait  = time.Second
)

// Option tunes one call of Connect.
type Option func(*options)

type options struct {
	logger    *slog.Logger
	metrics   *metrics.Metrics
	urlSource string
	inProcess nats.InProcessConnProvider
	natsOpts  []nats.Option
}

// WithLogger sets the logger that reports disconnects, reconnects and
// asynchronous errors of the connection; the default is slog.Default().
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.logger = l
		}
	}
}

// WithMetrics counts the operations the server refuses the connection for
// want of permission in m (loom_nats_permission_violations_total); by
// default they are only logged. An error handler set with WithNATSOptions
// replaces the one that logs and counts them.
func WithMetrics(m *metrics.Metrics) Option {
	return func(o *options) { o.metrics = m }
}

// WithURLSource says where cfg.URL came from, so that an error reaching
// the server names what to check: what config.Loaded.Source reports for
// nats.url ("env NATS_SERVER", a file's path, "default", "code"), "env
// NAME" for another variable, or a flag ("--url"). Without it the error
// names both nats.url and NATS_SERVER.
func WithURLSource(source string) Option {
	return func(o *options) { o.urlSource = source }
}

// WithInProcessServer connects to a server in this process without a socket
// (an *embedded.NATS or a *server.Server). cfg.URL is then not dialed; auth
// and reconnect settings still apply.
func WithInProcessServer(p nats.InProcessConnProvider) Option {
	return func(o *options) { o.inProcess = p }
}

// WithNATSOptions adds raw nats.go options, applied after the ones Connect
// derives from the configuration, so they win (a handler set here replaces
// the one that logs that event).
func WithNATSOptions(opts ...nats.Option) Option {
	return func(o *options) { o.natsOpts = append(o.natsOpts, opts...) }
}

// Connect connects to the NATS server or cluster that cfg names and returns
// the connection, ready to use; the caller closes it.
//
// cfg.URL is a comma-separated list of server URLs (NATS_SERVER); a tls://
// URL or a TLS file turns TLS on. Exactly one auth mode may be set: User and
// Password, Token, NKey (a user seed or the path of a file holding one),
// CredentialsFile, or user info in the URLs (user:password, or a token
// alone); setting several is an error wrapping ErrAuthConflict, as nats.go
// would send the URL's user info and ignore the rest. Errors and logs never
// show a password or token.
// Zero values take the Default constants above, except MaxReconnects, which
// is used as given (0: never reconnect; config's default is -1: forever).
//
// Connect gives up after cfg.ConnectTimeout or when ctx ends, whichever
// comes first. A server that refuses the credentials fails the call at once
// with an error naming the URL, the auth mode and the variables to check;
// errors wrap nats.go's (errors.Is(err, nats.ErrAuthorization),
// nats.ErrNoServers) and the context's.
func Connect(ctx context.Context, cfg config.NATS, opts ...Option) (*nats.Conn, error) {
	o := options{logger: slog.Default()}
	for _, opt := range opts {
		opt(&o)
	}
	urls, err := parseURLs(cfg.URL)
	if err != nil {
		return nil, err
	}
	auth, err := authFor(cfg, urls, o.urlSource)
	if err != nil {
		return nil, err
	}
	tlsConf, err := tlsFor(cfg, urls)
	if err != nil {
		return nil, err
	}
	timeout := cfg.ConnectTimeout
	if timeout <= 0 {
		timeout = DefaultConnectTimeout
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	c := &connector{cfg: cfg, o: o, urls: urls, auth: auth, tls: tlsConf, timeout: timeout}
	start := time.Now()
	nc, d, err := c.connect(cctx, urls)
	if err != nil {
		return nil, c.explain(ctx, cctx, err, d, time.Since(start))
	}
	o.logger.Debug("NATS connected", "conn", nc.Opts.Name, "url", ServerURL(nc),
		"server", nc.ConnectedServerName(), "auth", auth.mode)
	return nc, nil
}

// connector holds what one Connect call needs to connect, and to connect
// again to a single server when an error needs explaining.
type connector struct {
	cfg     config.NATS
	o       options
	urls    []*url.URL
	auth    auth
	tls     *tls.Config
	timeout time.Duration
}

// connect runs nats.Connect against servers, racing it with ctx: nats.go
// takes no context, so the dialer closes the sockets it opened when ctx ends.
func (c *connector) connect(ctx context.Context, servers []*url.URL) (*nats.Conn, *dialer, error) {
	d := &dialer{ctx: ctx, timeout: c.timeout}
	nopts := c.natsOptions(d)
	list := make([]string, len(servers))
	for i, u := range servers {
		list[i] = u.String()
	}

	type result struct {
		nc  *nats.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		nc, err := nats.Connect(strings.Join(list, ","), nopts...)
		d.connectReturned()
		done <- result{nc, err}
	}()
	select {
	case r := <-done:
		if r.err != nil && ctx.Err() != nil {
			// The dialer closed the socket because ctx ended: that is the cause.
			return nil, d, ctx.Err()
		}
		return r.nc, d, r.err
	case <-ctx.Done():
		go func() {
			if r := <-done; r.nc != nil {
				r.nc.Close()
			}
		}()
		return nil, d, ctx.Err()
	}
}

func (c *connector) natsOptions(d *dialer) []nats.Option {
	cfg := c.cfg
	name := cfg.Name
	if name == "" {
		name = DefaultName
	}
	wait := cfg.ReconnectWait
	if wait <= 0 {
		wait = DefaultReconnectWait
	}
	nopts := []nats.Option{
		nats.Name(name),
		nats.Timeout(c.timeout),
		nats.ReconnectWait(wait),
		nats.MaxReconnects(cfg.MaxReconnects),
		nats.SetCustomDialer(d),
	}
	if cfg.ReconnectBufferSize != 0 {
		nopts = append(nopts, nats.ReconnectBufSize(cfg.ReconnectBufferSize))
	}
	if c.auth.opt != nil {
		nopts = append(nopts, c.auth.opt)
	}
	if c.tls != nil {
		nopts = append(nopts, nats.Secure(c.tls))
		if reload := tlsReload(cfg); reload != nil {
			nopts = append(nopts, reload)
		}
	}
	if c.o.inProcess != nil {
		nopts = append(nopts, nats.InProcessServer(inProcess{c.o.inProcess, d}))
	}
	nopts = append(nopts, handlers(c.o.logger.With("conn", name), c.o.metrics)...)
	return append(nopts, c.o.natsOpts...)
}

// reconnectLogEvery is how often a run of failed reconnect attempts is
// logged as a warning, in nanoseconds; 0 is once a minute. The attempts
// between are logged at debug level.
var reconnectLogEvery atomic.Int64

func logEvery() time.Duration {
	if d := reconnectLogEvery.Load(); d > 0 {
		return time.Duration(d)
	}
	return time.Minute
}

// outage follows the connection from a disconnect to the reconnect, or
// to its close. nats.go reports a failed dial to ReconnectErrHandler but
// nothing at all when a server it reached refuses the TLS handshake, so
// a timer, not the attempts, says that the connection is still down.
type outage struct {
	l *slog.Logger

	mu       sync.Mutex
	since    time.Time   // when the connection was lost; zero when up
	attempts int         // failed dials nats.go reported
	lastErr  error       // the last of them
	timer    *time.Timer // the next "still disconnected"; nil when up
}

// begin starts following at a disconnect.
func (o *outage) begin(nc *nats.Conn) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.stopLocked()
	o.since, o.attempts, o.lastErr = time.Now(), 0, nil
	var t *time.Timer
	t = time.AfterFunc(logEvery(), func() {
		st := nc.Status()
		o.mu.Lock()
		if o.timer != t {
			o.mu.Unlock()
			return // reconnected or closed since
		}
		if st == nats.CONNECTED || st == nats.CLOSED {
			// Up again, or closed, unseen: WithNATSOptions replaced the
			// handler that says so.
			o.stopLocked()
			o.mu.Unlock()
			return
		}
		attempts, since, lastErr := o.attempts, o.since, o.lastErr
		t.Reset(logEvery())
		o.mu.Unlock()
		// Between attempts nats.go holds the last handshake's error.
		err := nc.LastError()
		if err == nil {
			err = lastErr
		}
		o.l.Warn("NATS still disconnected; retrying", "down", time.Since(since).Round(time.Second),
			"failed_dials", attempts, "err", err)
	})
	o.timer = t
}

// failed counts a failed dial and reports whether it is the first.
func (o *outage) failed(err error) (attempts int, down time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.since.IsZero() {
		o.since = time.Now()
	}
	o.attempts++
	o.lastErr = err
	return o.attempts, time.Since(o.since)
}

// end stops following at a reconnect or a close, and says how long the
// connection was down.
func (o *outage) end() (down time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.stopLocked()
	if !o.since.IsZero() {
		down = time.Since(o.since)
	}
	o.since, o.attempts, o.lastErr = time.Time{}, 0, nil
	return down
}

func (o *outage) stopLocked() {
	if o.timer != nil {
		o.timer.Stop()
		o.timer = nil
	}
}

// handlers log the connection's life after Connect returned. A server that
// stays down is retried every ReconnectWait, forever by default: the
// disconnect and the first failed attempt are warnings, then one a minute
// says the connection is still down, with the last error, and the attempts
// between go to debug level. An asynchronous error, such as a publish the
// server refuses, is logged at once the first time, then its repeats once
// a minute (asyncerr.go).
func handlers(l *slog.Logger, m *metrics.Metrics) []nats.Option {
	// nats.go reports no URL once disconnected; remember the last one.
	var last atomic.Pointer[string]
	remember := func(nc *nats.Conn) string {
		u := ServerURL(nc)
		last.Store(&u)
		return u
	}
	lastURL := func() string {
		if u := last.Load(); u != nil {
			return *u
		}
		return ""
	}
	down := &outage{l: l}
	async := newAsyncErrors(l, m)
	return []nats.Option{
		nats.ConnectHandler(func(nc *nats.Conn) { remember(nc) }),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			down.begin(nc) // a close ends it at once
			if err != nil {
				l.Warn("NATS disconnected; reconnecting", "url", lastURL(), "err", err)
				return
			}
			l.Debug("NATS disconnected", "url", lastURL())
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			d := down.end()
			l.Info("NATS reconnected", "url", remember(nc), "down", d.Round(time.Millisecond))
		}),
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
			attempts, d := down.failed(err)
			if attempts > 1 {
				l.Debug("NATS reconnect attempt failed", "attempts", attempts, "down", d.Round(time.Millisecond), "err", err)
				return
			}
			l.Warn("NATS reconnect attempt failed; retrying", "down", d.Round(time.Millisecond), "err", err)
		}),
		nats.ClosedHandler(func(nc *nats.Conn) {
			down.end()
			async.close()
			if err := nc.LastError(); err != nil && !transient(err) {
				l.Error("NATS connection closed", "url", lastURL(), "err", err)
				return
			}
			l.Debug("NATS connection closed", "url", lastURL())
		}),
		nats.LameDuckModeHandler(func(nc *nats.Conn) {
			l.Warn("NATS server entering lame duck mode; the connection will move to another server",
				"url", ServerURL(nc))
		}),
		nats.ErrorHandler(async.handle),
	}
}

// transient reports whether err, a connection's last error, is one that
// nats.go keeps as the last error without closing the connection: a
// connection that had one and was then closed by its program closed
// cleanly.
func transient(err error) bool {
	for _, e := range []error{nats.ErrPermissionViolation, nats.ErrMaxSubscriptionsExceeded, nats.ErrSlowConsumer, nats.ErrBadHeaderMsg} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// parseURLs splits NATS_SERVER's comma-separated list.
func parseURLs(s string) ([]*url.URL, error) {
	if strings.TrimSpace(s) == "" {
		s = DefaultURL
	}
	var urls []*url.URL
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		raw := part
		if !strings.Contains(part, "://") {
			part = "nats://" + part
		}
		u, err := url.Parse(part)
		if err != nil || u.Hostname() == "" {
			// Hide the user info: it may hold a password.
			if i := strings.LastIndex(raw, "@"); i >= 0 {
				raw = "…@" + raw[i+1:]
			}
			return nil, fmt.Errorf("natsconn: bad NATS URL %q in nats.url (NATS_SERVER): want nats://host:port or tls://host:port", raw)
		}
		switch u.Scheme {
		case "nats", "tls":
			if u.Port() == "" {
				u.Host = net.JoinHostPort(u.Hostname(), "4222")
			}
		case "ws", "wss":
		default:
			return nil, fmt.Errorf("natsconn: NATS URL %s in nats.url (NATS_SERVER) has scheme %q; want nats, tls, ws or wss", redact(u), u.Scheme)
		}
		urls = append(urls, u)
	}
	if len(urls) == 0 {
		return nil, errors.New("natsconn: nats.url (NATS_SERVER) lists no server URL")
	}
	return urls, nil
}

func redacted(urls []*url.URL) string {
	s := make([]string, len(urls))
	for i, u := range urls {
		s[i] = redact(u)
	}
	return strings.Join(s, ", ")
}

// redact returns u without its secret: the password of a user and
// password, or the user info without a password, which nats.go sends as a
// token. url.URL's Redacted shows such a token.
func redact(u *url.URL) string {
	if u.User == nil {
		return u.String()
	}
	if _, ok := u.User.Password(); ok {
		return u.Redacted()
	}
	c := *u
	c.User = url.User("xxxxx")
	return c.String()
}

// ServerURL returns the URL of the server nc is connected to, without a
// password or token it holds, for logs and errors: nats.go's
// ConnectedUrlRedacted shows a token given as the URL's user info. It
// returns "" when nc is not connected.
func ServerURL(nc *nats.Conn) string {
	s := nc.ConnectedUrl()
	if s == "" {
		return ""
	}
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	return redact(u)
}
