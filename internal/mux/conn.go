package mux

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loomrt/loom/internal/wire"
)

const (
	// softPending is the size of the unwritten batch above which Send and
	// Open wait for the writer: a slow socket slows the senders instead of
	// growing memory.
	softPending = 1 << 20
	// hardPending bounds the batch for frames that must not wait (END,
	// CREDIT, PONG, GOAWAY). Beyond it the peer is not reading at all and
	// the connection is closed.
	hardPending = 64 << 20
	// finalFlushTimeout bounds the last write of a connection being closed.
	finalFlushTimeout = 2 * time.Second
	// handshakeTimeout bounds a server's TLS handshake and preface read.
	handshakeTimeout = 10 * time.Second
	// lingerTimeout bounds how long a half-closed connection waits for the
	// peer to close its side.
	lingerTimeout = 5 * time.Second
)

// conn is what client and server connections share: the socket, the frame
// reader, the batching writer goroutine and keepalive.
//
// Frames are appended to one wire.Writer under wmu by any goroutine; the
// writer goroutine swaps the batch out and writes it in one call, so frames
// queued while a write is in flight leave together in the next one.
type conn struct {
	nc    net.Conn
	rd    *wire.Reader
	peer  wire.Preface // the peer's settings
	log   *slog.Logger
	reads atomic.Uint64 // bumped on every read that got bytes from nc; keepalive watches it

	wmu      sync.Mutex
	w        wire.Writer
	wBusy    bool          // a write is in flight (writer goroutine or commitFlush)
	spare    []byte        // the batch buffer not in use; owned by whoever set wBusy
	wIdle    bool          // the writer goroutine is parked on wake
	wDirect  bool          // a commitFlush caller is writing and will take what is appended meanwhile
	wLinger  bool          // the writer waits for a small batch of DATA to grow (minWrite)
	linger   time.Duration // how long it waits at most: lingerWrite
	wUrgent  bool          // the batch holds a frame other than a streamed DATA
	wFull    chan struct{} // closed when the batch has been taken; nil unless someone waits
	wClosing bool          // write what is queued, then stop writing
	wHard    bool          // with wClosing: close the socket after the last write
	wCause   error         // with wHard: why, for shutdown
	dead     bool
	wake     chan struct{}
	// wDeadline is the write deadline set on nc, in monotonic() time (0:
	// none); only the goroutine holding wBusy touches it.
	wDeadline int64

	kaInterval, kaTimeout time.Duration
	lim                   limits
	pongs                 int // PONGs in the unwritten batch; guarded by wmu
	// slowTick is set while keepalive checks at its slow period; poke
	// (clients only) brings it back to the fast one when a stream opens.
	slowTick atomic.Bool
	poke     chan struct{}
	written  atomic.Uint64 // bytes written, counted while lim.stall is set

	done chan struct{} // closed by shutdown
	once sync.Once
	err  error // why the connection ended; set before done is closed
}

type countingReader struct{ c *conn }

func (r countingReader) Read(p []byte) (int, error) {
	n, err := r.c.nc.Read(p)
	if n > 0 {
		r.c.reads.Add(1)
	}
	return n, err
}

// limits are the per-connection bounds on what a peer can cost.
type limits struct {
	frameTimeout time.Duration // a frame must arrive whole within it; 0: no bound
	maxPongs     int           // PONGs queued unsent before the peer is dropped
	onLimit      func(limit string)
	// stall, busy, onStall and onAlive detect a frozen peer (clients
	// only): when busy reports streams open and nothing arrived for
	// stall/4, a PING goes out; if nothing at all answers it within
	// stall, onStall runs, and onAlive when the peer is heard again.
	stall   time.Duration
	busy    func() bool
	opened  func() uint32 // streams opened so far
	onStall func()
	onAlive func()
	// onTick runs at every keepalive check (clients only): an idle
	// connection whose reading no caller holds gets its reader back.
	onTick func()
	// idle, activity and onIdle close idle connections (servers only):
	// when activity reports no stream open and no new one since the
	// last check for idle, onIdle runs (it sends GOAWAY); a peer that
	// has not closed the connection, nor opened a stream, within
	// min(idle, lingerTimeout) after that is dropped. Only streams count
	// as activity: PINGs and other frames do not.
	idle     time.Duration
	activity func() (lastID uint32, open bool)
	onIdle   func()
}

func newConn(nc net.Conn, peer wire.Preface, maxFrame int, kaInterval, kaTimeout time.Duration, lim limits, log *slog.Logger) *conn {
	c := &conn{
		nc:         nc,
		peer:       peer,
		log:        log,
		wake:       make(chan struct{}, 1),
		done:       make(chan struct{}),
		kaInterval: kaInterval,
		kaTimeout:  kaTimeout,
		lim:        lim,
		linger:     lingerWrite,
	}
	if lim.stall > 0 {
		c.poke = make(chan struct{}, 1)
	}
	c.rd = wire.NewReader(countingReader{c}, maxFrame)
	if lim.frameTimeout > 0 {
		c.rd.SetFrameTimeout(lim.frameTimeout, nc.SetReadDeadline)
	}
	return c
}

// tripped records that the peer hit limit: a metric and a log line
// naming the peer.
func (c *conn) tripped(limit string, err error) {
	if c.lim.onLimit != nil {
		c.lim.onLimit(limit)
	}
	c.log.Warn("mux: peer hit a request-plane limit; closing its connection", "limit", limit, "remote", c.nc.RemoteAddr().String(), "err", err)
}

// handshake writes our preface and reads the peer's, within the deadline.
func handshake(nc net.Conn, local wire.Preface, deadline time.Time) (wire.Preface, error) {
	nc.SetDeadline(deadline)
	defer nc.SetDeadline(time.Time{})
	if _, err := nc.Write(wire.AppendPreface(nil, local)); err != nil {
		return wire.Preface{}, err
	}
	return wire.ReadPreface(nc)
}

// begin locks the batch for appending frames. With wait set it first waits,
// until ctx ends, while the batch is above softPending. It fails once the
// connection is closing or dead. On success the caller appends to c.w and
// calls commit.
func (c *conn) begin(ctx context.Context, wait bool) error {
	c.wmu.Lock()
	for {
		if c.dead || c.wClosing {
			c.wmu.Unlock()
			return c.closedErr()
		}
		n := c.w.Len()
		if n < softPending {
			return nil
		}
		if !wait {
			if n < hardPending {
				return nil
			}
			c.wmu.Unlock()
			c.shutdown(fmt.Errorf("%w: peer at %s is not reading (%d bytes unsent)", ErrConnLost, c.nc.RemoteAddr(), n))
			return c.closedErr()
		}
		if c.wFull == nil {
			c.wFull = make(chan struct{})
		}
		ch := c.wFull
		c.wmu.Unlock()
		select {
		case <-ch:
		case <-c.done:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
		c.wmu.Lock()
	}
}

// commit unlocks the batch and wakes the writer if it is parked or
// lingering (a frame other than a stream's DATA ends a linger) and has
// something to do, unless a direct writer (commitFlush) will take the
// frames when its write returns. A writer woken with nothing to write is
// a wasted goroutine hand-off on every call.
func (c *conn) commit() {
	if c.w.Len() > 0 {
		c.wUrgent = true
	}
	c.unlockWaking((c.wIdle || c.wLinger) && !c.wDirect && (c.w.Len() > 0 || c.wClosing))
}

func (c *conn) wakeWriter() { notify(c.wake) }

// commitData is commit for a stream's DATA: a writer lingering for the
// batch to grow is woken once it holds minWrite.
func (c *conn) commitData() {
	c.unlockWaking(!c.wDirect && ((c.wIdle && c.w.Len() > 0) || (c.wLinger && c.w.Len() >= minWrite)))
}

// unlockWaking unlocks the batch, first waking the parked or lingering
// writer if wake is set.
func (c *conn) unlockWaking(wake bool) {
	if wake {
		c.wIdle, c.wLinger = false, false
	}
	c.wmu.Unlock()
	if wake {
		c.wakeWriter()
	}
}

const (
	// minWrite is the smallest batch of streamed DATA the writer goroutine
	// writes right after a write of its own, unless lingerWrite passes
	// first or another frame joins it.
	minWrite = 32 << 10
	// lingerWrite bounds how long the tail of a burst waits for that.
	lingerWrite = 50 * time.Microsecond
)

// notify wakes the goroutine waiting on ch, a channel of capacity 1, or
// leaves it woken already.
func notify(ch chan<- struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// commitFlush is commit for a frame that ends a burst (OPEN, END, CREDIT,
// CANCEL): if no write is in flight the calling goroutine writes the batch
// itself, saving the hop to the writer goroutine on the latency path.
// DATA uses commit, so that a fast stream's messages share writes; a
// sender out of credit calls it too, since it would otherwise wait for
// the writer goroutine to be scheduled before the client could even read
// what it waits on. The reader goroutine never calls it: a reader blocked
// in a write could deadlock with a peer doing the same.
func (c *conn) commitFlush() {
	if !c.canWrite() {
		c.commit()
		return
	}
	c.wBusy, c.wDirect = true, true
	var err error
	// Frames other streams append while this write is in flight are
	// written by this goroutine too, a few batches at most, so concurrent
	// streams share system calls without waking the writer goroutine.
	for range maxDirectBatches {
		buf := c.w.Swap(c.spare)
		c.spare, c.pongs, c.wUrgent = nil, 0, false
		c.wmu.Unlock()
		err = c.flush(buf, false)
		c.wmu.Lock()
		c.spare = buf[:0]
		if c.wFull != nil {
			close(c.wFull)
			c.wFull = nil
		}
		if err != nil || c.w.Len() == 0 || c.wClosing || c.dead {
			break
		}
	}
	c.wBusy, c.wDirect = false, false
	// Frames still queued, or a close request, are the writer goroutine's.
	c.commit()
	if err != nil {
		c.shutdown(fmt.Errorf("%w: writing to %s: %w", ErrConnLost, c.nc.RemoteAddr(), err))
	}
}

// canWrite reports whether a goroutine may write the batch itself: no
// write is in flight and the connection still writes. wmu is held.
func (c *conn) canWrite() bool { return !c.wBusy && !c.wClosing && !c.dead }

// maxDirectBatches bounds how many batches one commitFlush caller writes
// before leaving the rest to the writer goroutine.
const maxDirectBatches = 4

func (c *conn) closedErr() error {
	select {
	case <-c.done:
		return c.err
	default:
		return fmt.Errorf("%w: connection to %s is closing", ErrConnLost, c.nc.RemoteAddr())
	}
}

// closeAfterFlush stops accepting frames and has the writer write what is
// queued. Then the writer half-closes the connection (hard false; the reader
// runs until the peer closes its side) or closes it (hard true).
func (c *conn) closeAfterFlush(hard bool, cause error) {
	c.wmu.Lock()
	if !c.wClosing {
		c.wClosing, c.wHard, c.wCause = true, hard, cause
	}
	c.commit()
}

// shutdown closes the connection at once; err says why. Only the first call
// has an effect. Blocked readers, writers and waiters return.
func (c *conn) shutdown(err error) {
	c.once.Do(func() {
		c.err = err
		close(c.done)
		c.nc.Close()
		c.wmu.Lock()
		c.dead = true
		if c.wFull != nil {
			close(c.wFull)
			c.wFull = nil
		}
		c.wmu.Unlock()
	})
}

// writeLoop is the connection's writer goroutine. It also runs keepalive,
// so that an idle connection costs no goroutine beyond its reader and
// writer.
func (c *conn) writeLoop() {
	// Keepalive checks every slow period; while streams are open (or a
	// PING waits for its answer) they check every fast one, so that a
	// frozen peer is noticed within about stall.
	var tick <-chan time.Time
	var timer *time.Timer
	ka := keepalive{lastActive: time.Now()}
	var slow, fast time.Duration
	if c.kaInterval > 0 && c.kaTimeout > 0 {
		slow = max(min(c.kaInterval, c.kaTimeout)/4, time.Millisecond)
		if c.lim.idle > 0 {
			slow = max(min(slow, c.lim.idle/4), time.Millisecond)
		}
		fast = slow
		if c.lim.stall > 0 {
			fast = max(min(slow, c.lim.stall/8), time.Millisecond)
		}
		timer = time.NewTimer(fast)
		defer timer.Stop()
		tick = timer.C
		ka.period = fast
	}
	check := func() bool {
		alive, soon := c.keepalive(&ka)
		if !alive {
			return false
		}
		if c.lim.onTick != nil {
			c.lim.onTick()
		}
		if soon || fast == slow {
			c.slowTick.Store(false)
			ka.period = fast
		} else {
			c.slowTick.Store(true)
			ka.period = slow
		}
		timer.Reset(ka.period)
		return true
	}
	var linger *time.Timer
	wrote := false // the last thing the writer did was a write of its own
	for {
		c.wmu.Lock()
		for c.w.Len() == 0 || c.wBusy {
			wrote = false
			if (c.wClosing || c.dead) && !c.wBusy {
				hard, cause := c.wHard || c.dead, c.wCause
				c.wmu.Unlock()
				if hard {
					c.shutdown(cause)
					return
				}
				c.halfClose()
				t := time.NewTimer(lingerTimeout)
				defer t.Stop()
				select {
				case <-c.done:
				case <-t.C:
					c.shutdown(fmt.Errorf("%w: %s did not close its side within %v of ours", ErrConnLost, c.nc.RemoteAddr(), lingerTimeout))
				}
				return
			}
			c.wIdle = true
			c.wmu.Unlock()
			select {
			case <-c.wake:
			case <-tick:
				if !check() {
					return
				}
			case <-c.poke:
				if timer != nil {
					timer.Reset(fast)
				}
			case <-c.done:
				return
			}
			c.wmu.Lock()
		}
		if wrote && !c.wUrgent && c.w.Len() < minWrite && !c.wClosing && !c.dead {
			// DATA that came while the writer wrote: a stream may be in
			// a burst. Writing it now would make a small write, and the
			// next write smaller still; wait for minWrite of it.
			c.wIdle, c.wLinger = false, true
			c.wmu.Unlock()
			if linger == nil {
				linger = time.NewTimer(c.linger)
				defer linger.Stop()
			} else {
				linger.Reset(c.linger)
			}
			select {
			case <-c.wake:
			case <-linger.C:
			case <-tick:
				if !check() {
					return
				}
			case <-c.done:
				return
			}
			c.wmu.Lock()
			c.wLinger = false
			c.wmu.Unlock()
			wrote = false
			continue
		}
		c.wIdle = false
		c.wBusy = true
		c.wUrgent = false
		closing := c.wClosing
		buf := c.w.Swap(c.spare)
		c.spare, c.pongs = nil, 0
		if c.wFull != nil {
			close(c.wFull)
			c.wFull = nil
		}
		c.wmu.Unlock()
		err := c.flush(buf, closing)
		if cap(buf) > 4*softPending {
			buf = nil // a burst grew the batch: let it go
		}
		c.wmu.Lock()
		c.spare = buf[:0]
		c.wBusy = false
		c.wmu.Unlock()
		wrote = true
		if err != nil {
			c.shutdown(fmt.Errorf("%w: writing to %s: %w", ErrConnLost, c.nc.RemoteAddr(), err))
			return
		}
		select {
		case <-tick:
			if !check() {
				return
			}
		default:
		}
	}
}

// flush writes b; one goroutine at a time (wBusy) calls it.
func (c *conn) flush(b []byte, closing bool) error {
	switch {
	case closing:
		c.nc.SetWriteDeadline(time.Now().Add(finalFlushTimeout))
		c.wDeadline = 0
	case c.kaTimeout > 0:
		// A peer that stops reading blocks the write: treat it as dead
		// after the keepalive timeout, at most half as long again.
		// Moving the deadline is a runtime timer update: it is moved
		// once per half timeout, not once per write; and the write
		// reads only the monotonic clock.
		if now := monotonic(); time.Duration(c.wDeadline-now) < c.kaTimeout {
			d := c.kaTimeout + c.kaTimeout/2
			c.wDeadline = now + int64(d)
			c.nc.SetWriteDeadline(time.Now().Add(d))
		}
	}
	n, err := c.nc.Write(b)
	if c.lim.stall > 0 {
		c.written.Add(uint64(n))
	}
	return err
}

// Time a server is allowed, on top of lim.stall, to answer a PING that
// went out behind requests it had not yet read: per OPEN, and per MiB.
const (
	stallPerOpen = time.Millisecond
	stallPerMiB  = time.Second
)

// halfClose ends our side of the connection (TCP FIN, or TLS
// close_notify) so the peer reads EOF after our last frame, while we keep
// reading what it still sends; closing outright could reset the
// connection and destroy frames the peer has not read yet.
func (c *conn) halfClose() {
	cw, ok := c.nc.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		c.shutdown(errClosedLocally)
	}
}

// keepalive is the writer goroutine's liveness state.
type keepalive struct {
	lastReads  uint64
	lastActive time.Time // when reads last changed
	lastBusy   time.Time // when streams were last seen open
	pingSent   time.Time // zero unless a PING is outstanding
	stalled    bool      // onStall was called for this silence

	// OPENs and bytes sent when reads last changed: what the peer may
	// still have to read before it gets to a PING.
	openedAtRead  uint32
	writtenAtRead uint64

	lastCheck time.Time     // when keepalive last ran
	period    time.Duration // and when it was due to run next, after it
	lateUntil time.Time     // no stall is judged before it: keepalive ran late

	lastOpen  uint32    // the last stream id activity reported
	idleSince time.Time // when the connection was last seen with a stream, or a new one
	idled     bool      // onIdle was called
}

// keepalive sends a PING after kaInterval of silence from the peer and
// closes the connection when kaTimeout more passes without a byte. It
// returns false if it closed the connection, and soon when the next
// check should come at the fast period.
//
// With streams open, silence is suspicious sooner: a PING after
// lim.stall/4, and a peer that sends nothing at all within lim.stall of
// it is reported stalled (frozen, not known dead), so that the streams
// waiting for their first response go elsewhere while keepalive decides
// the fate of the others. Any byte, a PONG or a frame of any stream, ends
// the suspicion: a live server answers a PING however busy its handlers.
// On Linux a byte that arrived and waits unread counts too.
func (c *conn) keepalive(ka *keepalive) (alive, soon bool) {
	now := time.Now()
	if c.lim.idle > 0 && !c.idleCheck(ka, now) {
		return false, false
	}
	// A check that runs late says this process was not running, not that
	// the peer went silent: its bytes may wait unread in our buffers. No
	// stall is judged until the stall timeout has passed on time.
	if c.lim.stall > 0 && !ka.lastCheck.IsZero() && now.Sub(ka.lastCheck) > ka.period+c.lim.stall/2 {
		ka.lateUntil = now.Add(c.lim.stall)
	}
	ka.lastCheck = now
	busy := c.lim.stall > 0 && c.lim.busy != nil && c.lim.busy()
	if busy {
		ka.lastBusy = now
	}
	// Fast checks go on for a while after the last stream, so that a
	// steady caller's next stream finds them running without a poke.
	soon = c.lim.stall > 0 && now.Sub(ka.lastBusy) < c.kaInterval
	n := c.reads.Load()
	heard := n != ka.lastReads
	if !heard && !ka.pingSent.IsZero() && peerBytesWaiting(c.nc) {
		// The peer's bytes wait in the kernel, unread: our reader has not
		// run (this process is short of CPU), the peer is alive. Judged
		// frozen, its waiting calls would go elsewhere and new ones avoid
		// it for nothing, or keepalive would close the connection.
		heard = true
	}
	if heard {
		ka.lastReads, ka.lastActive, ka.pingSent = n, now, time.Time{}
		if c.lim.stall > 0 {
			ka.writtenAtRead = c.written.Load()
			if c.lim.opened != nil {
				ka.openedAtRead = c.lim.opened()
			}
		}
		if ka.stalled {
			ka.stalled = false
			c.log.Info("mux: peer answers again", "remote", c.nc.RemoteAddr().String())
			if c.lim.onAlive != nil {
				c.lim.onAlive()
			}
		}
		return true, soon
	}
	if !ka.pingSent.IsZero() {
		if busy && !ka.stalled && now.After(ka.lateUntil) && now.Sub(ka.pingSent) >= c.stallAllowance(ka) {
			ka.stalled = true
			if c.lim.onStall != nil {
				c.lim.onStall()
			}
		}
		if now.Sub(ka.pingSent) < c.kaTimeout {
			return true, soon || (c.lim.stall > 0 && !ka.stalled)
		}
		c.shutdown(fmt.Errorf("%w: %s did not answer a keepalive PING within %v", ErrConnLost, c.nc.RemoteAddr(), c.kaTimeout))
		return false, false
	}
	if silent := now.Sub(ka.lastActive); silent >= c.kaInterval || (busy && silent >= c.lim.stall/4) {
		var data [8]byte
		binary.BigEndian.PutUint64(data[:], uint64(now.UnixNano()))
		c.wmu.Lock()
		if !c.dead && !c.wClosing {
			c.w.Ping(data)
		}
		c.wmu.Unlock()
		ka.pingSent = now
	}
	return true, soon
}

// stallAllowance is how long a PING may go unanswered before the peer is
// deemed stalled: lim.stall, plus time for the requests sent since the
// peer last sent anything, which it reads before the PING. A live
// server flooded with OPENs is slow to answer, not frozen.
func (c *conn) stallAllowance(ka *keepalive) time.Duration {
	d := c.lim.stall
	if c.lim.opened != nil {
		d += time.Duration(c.lim.opened()-ka.openedAtRead) * stallPerOpen
	}
	return d + time.Duration((c.written.Load()-ka.writtenAtRead)>>20)*stallPerMiB
}

// idleCheck runs onIdle once the connection has held no stream for
// lim.idle, and drops a peer that neither closes nor uses it after that.
// It returns false if it closed the connection.
func (c *conn) idleCheck(ka *keepalive, now time.Time) bool {
	if ka.idleSince.IsZero() {
		ka.idleSince = now
	}
	id, open := c.lim.activity()
	switch {
	case open || id != ka.lastOpen:
		ka.lastOpen, ka.idleSince = id, now
	case !ka.idled && now.Sub(ka.idleSince) >= c.lim.idle:
		ka.idled, ka.idleSince = true, now
		c.lim.onIdle()
	case ka.idled && now.Sub(ka.idleSince) >= min(c.lim.idle, lingerTimeout):
		err := fmt.Errorf("%w: %s kept an idle connection open %v after GOAWAY", ErrConnLost, c.nc.RemoteAddr(), now.Sub(ka.idleSince).Round(time.Millisecond))
		c.log.Warn("mux: peer ignored GOAWAY on its idle connection; closing it", "limit", "idle_timeout", "remote", c.nc.RemoteAddr().String(), "err", err)
		c.shutdown(err)
		return false
	}
	return true
}

// writePong answers a PING; called by the reader, it never waits.
// A peer that sends PINGs without reading the PONGs is dropped once
// lim.maxPongs of them wait unwritten, instead of growing the batch.
func (c *conn) writePong(data []byte) {
	if c.begin(context.Background(), false) != nil {
		return
	}
	if c.lim.maxPongs > 0 && c.pongs >= c.lim.maxPongs {
		n := c.pongs
		c.wmu.Unlock()
		err := fmt.Errorf("%w: %s sent %d PINGs without reading the PONGs", ErrConnLost, c.nc.RemoteAddr(), n)
		c.tripped("max_queued_pongs", err)
		c.shutdown(err)
		return
	}
	c.w.Pong([8]byte(data))
	c.pongs++
	c.commit()
}

// fail sends GOAWAY with code and msg, then closes the connection once it
// is written. The reader calls it for protocol errors.
func (c *conn) fail(last uint32, code wire.Code, err error) {
	c.log.Debug("mux: closing connection", "remote", c.nc.RemoteAddr().String(), "code", code, "err", err)
	if c.begin(context.Background(), false) == nil {
		c.w.GoAway(last, code, err.Error())
		c.wClosing, c.wHard, c.wCause = true, true, err
		c.commit()
	}
	// The writer closes the socket after the GOAWAY; the reader's caller
	// records why.
	select {
	case <-c.done:
	case <-time.After(finalFlushTimeout):
		c.shutdown(err)
	}
}

var errClosedLocally = errors.New("mux: connection closed")
