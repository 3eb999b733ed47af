package natsconn

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/config"
)

// dialer opens nats.go's sockets. During Connect it dials with Connect's
// context, closes what it opened when that context ends, and records each
// attempt, so that an error can say which server did what.
type dialer struct {
	timeout time.Duration

	mu       sync.Mutex
	ctx      context.Context // nil once Connect's nats.Connect returned
	stops    []func() bool
	attempts []attempt
}

type attempt struct {
	addr string // host:port, "" for an in-process connection
	err  error
}

// Dial implements nats.CustomDialer.
func (d *dialer) Dial(network, addr string) (net.Conn, error) {
	d.mu.Lock()
	ctx := d.ctx
	d.mu.Unlock()
	if ctx == nil {
		ctx = context.Background()
	}
	c, err := (&net.Dialer{Timeout: d.timeout}).DialContext(ctx, network, addr)
	return d.track(addr, c, err)
}

func (d *dialer) track(addr string, c net.Conn, err error) (net.Conn, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ctx == nil {
		return c, err
	}
	d.attempts = append(d.attempts, attempt{addr, err})
	if err == nil {
		d.stops = append(d.stops, context.AfterFunc(d.ctx, func() { _ = c.Close() }))
	}
	return c, err
}

// connectReturned hands the sockets over to nats.go for good.
func (d *dialer) connectReturned() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, stop := range d.stops {
		stop()
	}
	d.stops = nil
	d.ctx = nil
}

func (d *dialer) tried() []attempt {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]attempt(nil), d.attempts...)
}

// inProcess lets the dialer track in-process connections too.
type inProcess struct {
	p nats.InProcessConnProvider
	d *dialer
}

func (ip inProcess) InProcessConn() (net.Conn, error) {
	c, err := ip.p.InProcessConn()
	if err == nil {
		c = &pipeConn{Conn: c}
	}
	return ip.d.track("", c, err)
}

// pipeConn sends nats.go's CONNECT together with the PING that follows it.
// The server's in-process connection is a synchronous net.Pipe: written
// apart, the server answers a refused CONNECT while the client is still
// blocked writing PING, and both wait for the server's 10 s write deadline.
type pipeConn struct {
	net.Conn
	mu      sync.Mutex
	held    []byte
	settled bool // CONNECT went out; plain pass-through from now on
}

func (c *pipeConn) Write(p []byte) (int, error) {
	n := len(p)
	c.mu.Lock()
	if !c.settled {
		if c.held == nil && bytes.HasPrefix(p, []byte("CONNECT ")) {
			c.held = append([]byte(nil), p...)
			c.mu.Unlock()
			return n, nil
		}
		if c.held != nil {
			p = append(c.held, p...)
		}
		c.held, c.settled = nil, true
	}
	c.mu.Unlock()
	if _, err := c.Conn.Write(p); err != nil {
		return 0, err
	}
	return n, nil
}

func (c *pipeConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	held := c.held
	c.held, c.settled = nil, c.settled || held != nil
	c.mu.Unlock()
	if held != nil {
		if _, err := c.Conn.Write(held); err != nil {
			return 0, err
		}
	}
	return c.Conn.Read(p)
}

// connError is an error with Loom's message that still matches the errors
// it came from with errors.Is and errors.As.
type connError struct {
	msg  string
	errs []error
}

func (e *connError) Error() string   { return e.msg }
func (e *connError) Unwrap() []error { return e.errs }

var authErrors = []error{nats.ErrAuthorization, nats.ErrAuthExpired, nats.ErrAuthRevoked, nats.ErrAccountAuthExpired}

func isAuthError(err error) bool { return authText(err) != "" }

// authText is the text of the nats.go auth error that err is, or "".
func authText(err error) string {
	for _, e := range authErrors {
		if errors.Is(err, e) {
			return natsText(e)
		}
	}
	return ""
}

// natsText drops nats.go's "nats: " prefix when the message says natsconn.
func natsText(err error) string {
	return strings.TrimPrefix(strings.TrimPrefix(err.Error(), "nats: "), "tls error: ")
}

// explain turns a failed connect into an error that says what to fix.
// parent is the caller's context, ctx the one bounded by ConnectTimeout.
func (c *connector) explain(parent, ctx context.Context, err error, d *dialer, elapsed time.Duration) error {
	tried := d.tried()
	var lastDialErr error
	var reached []string
	for _, a := range tried {
		if a.err != nil {
			lastDialErr = a.err
		} else if !slices.Contains(reached, a.addr) {
			reached = append(reached, a.addr)
		}
	}
	all := redacted(c.urls)
	if c.o.inProcess != nil {
		all = "the in-process server"
	}

	ctxDone := ctx.Err() != nil && errors.Is(err, ctx.Err())
	// nats.go's handshake deadline is ConnectTimeout too and may fire first.
	handshakeTimeout := errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, nats.ErrTimeout)
	if ctxDone || handshakeTimeout {
		errs := []error{err}
		if !ctxDone {
			errs = append(errs, context.DeadlineExceeded)
		}
		detail := ""
		if lastDialErr != nil {
			errs = append(errs, lastDialErr)
			detail = " (last: " + lastDialErr.Error() + ")"
		}
		if parent.Err() != nil && errors.Is(parent.Err(), context.Canceled) {
			return &connError{fmt.Sprintf("natsconn: connecting to %s cancelled: %v", all, err), errs}
		}
		return &connError{fmt.Sprintf("natsconn: no answer from NATS at %s within %s%s (check %s, and that the server is up)",
			all, elapsed.Round(time.Millisecond), detail, urlHint(c.o.urlSource)), errs}
	}

	// With several servers nats.go returns the last server's error: a dead
	// last server hides why a live one refused us. Ask each live one alone.
	if len(c.urls) > 1 && len(reached) > 0 && c.o.inProcess == nil && !isAuthError(err) && !isTLSError(err) {
		for _, addr := range reached {
			u := c.urlFor(addr)
			if u == nil {
				continue
			}
			nc, _, perr := c.connect(ctx, []*url.URL{u})
			if nc != nil {
				nc.Close()
				continue
			}
			if perr != nil && (isAuthError(perr) || isTLSError(perr)) {
				err, tried = perr, []attempt{{addr: addr}}
				break
			}
		}
	}

	label := all
	for i := len(tried) - 1; i >= 0; i-- {
		if tried[i].err == nil {
			label = c.label(tried[i].addr)
			break
		}
	}
	switch {
	case isAuthError(err):
		return &connError{fmt.Sprintf("natsconn: %s refused %s: %s (%s)", label, c.auth.who, authText(err), c.auth.hint), []error{err}}
	case isTLSError(err):
		return &connError{fmt.Sprintf("natsconn: TLS with %s failed: %s (%s)", label, natsText(err), tlsHint(c.cfg)), []error{err}}
	case len(reached) == 0 && c.o.inProcess == nil:
		errs := []error{nats.ErrNoServers}
		cause := natsText(err)
		if lastDialErr != nil {
			errs = append(errs, lastDialErr)
			cause = lastDialErr.Error()
		}
		if !errors.Is(err, nats.ErrNoServers) && !errors.Is(err, lastDialErr) {
			errs = append(errs, err)
		}
		return &connError{fmt.Sprintf("natsconn: cannot reach NATS at %s: %s (check %s, and that the server is up)", all, cause, urlHint(c.o.urlSource)), errs}
	}
	return &connError{fmt.Sprintf("natsconn: connecting to %s: %s", label, natsText(err)), []error{err}}
}

// urlHint names what sets the URL, given where it came from (see
// WithURLSource).
func urlHint(source string) string {
	switch {
	case source == "":
		return "nats.url or NATS_SERVER"
	case source == config.SourceDefault:
		return "nats.url or NATS_SERVER, both unset"
	case source == config.SourceCode:
		return "nats.url, set by the program"
	case strings.HasPrefix(source, "env "):
		return strings.TrimPrefix(source, "env ")
	case strings.HasPrefix(source, "-"):
		return source // a flag
	}
	return "nats.url in " + source
}

// urlFor finds the configured URL that nats.go dialed as addr.
func (c *connector) urlFor(addr string) *url.URL {
	for _, u := range c.urls {
		if u.Host == addr {
			return u
		}
	}
	// nats.go dials resolved addresses: match on the port if only one URL has it.
	_, port, _ := net.SplitHostPort(addr)
	var found *url.URL
	for _, u := range c.urls {
		if u.Port() == port {
			if found != nil {
				return nil
			}
			found = u
		}
	}
	return found
}

func (c *connector) label(addr string) string {
	if c.o.inProcess != nil {
		return "the in-process server"
	}
	if u := c.urlFor(addr); u != nil {
		return redact(u)
	}
	return "nats://" + addr
}
