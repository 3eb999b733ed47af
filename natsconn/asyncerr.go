package natsconn

import (
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/internal/natsrefusal"
	"github.com/loomrt/loom/metrics"
)

// repeatWindow is how long repeats of one asynchronous error are folded
// into a summary, in nanoseconds; 0 is a minute.
var repeatWindow atomic.Int64

// repeatKeys is how many distinct (kind, subject) pairs a connection
// remembers, 0 is defaultRepeatKeys. Errors on pairs beyond it are only
// counted, in one summary, so an application publishing to millions of
// refused subjects costs no more memory than this.
var repeatKeys atomic.Int64

const (
	defaultRepeatKeys = 1024
	// maxKeySubject bounds the subject a key holds: a server's control
	// line, and so a subject, may be as long as its max_control_line.
	maxKeySubject = 256
)

// summaryTimers counts the summary timers armed (each with its watch of
// the connection), for the tests that check a closed connection leaves
// none.
var summaryTimers atomic.Int64

func window() time.Duration {
	if d := repeatWindow.Load(); d > 0 {
		return time.Duration(d)
	}
	return time.Minute
}

func maxKeys() int {
	if n := repeatKeys.Load(); n > 0 {
		return int(n)
	}
	return defaultRepeatKeys
}

// errKey is what one repeated asynchronous error is: for a permission
// violation, the kind of operation refused and its subject; otherwise the
// error's text and the subscription's subject, if any.
type errKey struct {
	perm    bool
	kind    string
	subject string
}

// repeats is what was folded since an error was last logged. The key
// says what the error was: holding the error itself, up to a control line
// long, for each key would multiply what a key costs.
type repeats struct {
	logged time.Time // when it was last logged, at once or summed up
	n      int       // occurrences since
}

// asyncErrors logs a connection's asynchronous errors: the first of each
// key at once, and the repeats within a window in one summary at the
// window's end ("N more since ..."), so that a publisher the server refuses
// a thousand times a second writes a line a minute, not a thousand a
// second, and no refusal goes uncounted. It counts permission violations
// in the metrics, if any, each one.
type asyncErrors struct {
	l *slog.Logger
	m *metrics.Metrics // nil: no metrics

	mu       sync.Mutex
	nc       *nats.Conn // the connection, once an error came
	seen     map[errKey]*repeats
	overflow struct { // errors of keys beyond maxKeys
		n     int
		since time.Time
		last  error
	}
	timer   *time.Timer // armed while anything is remembered; nil otherwise
	armed   int         // times timer was armed: a stopped one may fire still
	unwatch func()      // ends the watch for the close started with timer
	closing bool        // closed unseen by the closed handler: end at the next tick
	closed  bool
}

func newAsyncErrors(l *slog.Logger, m *metrics.Metrics) *asyncErrors {
	return &asyncErrors{l: l, m: m, seen: make(map[errKey]*repeats)}
}

// handle is the connection's nats.ErrorHandler.
func (a *asyncErrors) handle(nc *nats.Conn, sub *nats.Subscription, err error) {
	k := keyOf(sub, err)
	if k.perm && a.m != nil {
		// Counted once the refusal is logged, so that whoever sees the
		// count sees the log line too.
		defer a.m.NATSPermissionViolation(k.kind)
	}
	a.mu.Lock()
	a.nc = nc
	if a.closed {
		a.mu.Unlock()
		a.log(k, err)
		return
	}
	if r, ok := a.seen[k]; ok {
		r.n++
		a.mu.Unlock()
		return
	}
	if len(a.seen) >= maxKeys() {
		if a.overflow.n == 0 {
			a.overflow.since = time.Now()
		}
		a.overflow.n++
		a.overflow.last = err
		a.armLocked()
		a.mu.Unlock()
		return
	}
	a.seen[k] = &repeats{logged: time.Now()}
	a.armLocked()
	a.mu.Unlock()
	a.log(k, err)
}

func (a *asyncErrors) log(k errKey, err error) {
	every := window()
	if k.perm {
		a.l.Error("NATS permissions violation", "kind", k.kind, "subject", k.subject, "err", err, "repeats_summed_every", every)
		return
	}
	if k.subject != "" {
		a.l.Error("NATS asynchronous error", "subject", k.subject, "err", err, "repeats_summed_every", every)
		return
	}
	a.l.Error("NATS asynchronous error", "err", err, "repeats_summed_every", every)
}

// armLocked starts the timer, and a watch for the close while it runs.
// The closed handler cannot be relied on to stop it: the runtime clears
// that handler to close its connection quietly, and WithNATSOptions may
// replace it. A status listener sees the close whatever handlers are set.
func (a *asyncErrors) armLocked() {
	if a.timer != nil {
		return
	}
	summaryTimers.Add(1)
	a.armed++
	armed := a.armed
	a.timer = time.AfterFunc(window(), func() { a.tick(armed) })

	nc := a.nc
	closed := nc.StatusChanged(nats.CLOSED)
	done := make(chan struct{})
	a.unwatch = func() {
		close(done)
		nc.RemoveStatusListener(closed)
	}
	go func() {
		if !nc.IsClosed() { // else closed before the listener was registered
			select {
			case <-closed:
			case <-done:
				return
			}
		}
		a.closedUnseen()
	}()
}

// closeGrace is how long after a close its closed handler did not see the
// summaries end: nats.go may still hold errors for the error handler,
// which run after the close, and they are folded in rather than each
// logged.
const closeGrace = 100 * time.Millisecond

func (a *asyncErrors) closedUnseen() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.timer == nil || a.closed {
		return
	}
	a.closing = true
	a.timer.Reset(min(closeGrace, window()))
}

func (a *asyncErrors) stopLocked() {
	if a.timer != nil {
		a.timer.Stop()
		a.timer = nil
		a.unwatch()
		a.unwatch = nil
		summaryTimers.Add(-1)
	}
}

// summary is one line to log: n repeats of k since, or, with overflow,
// n errors of keys not tracked, the last one last.
type summary struct {
	k        errKey
	overflow bool
	n        int
	since    time.Time
	last     error
}

// tick logs the repeats of the window that ended and forgets the keys
// quiet for a whole window, so that their next error is logged at once.
func (a *asyncErrors) tick(armed int) {
	a.mu.Lock()
	if a.timer == nil || a.armed != armed || a.closed {
		a.mu.Unlock()
		return // stopped since
	}
	if a.closing {
		a.mu.Unlock()
		a.close()
		return
	}
	now := time.Now()
	var out []summary
	for k, r := range a.seen {
		switch {
		case r.n > 0:
			out = append(out, summary{k: k, n: r.n, since: r.logged})
			r.logged, r.n = now, 0
		case now.Sub(r.logged) >= window():
			delete(a.seen, k)
		}
	}
	out = a.overflowLocked(out)
	if len(a.seen) == 0 {
		a.stopLocked()
	} else {
		a.timer.Reset(window())
	}
	a.mu.Unlock()
	a.report(out)
}

func (a *asyncErrors) overflowLocked(out []summary) []summary {
	if o := &a.overflow; o.n > 0 {
		out = append(out, summary{overflow: true, n: o.n, since: o.since, last: o.last})
		o.n, o.last = 0, nil
	}
	return out
}

// close logs what is folded and stops the timer: the connection closed.
func (a *asyncErrors) close() {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return
	}
	a.closed = true
	a.stopLocked()
	var out []summary
	for k, r := range a.seen {
		if r.n > 0 {
			out = append(out, summary{k: k, n: r.n, since: r.logged})
		}
	}
	out = a.overflowLocked(out)
	a.seen = nil
	a.mu.Unlock()
	a.report(out)
}

func (a *asyncErrors) report(out []summary) {
	for _, s := range out {
		since := s.since.UTC().Format(time.RFC3339)
		switch {
		case s.overflow:
			a.l.Error("NATS asynchronous errors on more subjects than are tracked", "more", s.n,
				"since", since, "tracked", maxKeys(), "last_err", s.last)
		case s.k.perm:
			a.l.Error("NATS permissions violation repeated", "kind", s.k.kind, "subject", s.k.subject,
				"more", s.n, "since", since)
		case s.k.subject != "":
			a.l.Error("NATS asynchronous error repeated", "subject", s.k.subject, "err", s.k.kind,
				"more", s.n, "since", since)
		default:
			a.l.Error("NATS asynchronous error repeated", "err", s.k.kind, "more", s.n, "since", since)
		}
	}
}

func keyOf(sub *nats.Subscription, err error) errKey {
	if kind, subject, ok := natsrefusal.Read(err); ok {
		return errKey{perm: true, kind: kind, subject: clip(subject)}
	}
	k := errKey{kind: clip(err.Error())}
	if sub != nil {
		k.subject = clip(sub.Subject)
	}
	return k
}

// clip bounds s, and copies it so that a key does not hold a longer string.
func clip(s string) string {
	if len(s) > maxKeySubject {
		s = s[:maxKeySubject]
	}
	return strings.Clone(s)
}
