package jsconsume

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DefaultPullExpiry is how long each pull request waits on the server. It
// also sets the heartbeat (half of it), so a consumer whose server died
// notices within about this long and pulls from another.
const DefaultPullExpiry = 5 * time.Second

// Config configures a Runner.
type Config struct {
	// Settler settles every message; required.
	Settler *Settler
	// Consumer is the durable consumer to pull from; required.
	Consumer jetstream.Consumer
	// Recreate, if set, makes the consumer again when the server says it
	// was deleted; the Runner then carries on with the new one.
	Recreate func(ctx context.Context) (jetstream.Consumer, error)
	// Concurrency is how many handlers run at once; 0 means 1.
	Concurrency int
	// Prefetch is how many messages are pulled ahead of the handlers;
	// 0 means twice Concurrency. Prefetched messages age towards AckWait.
	Prefetch int
	// PullExpiry: see DefaultPullExpiry; 0 means that.
	PullExpiry time.Duration
	// LaneKey, if set, returns a message's lane key from its headers
	// (a sharding key): messages with equal non-empty keys are handled
	// one at a time, in order of delivery.
	LaneKey func(nats.Header) string
	// Handler handles a delivery; see Settler.Handle for what its error
	// does.
	Handler func(ctx context.Context, d *Delivery) error
}

// Runner pulls from a consumer and runs handlers until Shutdown.
type Runner struct {
	cfg      Config
	cons     jetstream.Consumer // the one pulled from: cfg.Consumer, or the one Recreate made
	s        *Settler
	stopPull context.CancelFunc // stops pulling
	pullCtx  context.Context
	kill     context.CancelFunc // cancels handler contexts
	baseCtx  context.Context
	work     chan jetstream.Msg
	lanes    []chan jetstream.Msg
	seed     maphash.Seed
	watch    *watchdog

	pullDone    chan struct{}
	workersDone chan struct{}
	done        chan struct{}

	mu  sync.Mutex
	err error
}

// Start starts pulling and handling. The Runner owns its goroutines: one
// that pulls, one per unit of Concurrency and a watchdog that reports
// progress on long jobs; Shutdown ends them.
func Start(cfg Config) (*Runner, error) {
	if cfg.Settler == nil || cfg.Consumer == nil || cfg.Handler == nil {
		return nil, errors.New("jsconsume: Settler, Consumer and Handler are required")
	}
	cfg.Concurrency = max(cfg.Concurrency, 1)
	if cfg.Prefetch <= 0 {
		cfg.Prefetch = 2 * cfg.Concurrency
	}
	if cfg.PullExpiry <= 0 {
		cfg.PullExpiry = DefaultPullExpiry
	}
	it, err := messages(cfg.Consumer, cfg)
	if err != nil {
		return nil, fmt.Errorf("queue %s: start consuming: %w", cfg.Settler.Queue, err)
	}
	r := &Runner{
		cfg:         cfg,
		cons:        cfg.Consumer,
		s:           cfg.Settler,
		work:        make(chan jetstream.Msg),
		seed:        maphash.MakeSeed(),
		pullDone:    make(chan struct{}),
		workersDone: make(chan struct{}),
		done:        make(chan struct{}),
	}
	r.pullCtx, r.stopPull = context.WithCancel(context.Background())
	r.baseCtx, r.kill = context.WithCancel(context.Background())
	if cfg.LaneKey != nil {
		r.lanes = make([]chan jetstream.Msg, cfg.Concurrency)
		for i := range r.lanes {
			r.lanes[i] = make(chan jetstream.Msg)
		}
	}
	r.watch = newWatchdog(cfg.Settler.Policy, cfg.Concurrency)
	var wg sync.WaitGroup
	for i := range cfg.Concurrency {
		var lane chan jetstream.Msg
		if r.lanes != nil {
			lane = r.lanes[i]
		}
		sl := r.watch.slots[i]
		wg.Go(func() { r.worker(lane, sl) })
	}
	go func() {
		defer close(r.pullDone)
		r.pull(it)
	}()
	go func() {
		wg.Wait()
		close(r.workersDone)
	}()
	go func() {
		<-r.pullDone
		<-r.workersDone
		r.watch.close()
		r.kill()
		r.stopPull()
		close(r.done)
	}()
	return r, nil
}

func messages(c jetstream.Consumer, cfg Config) (jetstream.MessagesContext, error) {
	return c.Messages(
		jetstream.PullMaxMessages(cfg.Prefetch),
		jetstream.PullExpiry(cfg.PullExpiry),
	)
}

// pull feeds the workers until Shutdown or a fatal error, then hands back
// what was prefetched and closes the work channels.
func (r *Runner) pull(it jetstream.MessagesContext) {
	defer func() {
		close(r.work)
		for _, l := range r.lanes {
			close(l)
		}
	}()
	for {
		msg, err := it.Next(jetstream.NextContext(r.pullCtx))
		if err == nil {
			if r.heldHere(msg) {
				continue
			}
			if !r.dispatch(msg) {
				r.drain(it, msg)
				return
			}
			continue
		}
		if r.pullCtx.Err() != nil {
			r.drain(it)
			return
		}
		switch {
		case errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, jetstream.ErrMsgIteratorClosed):
			r.setErr(fmt.Errorf("queue %s: consuming stopped: %w", r.s.Queue, err))
			it.Stop()
			return
		case errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) ||
			errors.Is(err, jetstream.ErrBadRequest) || errors.Is(err, jetstream.ErrNoHeartbeat) && r.consumerGone():
			it.Stop()
			next, ok := r.recreate(err)
			if !ok {
				return
			}
			it = next
		default:
			r.s.Log.Debug("queue: pull interrupted; pulling again", "queue", r.s.Queue, "err", err)
			select {
			case <-time.After(50 * time.Millisecond):
			case <-r.pullCtx.Done():
			}
		}
	}
}

// consumerGone asks the server whether it still has the consumer, when
// pulls went without a heartbeat. A server that restarted without it
// (memory storage), or from which an operator removed it with its stream,
// answers a pull with nothing at all, not with "consumer not found":
// without asking, the Runner would wait for heartbeats forever instead
// of making the consumer again.
func (r *Runner) consumerGone() bool {
	ctx, cancel := context.WithTimeout(r.pullCtx, 2*time.Second)
	defer cancel()
	_, err := r.cons.Info(ctx)
	return errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound)
}

// recreate makes the consumer again after the server lost it, retrying
// with backoff until it works or Shutdown.
func (r *Runner) recreate(cause error) (jetstream.MessagesContext, bool) {
	if r.cfg.Recreate == nil {
		r.setErr(fmt.Errorf("queue %s: the consumer went away: %w", r.s.Queue, cause))
		return nil, false
	}
	r.s.Log.Warn("queue: the consumer went away; creating it again", "queue", r.s.Queue, "err", cause)
	delay := 100 * time.Millisecond
	for {
		c, err := r.cfg.Recreate(r.pullCtx)
		if err == nil {
			var it jetstream.MessagesContext
			if it, err = messages(c, r.cfg); err == nil {
				r.cons = c
				return it, true
			}
		}
		r.s.Log.Warn("queue: creating the consumer again failed; retrying", "queue", r.s.Queue, "err", err, "retry_in", delay)
		select {
		case <-time.After(delay):
		case <-r.pullCtx.Done():
			return nil, false
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// heldHere deals with the redelivery of a message that one of this
// Runner's handlers is still running on, and reports whether msg was one.
// That happens when a handler ignores its context: past handler_timeout
// its context is cancelled and progress reports stop, so the server
// redelivers after AckWait, possibly to this Runner. It must not cost a
// second worker here: see Settler.heldRedelivery.
func (r *Runner) heldHere(msg jetstream.Msg) bool {
	meta, err := msg.Metadata()
	if err != nil || meta.NumDelivered < 2 {
		return false // a first delivery cannot be held
	}
	for _, sl := range r.watch.slots {
		if since, ok := sl.holding(meta.Sequence.Stream); ok {
			r.s.heldRedelivery(msg, meta, time.Since(since))
			return true
		}
	}
	return false
}

// dispatch hands msg to a worker; false if Shutdown came first. The check
// before the select matters: Next may return a message after Shutdown
// (its select picks at random among ready cases), and that message may be
// one a cancelled handler has just handed back, which must not start a
// second handler now.
func (r *Runner) dispatch(msg jetstream.Msg) bool {
	if r.pullCtx.Err() != nil {
		return false
	}
	ch := r.work
	if r.lanes != nil {
		if key := r.cfg.LaneKey(msg.Headers()); key != "" {
			ch = r.lanes[maphash.String(r.seed, key)%uint64(len(r.lanes))]
		}
	}
	select {
	case ch <- msg:
		return true
	case <-r.pullCtx.Done():
		return false
	}
}

// drain stops pulling and naks what was prefetched (and held, taken but
// not handed to a worker), so that other consumers get it at once rather
// than after AckWait.
//
// It reads until the iterator reports itself closed, not until it has
// been idle for a while. Drain unsubscribes the pull's inbox and flushes;
// the iterator closes once the server has answered the flush, and so
// after every message the server delivered to it before the unsubscribe.
// The server counts a message delivered before the message leaves, and a
// connection may stall (a slow network, a busy server or client): a
// delivery that arrived after the reading stopped would be answered by
// nobody and come back only after AckWait. On a healthy connection this
// takes one round trip. It ends sooner if the connection is lost (nothing
// more can arrive on it), and at the latest ShutdownGrace after the
// handlers' contexts are cancelled: at once for Close, when Shutdown's
// context ends otherwise.
//
// The naks go only once the iterator has stopped: a nakked message is
// redelivered at once, and a pull request of this iterator still open
// would take it back, to be dropped here.
func (r *Runner) drain(it jetstream.MessagesContext, held ...jetstream.Msg) {
	it.Drain()
	bound, cancel := context.WithCancel(context.Background())
	defer cancel()
	var lost chan nats.Status
	if r.s.JS != nil {
		nc := r.s.JS.Conn()
		lost = nc.StatusChanged(nats.DISCONNECTED, nats.RECONNECTING, nats.CLOSED)
		defer nc.RemoveStatusListener(lost)
		if !nc.IsConnected() {
			cancel()
		}
	}
	go func() {
		base := r.baseCtx.Done()
		var grace <-chan time.Time
		for {
			select {
			case <-bound.Done():
				return
			case <-lost:
				cancel()
				return
			case <-base:
				t := time.NewTimer(ShutdownGrace)
				defer t.Stop()
				base, grace = nil, t.C
			case <-grace:
				cancel()
				return
			}
		}
	}()
	closed := false
	for !closed {
		msg, err := it.Next(jetstream.NextContext(bound))
		switch {
		case err == nil:
			held = append(held, msg)
		case errors.Is(err, jetstream.ErrMsgIteratorClosed):
			closed = true
		case bound.Err() != nil:
			// Take what the iterator holds already (Next picks at random
			// between a message and the ended context), then stop.
			for {
				msg, err := it.Next(jetstream.NextMaxWait(time.Millisecond))
				if err != nil {
					break
				}
				held = append(held, msg)
			}
			closed = true
		default:
			// A missed heartbeat or a status message: deliveries may
			// still come until the iterator closes.
		}
	}
	it.Stop()
	for _, msg := range held {
		_ = msg.Nak()
	}
}

func (r *Runner) worker(lane chan jetstream.Msg, sl *slot) {
	work := r.work
	for work != nil || lane != nil {
		var msg jetstream.Msg
		var ok bool
		select {
		case msg, ok = <-work:
			if !ok {
				work = nil
				continue
			}
		case msg, ok = <-lane:
			if !ok {
				lane = nil
				continue
			}
		}
		if r.baseCtx.Err() != nil {
			// Close came while msg was on its way here: hand it back
			// rather than start a handler already cancelled.
			_ = msg.Nak()
			continue
		}
		if d := r.s.Receive(r.baseCtx, msg); d != nil {
			r.s.handle(r.baseCtx, d, r.cfg.Handler, sl)
		}
	}
}

func (r *Runner) setErr(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err == nil {
		r.err = err
		r.s.Log.Error("queue: consumer stopped", "queue", r.s.Queue, "err", err)
	}
}

// Done is closed when the Runner has stopped: after Shutdown, or after a
// fatal error (the connection closed, the consumer gone for good).
func (r *Runner) Done() <-chan struct{} { return r.done }

// Err returns the fatal error that stopped the Runner, or nil.
func (r *Runner) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// DefaultMaxAckPending bounds the messages delivered and not yet settled
// across every consumer of a durable: work queues' and EventBus groups'.
const DefaultMaxAckPending = 20000

// ShutdownGrace is how long Shutdown waits, once its context has ended and
// the handlers' contexts are cancelled, for the handlers to return before
// it abandons those still running.
const ShutdownGrace = 2 * time.Second

// AbandonedError is what Shutdown returns when handlers were still running
// ShutdownGrace after their contexts were cancelled: they ignore their
// context. Their goroutines are left to finish (the Runner's Done closes
// when they do); their messages are no longer reported in progress, so the
// server redelivers them after AckWait.
type AbandonedError struct {
	// Queue names the stream.
	Queue string
	// Seqs are the stream sequences of the messages the abandoned handlers
	// hold.
	Seqs []uint64
	// Err is the error of Shutdown's context.
	Err error
}

// Error says how many handlers were abandoned, on which messages.
func (e *AbandonedError) Error() string {
	return fmt.Sprintf("queue %s: %d handlers still running %s after their context was cancelled were abandoned (messages %v; they are redelivered after ack_wait; a handler must return when its context ends): %v",
		e.Queue, len(e.Seqs), ShutdownGrace, e.Seqs, e.Err)
}

// Unwrap returns the context's error.
func (e *AbandonedError) Unwrap() error { return e.Err }

// Shutdown stops pulling, hands back messages pulled but not started (a nak,
// so other consumers get them at once; those still on their way included,
// see drain), and waits for the handlers that are running to finish and
// settle. If ctx ends first, it cancels the
// handlers' contexts (their messages are handed back) and waits up to
// ShutdownGrace for them to return: then it returns ctx's error, or an
// *AbandonedError (wrapping it) naming the handlers still running, which
// it leaves behind.
func (r *Runner) Shutdown(ctx context.Context) error {
	return r.shutdown(ctx)
}

// Close stops the Runner now: Shutdown with its context already ended,
// so running handlers are cancelled at once and waited for at most
// ShutdownGrace. It returns nil, or an *AbandonedError naming the
// handlers that ignored their cancelled context.
func (r *Runner) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := r.shutdown(ctx)
	if err == context.Canceled { // what ctx says, nothing abandoned
		return nil
	}
	return err
}

func (r *Runner) shutdown(ctx context.Context) error {
	r.stopPull()
	select {
	case <-r.done:
		return nil
	case <-ctx.Done():
	}
	r.kill()
	grace := time.NewTimer(ShutdownGrace)
	defer grace.Stop()
	select {
	case <-r.done:
		return ctx.Err()
	case <-grace.C:
	}
	var seqs []uint64
	for _, sl := range r.watch.slots {
		if seq, ok := sl.busy(); ok {
			seqs = append(seqs, seq)
		}
	}
	if len(seqs) == 0 {
		// No handler left: only the pull loop handing back prefetched
		// messages, which is bounded.
		<-r.done
		return ctx.Err()
	}
	r.watch.abandon()
	r.s.Log.Error("queue: handlers ignored their cancelled context; abandoned", "queue", r.s.Queue, "messages", seqs)
	return &AbandonedError{Queue: r.s.Queue, Seqs: seqs, Err: ctx.Err()}
}
