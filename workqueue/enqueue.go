package workqueue

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/loomrt/loom/internal/natsrefusal"
	"github.com/loomrt/loom/metrics"
	"github.com/loomrt/loom/natsconn"
	"github.com/loomrt/loom/objectstore"
)

// EnqueueOption tunes one enqueue.
type EnqueueOption func(*enqueueOpts)

type enqueueOpts struct {
	key    string
	header nats.Header
}

// WithKey sets the job's idempotency key. The message id (Nats-Msg-Id)
// is made of the key and a digest of the encoded job, so enqueueing the
// same job with the same key twice within the duplicate window stores it
// once, while distinct jobs are never dropped as duplicates, even under
// one key (unlike Coze Studio's EventBus, whose sharding key made every
// message of a batch one id). The key travels in the KeyHeader header.
func WithKey(key string) EnqueueOption { return func(o *enqueueOpts) { o.key = key } }

// WithHeader adds h's headers to the job's message.
func WithHeader(h nats.Header) EnqueueOption {
	return func(o *enqueueOpts) {
		if o.header == nil {
			o.header = nats.Header{}
		}
		for k, v := range h {
			o.header[k] = append(o.header[k], v...)
		}
	}
}

// message builds the message of a job: encoded, with its id, offloaded to
// the object store if it is above max_payload. copyData copies a []byte
// job that the caller may reuse before the message is sent.
func (q *Queue[T]) message(ctx context.Context, job T, opts []EnqueueOption, copyData bool) (*nats.Msg, *objectstore.Ref, error) {
	var o enqueueOpts
	for _, opt := range opts {
		opt(&o)
	}
	data, err := q.encode(job)
	if err != nil {
		return nil, nil, err
	}
	if copyData && q.raw {
		data = slices.Clone(data)
	}
	m := &nats.Msg{Subject: q.cfg.Subject, Data: data, Header: o.header}
	var id string
	switch {
	case o.key != "":
		id = keyID(o.key, data)
		if m.Header == nil {
			m.Header = nats.Header{}
		}
		m.Header.Set(KeyHeader, o.key)
	case q.cfg.AutoID:
		id = nuid.Next()
	}
	ref, err := q.payloads.Prepare(ctx, m, q.cfg.Name, "job for queue "+q.cfg.Name)
	if err != nil {
		return nil, nil, fmt.Errorf("workqueue: %w", err)
	}
	if id != "" {
		if m.Header == nil {
			m.Header = nats.Header{}
		}
		m.Header.Set(nats.MsgIdHdr, id)
	}
	return m, ref, nil
}

// keyID is the message id of a job enqueued with an idempotency key: the
// key and the job's digest, so distinct jobs never share an id.
func keyID(key string, data []byte) string {
	h := sha256.New()
	h.Write([]byte(key))
	h.Write([]byte{0})
	h.Write(data)
	return "k." + hex.EncodeToString(h.Sum(nil)[:20])
}

// Enqueue stores job in the queue and returns once the server has it. It
// retries through a server restart or a leader election until ctx ends,
// or for queue.enqueue_timeout if ctx has no deadline; then it returns an
// error naming the queue and the server. A retried job is stored once if
// it has a message id (WithKey, or Config.AutoID), and may be stored twice
// otherwise, if only its acknowledgement was lost. A job above the server's max_payload is
// offloaded or refused according to queue.large_payloads.
func (q *Queue[T]) Enqueue(ctx context.Context, job T, opts ...EnqueueOption) error {
	ctx, cancel := q.pub.bound(ctx)
	defer cancel()
	m, ref, err := q.message(ctx, job, opts, false)
	if err != nil {
		return err
	}
	// An offloaded payload stays even if this fails: the job may have been
	// stored all the same (a lost acknowledgement). The bucket's TTL
	// (queue.dead_letter_max_age) removes it otherwise.
	_ = ref
	end := q.startEnqueue(ctx, m)
	err = q.pub.publishSync(ctx, m)
	end(err)
	return err
}

// dropObject deletes the offloaded payload of a job that was never sent.
func (q *Queue[T]) dropObject(ref *objectstore.Ref) {
	if ref == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = q.payloads.Delete(ctx, *ref)
}

// EnqueueAsync sends job and returns without waiting for the server's
// acknowledgement; the returned Pending reports it. At most
// queue.max_pending jobs await acknowledgement at once: beyond that
// EnqueueAsync waits for room until ctx ends, then returns ctx's error (it
// never drops a job silently). A job whose send fails for a transient
// reason (a reconnect, a timeout) is sent again until ctx's deadline, or
// queue.enqueue_timeout (see Enqueue on duplicates); a job that finally
// fails is reported by its Pending and by the next Flush.
func (q *Queue[T]) EnqueueAsync(ctx context.Context, job T, opts ...EnqueueOption) (*Pending, error) {
	m, ref, err := q.message(ctx, job, opts, true)
	if err != nil {
		return nil, err
	}
	end := q.startEnqueue(ctx, m)
	p, err := q.pub.publishAsync(ctx, m, ref)
	end(err) // the span covers the hand-off; Pending reports the storing
	if err != nil {
		q.dropObject(ref)
		return nil, err
	}
	return p, nil
}

// EnqueueBatch enqueues jobs, sending them all before waiting for the
// acknowledgements, and returns once every job is stored or has finally
// failed (each retried as EnqueueAsync does, until ctx's deadline or
// queue.enqueue_timeout). If any failed, the error is a *BatchError
// naming each failed job by its index in jobs.
func (q *Queue[T]) EnqueueBatch(ctx context.Context, jobs []T, opts ...EnqueueOption) error {
	ctx, cancel := q.pub.bound(ctx)
	defer cancel()
	pending := make([]*Pending, len(jobs))
	failed := map[int]error{}
	for i, job := range jobs {
		m, ref, err := q.message(ctx, job, opts, true)
		if err == nil {
			end := q.startEnqueue(ctx, m)
			pending[i], err = q.pub.publishAsyncOwned(ctx, m, ref)
			end(err)
			if err != nil {
				q.dropObject(ref)
			}
		}
		if err != nil {
			failed[i] = err
			if ctx.Err() != nil {
				for j := i + 1; j < len(jobs); j++ {
					failed[j] = ctx.Err()
				}
				break
			}
		}
	}
	for i, p := range pending {
		if p == nil {
			continue
		}
		if err := p.Wait(context.Background()); err != nil {
			failed[i] = err
		}
	}
	if len(failed) > 0 {
		return &BatchError{Queue: q.cfg.Name, Total: len(jobs), Failed: failed}
	}
	return nil
}

// Flush waits until every asynchronous enqueue made so far is
// acknowledged or has finally failed, or until ctx ends. It returns the
// errors of the asynchronous enqueues that failed since the last Flush
// (joined; at most the first 100 are kept, with a count of the rest), or
// ctx's error.
func (q *Queue[T]) Flush(ctx context.Context) error {
	return q.pub.flush(ctx)
}

// BatchError reports the jobs of an EnqueueBatch that were not stored.
type BatchError struct {
	Queue string
	// Total is the number of jobs in the batch.
	Total int
	// Failed maps the index of each job not stored to its error.
	Failed map[int]error
}

// Error lists the first failed jobs and their errors.
func (e *BatchError) Error() string {
	idx := make([]int, 0, len(e.Failed))
	for i := range e.Failed {
		idx = append(idx, i)
	}
	slices.Sort(idx)
	var b strings.Builder
	fmt.Fprintf(&b, "workqueue: %d of %d jobs for queue %s were not stored", len(e.Failed), e.Total, e.Queue)
	for n, i := range idx {
		if n == 3 {
			fmt.Fprintf(&b, "; and %d more", len(idx)-n)
			break
		}
		fmt.Fprintf(&b, "; job %d: %v", i, e.Failed[i])
	}
	return b.String()
}

// Unwrap returns the errors of the failed jobs.
func (e *BatchError) Unwrap() []error {
	out := make([]error, 0, len(e.Failed))
	for _, err := range e.Failed {
		out = append(out, err)
	}
	return out
}

// Pending is an asynchronous enqueue awaiting the server's acknowledgement.
type Pending struct {
	msg      *nats.Msg
	ref      *objectstore.Ref
	deadline time.Time
	attempts int
	retryAt  time.Time
	owned    bool  // its error goes to its owner (EnqueueBatch), not to Flush
	before   error // the connection's last error when it was last sent

	mu   sync.Mutex
	fin  bool
	done chan struct{} // made when first asked for
	seq  uint64
	err  error
}

// finish records the outcome of the job.
func (p *Pending) finish(err error, seq uint64) {
	p.mu.Lock()
	p.fin, p.err, p.seq = true, err, seq
	if p.done != nil {
		close(p.done)
	}
	p.mu.Unlock()
}

// Done is closed when the job is stored or has finally failed.
func (p *Pending) Done() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done == nil {
		p.done = make(chan struct{})
		if p.fin {
			close(p.done)
		}
	}
	return p.done
}

// Err returns the job's final error once Done is closed (nil if stored),
// and nil before.
func (p *Pending) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// Seq returns the job's sequence number in the stream once it is stored,
// 0 before or if it failed.
func (p *Pending) Seq() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seq
}

// Wait waits until the job is stored or has finally failed, and returns its
// error, or ctx's if ctx ends first.
func (p *Pending) Wait(ctx context.Context) error {
	select {
	case <-p.Done():
		return p.Err()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// maxFlushErrors bounds the errors Flush keeps.
const maxFlushErrors = 100

// publisher sends a queue's jobs and tracks the asynchronous ones.
type publisher struct {
	cfg  Config
	nc   *nats.Conn
	js   jetstream.JetStream
	m    *metrics.Queue
	log  *slog.Logger
	sem  chan struct{}
	kick chan *Pending // to the retry goroutine
	// restore makes the queue's streams again; lost is set when a send
	// found no stream, for the retry goroutine to call it.
	restore func(context.Context) error
	lost    atomic.Bool
	stopCtx context.Context // ends with stop, for the retry goroutine's and Enqueue's calls
	endCtx  context.CancelFunc

	mu        sync.Mutex
	pending   map[*nats.Msg]*Pending
	idle      chan struct{} // closed when pending becomes empty
	errs      []error
	dropped   int // errors beyond maxFlushErrors
	closed    bool
	running   bool // the retry goroutine
	stop      chan struct{}
	stopped   chan struct{}
	closing   bool          // under mu: close has begun
	syncs     int           // Enqueues under way
	syncsIdle chan struct{} // closed when syncs falls to 0
	done      chan struct{} // closed once close has released everything
}

func newPublisher(nc *nats.Conn, cfg Config, m *metrics.Queue, log *slog.Logger, restore func(context.Context) error) (*publisher, error) {
	p := &publisher{
		cfg:     cfg,
		restore: restore,
		nc:      nc,
		m:       m,
		log:     log,
		sem:     make(chan struct{}, cfg.MaxPending),
		kick:    make(chan *Pending, cfg.MaxPending),
		pending: make(map[*nats.Msg]*Pending),
		stop:    make(chan struct{}),
		stopped: make(chan struct{}),
		done:    make(chan struct{}),
	}
	p.stopCtx, p.endCtx = context.WithCancel(context.Background())
	js, err := jetstream.New(nc,
		// Loom's semaphore keeps at most MaxPending outstanding; the slack
		// keeps nats.go from stalling on its own.
		jetstream.WithPublishAsyncMaxPending(cfg.MaxPending+16),
		jetstream.WithPublishAsyncTimeout(asyncAckTimeout(cfg)),
		jetstream.WithPublishAsyncAckHandler(p.acked),
		jetstream.WithPublishAsyncErrHandler(p.failed),
	)
	if err != nil {
		return nil, fmt.Errorf("workqueue: %w", err)
	}
	p.js = js
	return p, nil
}

// asyncAckTimeout is how long one asynchronous send waits for its
// acknowledgement before it is sent again.
func asyncAckTimeout(cfg Config) time.Duration {
	return min(max(cfg.EnqueueTimeout/2, 500*time.Millisecond), 10*time.Second)
}

// bound gives ctx the enqueue timeout if it has no deadline.
func (p *publisher) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, p.cfg.EnqueueTimeout)
}

// retryable reports whether a send may succeed if repeated.
func retryable(err error) bool {
	if errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, jetstream.ErrJetStreamPublisherClosed) {
		return false
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, nats.ErrTimeout),
		errors.Is(err, nats.ErrNoResponders),
		errors.Is(err, jetstream.ErrNoStreamResponse),
		errors.Is(err, nats.ErrDisconnected),
		errors.Is(err, nats.ErrReconnectBufExceeded),
		errors.Is(err, nats.ErrConnectionReconnecting),
		errors.Is(err, jetstream.ErrAsyncPublishTimeout),
		errors.Is(err, jetstream.ErrTooManyStalledMsgs):
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		// 503: JetStream is electing a leader or catching up.
		return apiErr.Code == 503
	}
	return false
}

// retryDelay is the pause before the next send of a job that failed
// attempts times.
func retryDelay(attempts int) time.Duration {
	d := 50 * time.Millisecond
	for i := 1; i < attempts && d < time.Second; i++ {
		d *= 2
	}
	return min(d, time.Second)
}

// publishSync sends m and waits for its acknowledgement, retrying
// transient failures until ctx ends.
func (p *publisher) publishSync(ctx context.Context, m *nats.Msg) (err error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return fmt.Errorf("%w: queue %s (enqueue before Shutdown or Close)", ErrClosed, p.cfg.Name)
	}
	if p.syncs == 0 {
		p.syncsIdle = make(chan struct{})
	}
	p.syncs++
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.syncs--
		if p.syncs == 0 {
			close(p.syncsIdle)
		}
		p.mu.Unlock()
	}()
	// Close, or Shutdown whose context ended, stops an Enqueue under way.
	callerCtx := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(p.stopCtx, cancel)()
	defer func() {
		if err != nil && callerCtx.Err() == nil && p.stopCtx.Err() != nil {
			err = fmt.Errorf("%w: queue %s was closed while this enqueue awaited the server (the job may have been stored all the same): %w", ErrClosed, p.cfg.Name, err)
		}
	}()
	start := time.Now()
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		before := p.nc.LastError()
		_, err := p.js.PublishMsg(actx, m)
		cancel()
		if err == nil {
			p.m.Enqueued.Inc()
			return nil
		}
		if retryable(err) {
			if rerr := p.refused(before); rerr != nil {
				return rerr
			}
		}
		if !retryable(err) || ctx.Err() != nil {
			return p.sendError(m, attempt, time.Since(start), err, ctx.Err())
		}
		if noStream(err) {
			p.restoreStreams(ctx)
		}
		select {
		case <-time.After(retryDelay(attempt)):
		case <-ctx.Done():
			return p.sendError(m, attempt, time.Since(start), err, ctx.Err())
		}
	}
}

// refused returns an error naming the subject and the permission if the
// server reported refusing a publish to the queue's subject since the
// connection's last error was before, taken as the send went out. The
// server drops such a message and says so only in an asynchronous error
// on the connection, so the send waits for an acknowledgement that never
// comes; retrying cannot help. It is asked only after a send failed, and
// counts only a refusal that came after before: the connection's last
// error stays until another replaces it, and an old refusal (of a
// permission granted since) must not be taken for the cause of a later
// failure, nor fail sends that the server acknowledges.
func (p *publisher) refused(before error) error {
	err := p.nc.LastError()
	if err == before {
		return nil
	}
	if kind, subject, ok := natsrefusal.Read(err); !ok || kind != metrics.PermissionPublish || subject != p.cfg.Subject {
		return nil
	}
	return fmt.Errorf("workqueue: enqueue to queue %s refused by the NATS server (%w): this process's NATS user needs publish permission on %s",
		p.cfg.Name, err, p.cfg.Subject)
}

// noStream reports whether a send failed because no stream took its
// subject.
func noStream(err error) bool {
	return errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders)
}

// restoreStreams makes the queue's streams again if they went away. No
// stream answers either while JetStream restarts, when this fails and the
// send is retried as usual.
func (p *publisher) restoreStreams(ctx context.Context) {
	if err := p.restore(ctx); err != nil {
		p.log.Debug("workqueue: no stream took a job; making the streams again failed", "queue", p.cfg.Name, "err", err)
	}
}

// sendError explains why a job was not stored.
func (p *publisher) sendError(m *nats.Msg, attempts int, took time.Duration, err, ctxErr error) error {
	if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) {
		err = fmt.Errorf("%w (no stream answered on %s: is JetStream up, and does stream %s exist?)", err, m.Subject, p.cfg.Name)
	}
	server := natsconn.ServerURL(p.nc)
	if server == "" {
		server = "(disconnected from " + strings.Join(p.nc.Servers(), ", ") + "; is the server up? see nats.url, NATS_SERVER)"
	}
	if ctxErr != nil && !errors.Is(err, ctxErr) {
		err = fmt.Errorf("%w (last error: %w)", ctxErr, err)
	}
	if took > 0 {
		return fmt.Errorf("workqueue: enqueue to queue %s on %s failed after %d attempts in %s: %w",
			p.cfg.Name, server, attempts, took.Round(time.Millisecond), err)
	}
	return fmt.Errorf("workqueue: enqueue to queue %s on %s failed after %d attempts: %w", p.cfg.Name, server, attempts, err)
}

// publishAsync sends m once there is room; its errors go to Flush.
func (p *publisher) publishAsync(ctx context.Context, m *nats.Msg, ref *objectstore.Ref) (*Pending, error) {
	return p.send(ctx, m, ref, false)
}

// publishAsyncOwned is publishAsync for EnqueueBatch, which reports the
// errors itself.
func (p *publisher) publishAsyncOwned(ctx context.Context, m *nats.Msg, ref *objectstore.Ref) (*Pending, error) {
	return p.send(ctx, m, ref, true)
}

func (p *publisher) send(ctx context.Context, m *nats.Msg, ref *objectstore.Ref, owned bool) (*Pending, error) {
	select {
	case p.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("workqueue: queue %s: no room for an asynchronous enqueue (%d awaiting acknowledgement, queue.max_pending): %w",
			p.cfg.Name, p.cfg.MaxPending, ctx.Err())
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(p.cfg.EnqueueTimeout)
	}
	pd := &Pending{msg: m, ref: ref, deadline: deadline, owned: owned}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		<-p.sem
		return nil, fmt.Errorf("%w: queue %s (enqueue before Shutdown or Close)", ErrClosed, p.cfg.Name)
	}
	if !p.running {
		p.running = true
		go p.retryLoop()
	}
	if len(p.pending) == 0 {
		p.idle = make(chan struct{})
	}
	p.pending[m] = pd
	p.mu.Unlock()
	pd.attempts = 1
	pd.before = p.nc.LastError()
	if _, err := p.js.PublishMsgAsync(m); err != nil {
		p.failed(p.js, m, err)
	}
	return pd, nil
}

// acked is nats.go's callback for an acknowledged send.
func (p *publisher) acked(_ jetstream.JetStream, m *nats.Msg, ack *jetstream.PubAck) {
	p.mu.Lock()
	pd, ok := p.pending[m]
	p.mu.Unlock()
	if ok {
		p.resolve(pd, nil, ack.Sequence)
	}
}

// failed is nats.go's callback for a failed send (and the path of a send
// that failed at once): retry or give up.
func (p *publisher) failed(_ jetstream.JetStream, m *nats.Msg, err error) {
	p.mu.Lock()
	pd, ok := p.pending[m]
	closed := p.closed
	p.mu.Unlock()
	if !ok {
		return
	}
	if retryable(err) {
		if rerr := p.refused(pd.before); rerr != nil {
			p.resolve(pd, rerr, 0)
			return
		}
	}
	if retryable(err) && !closed && time.Now().Before(pd.deadline) {
		if noStream(err) {
			p.lost.Store(true)
		}
		pd.retryAt = time.Now().Add(retryDelay(pd.attempts))
		pd.attempts++
		p.kick <- pd // room for every pending job: never blocks
		return
	}
	p.resolve(pd, p.sendError(m, pd.attempts, 0, err, nil), 0)
}

// retryLoop sends again the jobs whose send failed transiently.
func (p *publisher) retryLoop() {
	defer close(p.stopped)
	for {
		select {
		case pd := <-p.kick:
			if wait := time.Until(pd.retryAt); wait > 0 {
				select {
				case <-time.After(wait):
				case <-p.stop:
					p.resolve(pd, fmt.Errorf("workqueue: queue %s closed while a job awaited a retry", p.cfg.Name), 0)
					continue
				}
			}
			if p.lost.Swap(false) {
				ctx, cancel := context.WithDeadline(p.stopCtx, pd.deadline)
				p.restoreStreams(ctx)
				cancel()
			}
			pd.before = p.nc.LastError()
			if _, err := p.js.PublishMsgAsync(pd.msg); err != nil {
				p.failed(p.js, pd.msg, err)
			}
		case <-p.stop:
			for {
				select {
				case pd := <-p.kick:
					p.resolve(pd, fmt.Errorf("workqueue: queue %s closed while a job awaited a retry", p.cfg.Name), 0)
				default:
					return
				}
			}
		}
	}
}

// resolve ends pd once.
func (p *publisher) resolve(pd *Pending, err error, seq uint64) {
	p.mu.Lock()
	if cur, ok := p.pending[pd.msg]; !ok || cur != pd {
		p.mu.Unlock()
		return
	}
	delete(p.pending, pd.msg)
	if err != nil && !pd.owned {
		if len(p.errs) < maxFlushErrors {
			p.errs = append(p.errs, err)
		} else {
			p.dropped++
		}
	}
	// Finish before Flush can see the queue idle: whoever Flush wakes must
	// find every job's outcome recorded.
	pd.finish(err, seq)
	if len(p.pending) == 0 && p.idle != nil {
		close(p.idle)
		p.idle = nil
	}
	p.mu.Unlock()
	<-p.sem
	if err == nil {
		p.m.Enqueued.Inc()
	}
}

// flush waits for the asynchronous enqueues until ctx ends and returns the
// errors not yet reported.
func (p *publisher) flush(ctx context.Context) error { return p.settle(ctx, true) }

// settle is flush, without waiting unless wait is set.
func (p *publisher) settle(ctx context.Context, wait bool) error {
	p.mu.Lock()
	idle := p.idle
	p.mu.Unlock()
	if idle != nil {
		select {
		case <-idle:
		default:
			if !wait {
				p.mu.Lock()
				n := len(p.pending)
				p.mu.Unlock()
				return fmt.Errorf("workqueue: queue %s closed with %d asynchronous enqueues still awaiting acknowledgement (use Shutdown to wait for them)", p.cfg.Name, n)
			}
			select {
			case <-idle:
			case <-ctx.Done():
				p.mu.Lock()
				n := len(p.pending)
				p.mu.Unlock()
				return fmt.Errorf("workqueue: queue %s: %d asynchronous enqueues still await acknowledgement: %w", p.cfg.Name, n, ctx.Err())
			}
		}
	}
	p.mu.Lock()
	errs, dropped := p.errs, p.dropped
	p.errs, p.dropped = nil, 0
	p.mu.Unlock()
	if dropped > 0 {
		errs = append(errs, fmt.Errorf("workqueue: queue %s: %d more asynchronous enqueues failed", p.cfg.Name, dropped))
	}
	return errors.Join(errs...)
}

// close releases the publisher, after waiting for the asynchronous
// enqueues until ctx ends if drain is set.
func (p *publisher) close(ctx context.Context, drain bool) error {
	p.mu.Lock()
	if p.closing {
		p.mu.Unlock()
		return nil
	}
	p.closing = true
	p.mu.Unlock()
	err := p.settle(ctx, drain)
	p.mu.Lock()
	p.closed = true
	running := p.running
	syncs, syncsIdle := p.syncs, p.syncsIdle
	p.mu.Unlock()
	defer close(p.done)
	if syncs > 0 && drain {
		select {
		case <-syncsIdle:
		case <-ctx.Done():
			p.mu.Lock()
			n := p.syncs
			p.mu.Unlock()
			if n > 0 {
				err = errors.Join(err, fmt.Errorf("workqueue: queue %s: %d enqueues still awaited the server and were stopped: %w", p.cfg.Name, n, ctx.Err()))
			}
		}
	}
	p.endCtx()
	if running {
		close(p.stop)
		<-p.stopped
	}
	p.js.CleanupPublisher()
	// What CleanupPublisher failed is reported through failed(), which
	// resolves it now that the publisher is closed.
	return err
}
