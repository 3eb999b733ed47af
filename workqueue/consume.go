package workqueue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/loomrt/loom/internal/jsconsume"
	"github.com/loomrt/loom/internal/natsrefusal"
	"github.com/loomrt/loom/metrics"
)

// Handler handles jobs of type T. Returning nil acknowledges the job;
// returning an error hands it back for a retry after a backoff, or moves it
// to the dead-letter stream on its last attempt or if the error is
// Permanent. A panic counts as an error. ctx ends at the handler timeout
// (queue.handler_timeout) or when the consumer is shut down.
//
// A handler must return when ctx ends. One that does not keeps its one
// slot of concurrency until it returns, and no more: Loom stops reporting
// its job in progress at the handler timeout, so the server redelivers the
// job after AckWait; while the handler still runs, this consumer hands
// such a redelivery back (with the backoff) for other consumers instead of
// running it a second time, and dead-letters it on its last delivery
// (reason expired, saying the handler ignored its context). Shutdown
// abandons such handlers (AbandonedError).
type Handler[T any] interface {
	Handle(ctx context.Context, job *Job[T]) error
}

// HandlerFunc adapts a function to a Handler.
type HandlerFunc[T any] func(ctx context.Context, job *Job[T]) error

// Handle calls f.
func (f HandlerFunc[T]) Handle(ctx context.Context, job *Job[T]) error { return f(ctx, job) }

// Permanent marks err as not worth retrying: the job goes to the
// dead-letter stream at once, with err as its last error.
func Permanent(err error) error { return jsconsume.Terminal(jsconsume.ReasonPermanent, err) }

// Job is one delivery of a job.
type Job[T any] struct {
	// Value is the job.
	Value T
	// Seq is the job's sequence number in the queue's stream.
	Seq uint64
	// Deliveries counts the deliveries of the job, this one included.
	Deliveries int
	// Enqueued is when the server stored the job.
	Enqueued time.Time
	// Key is the idempotency key it was enqueued with, if any.
	Key string
	// Header is the message's headers.
	Header nats.Header

	d     *jsconsume.Delivery
	s     *jsconsume.Settler
	nc    *nats.Conn
	queue string
}

// Ack acknowledges the job and waits until the server confirms it, or ctx
// ends: the job is done and leaves the queue. An Ack that fails (ctx ended
// first, the connection was lost) leaves the job unsettled: call Ack
// again, or Fail. An Ack the server refuses (the NATS user may not publish
// to $JS.ACK.>) is never confirmed: once ctx ends, the error says so,
// naming the permission. Handlers run by Consume need not call it;
// returning nil acks.
func (j *Job[T]) Ack(ctx context.Context) error {
	err := j.s.AckSync(ctx, j.d)
	if err != nil && !errors.Is(err, jsconsume.ErrSettled) {
		rerr := j.ackRefused("ack")
		if rerr == nil && j.nc.FlushTimeout(refusalCheckTimeout) == nil {
			// The refusal comes before the answer to the flush.
			rerr = j.ackRefused("ack")
		}
		if rerr != nil {
			return rerr
		}
	}
	return settleErr(err)
}

// Fail hands the job back after a failure with err: a retry after the
// backoff, or the dead-letter stream if this was its last attempt or err
// is Permanent. It waits for one round trip to the server, and returns an
// error if the server refused the hand-back (the NATS user may not publish
// to $JS.ACK.>); the job then comes back after AckWait.
func (j *Job[T]) Fail(err error) error {
	return j.settled("nak", j.s.Fail(j.d, err))
}

// InProgress tells the server the job is still being worked on, so it is
// not redelivered for another AckWait. Handlers run by Consume need not
// call it: Loom reports progress every AckWait/2 until the handler
// timeout. It waits for one round trip to the server, and returns an
// error if the server refused it (the NATS user may not publish to
// $JS.ACK.>).
func (j *Job[T]) InProgress() error {
	return j.settled("in-progress report", j.s.InProgress(j.d))
}

// Terminate moves the job to the dead-letter stream at once, with err as
// its last error. It waits for one round trip to the server after the
// copy is stored, and returns an error if the server refused to terminate
// the job in the queue (the NATS user may not publish to $JS.ACK.>).
func (j *Job[T]) Terminate(err error) error {
	if err == nil {
		err = errors.New("terminated")
	}
	return j.settled("term", j.s.Terminate(j.d, jsconsume.ReasonPermanent, err))
}

// refusalCheckTimeout bounds the flush that Fail, InProgress and Terminate
// (and an Ack whose confirmation did not come) make to learn whether the
// server refused what they sent.
const refusalCheckTimeout = 2 * time.Second

// settled returns err, the outcome of a settling that sent its message
// without waiting for an answer, or an error naming the permission if the
// server refused that message: the server drops it and says so only in an
// asynchronous error, which comes before the answer to a flush.
func (j *Job[T]) settled(what string, err error) error {
	if err != nil {
		return settleErr(err)
	}
	if ferr := j.nc.FlushTimeout(refusalCheckTimeout); ferr != nil {
		return nil // sent; whether it was refused cannot be told now
	}
	return j.ackRefused(what)
}

// ackRefused returns an error naming the permission if the connection's
// last error is the server refusing a publish to this delivery's ack
// subject. That subject names this one delivery (its sequences and
// timestamp), so a refusal of any other publish is never taken for it.
func (j *Job[T]) ackRefused(what string) error {
	err := j.nc.LastError()
	kind, subject, ok := natsrefusal.Read(err)
	if !ok || kind != metrics.PermissionPublish || subject == "" || subject != j.d.Msg.Reply() {
		return nil
	}
	at := "$JS.ACK." + j.d.Meta.Stream + "." + j.d.Meta.Consumer + "."
	if prefix, _, _, ok := ackSubject(subject); ok {
		at = prefix
	}
	return fmt.Errorf("workqueue: queue %s: %s of job %d refused by the NATS server (%w): this process's NATS user needs publish permission on $JS.ACK.> (at least %s>), where jobs are acknowledged; until then the job comes back after ack_wait",
		j.queue, what, j.Seq, err, at)
}

// ErrSettled is returned by a Job's Ack, Fail, InProgress and Terminate
// once the job was already acked, failed or terminated.
var ErrSettled = errors.New("workqueue: job already settled")

// ErrClosed is returned by an enqueue on a Queue after its Shutdown or
// Close.
var ErrClosed = errors.New("workqueue: queue closed")

func settleErr(err error) error {
	if errors.Is(err, jsconsume.ErrSettled) {
		return ErrSettled
	}
	return err
}

// job turns a delivery into a Job, or a decode error into a dead letter.
func (q *Queue[T]) job(d *jsconsume.Delivery) (*Job[T], error) {
	v, err := q.decode(d.Data)
	if err != nil {
		return nil, jsconsume.Terminal(jsconsume.ReasonDecode, err)
	}
	h := d.Msg.Headers()
	return &Job[T]{
		Value:      v,
		Seq:        d.Meta.Sequence.Stream,
		Deliveries: int(d.Meta.NumDelivered),
		Enqueued:   d.Meta.Timestamp,
		Key:        h.Get(KeyHeader),
		Header:     h,
		d:          d,
		s:          q.settler,
		nc:         q.nc,
		queue:      q.cfg.Name,
	}, nil
}

// ConsumeOption tunes Consume and Run.
type ConsumeOption func(*consumeOpts)

type consumeOpts struct {
	concurrency, prefetch int
	drain                 time.Duration
	expiry                time.Duration
}

// maxConcurrency is the most handlers a consumer runs, queue.concurrency's
// bound.
const maxConcurrency = 100000

// check says which option is out of range, and what to use.
func (o consumeOpts) check() error {
	switch {
	case o.concurrency < 1 || o.concurrency > maxConcurrency:
		return fmt.Errorf("WithConcurrency(%d): use 1 to %d handlers at once", o.concurrency, maxConcurrency)
	case o.prefetch < 0:
		return fmt.Errorf("WithPrefetch(%d): use 0 (twice the concurrency) or more jobs", o.prefetch)
	case o.expiry != 0 && o.expiry < time.Second:
		return fmt.Errorf("WithPullExpiry(%s): use at least 1s (0 for the default 5s)", o.expiry)
	}
	return nil
}

// WithConcurrency sets how many jobs are handled at once, 1 to 100000;
// the default is queue.concurrency.
func WithConcurrency(n int) ConsumeOption { return func(o *consumeOpts) { o.concurrency = n } }

// WithPrefetch sets how many jobs are pulled ahead of the handlers; the
// default is twice the concurrency. Prefetched jobs age towards AckWait, so
// keep it small when handlers are slow.
func WithPrefetch(n int) ConsumeOption { return func(o *consumeOpts) { o.prefetch = n } }

// WithDrainTimeout sets how long Run lets running handlers finish after
// its context ends; the default is the queue's AckWait.
func WithDrainTimeout(d time.Duration) ConsumeOption { return func(o *consumeOpts) { o.drain = d } }

// WithPullExpiry sets how long each pull request waits on the server, at
// least 1s (default 5s); a consumer whose server died notices within
// about this long.
func WithPullExpiry(d time.Duration) ConsumeOption { return func(o *consumeOpts) { o.expiry = d } }

// Consumer runs a handler on a queue's jobs until Shutdown or Close.
type Consumer struct {
	r *jsconsume.Runner
}

// Consume starts handling the queue's jobs with h, in the background, and
// returns once the server has its subscription; an error names the
// permission the server refused, if it refused the consumer or the
// subscription. Every job is acknowledged only after h succeeds; acks the
// server refuses (the NATS user may not publish to $JS.ACK.>) are logged
// as an error naming the permission when their job comes back. Stop it
// with Shutdown.
func (q *Queue[T]) Consume(h Handler[T], opts ...ConsumeOption) (*Consumer, error) {
	o := consumeOpts{concurrency: q.cfg.Concurrency}
	for _, opt := range opts {
		opt(&o)
	}
	if err := o.check(); err != nil {
		return nil, fmt.Errorf("workqueue: queue %s: %w", q.cfg.Name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), q.cfg.EnqueueTimeout)
	defer cancel()
	cons, err := q.cons(ctx)
	if err != nil {
		return nil, err
	}
	before := q.nc.LastError()
	r, err := jsconsume.Start(jsconsume.Config{
		Settler:     q.settler,
		Consumer:    cons,
		Recreate:    q.createConsumer,
		Concurrency: o.concurrency,
		Prefetch:    o.prefetch,
		PullExpiry:  o.expiry,
		Handler: func(ctx context.Context, d *jsconsume.Delivery) error {
			job, err := q.job(d)
			if err != nil {
				return err
			}
			if job.Deliveries > 1 {
				q.logAcksRefused()
			}
			return q.traced(ctx, job, func(ctx context.Context) error { return h.Handle(ctx, job) })
		},
	})
	if err != nil {
		return nil, fmt.Errorf("workqueue: %w", err)
	}
	// The server refuses a subscription only in an asynchronous error,
	// which comes before the answer to a flush: without this check a
	// consumer refused its subscription would receive nothing, silently.
	if ferr := q.nc.FlushWithContext(ctx); ferr == nil {
		if rerr := q.subscriptionRefused(before); rerr != nil {
			_ = r.Close()
			return nil, rerr
		}
	}
	return &Consumer{r: r}, nil
}

// subscriptionRefused returns an error if the connection's last error is
// no longer before but the server refusing a subscription to an inbox,
// where a consumer's jobs are delivered. A refused subscription to any
// other subject is another user's of the connection, not the consumer's.
func (q *Queue[T]) subscriptionRefused(before error) error {
	err := q.nc.LastError()
	if err == before {
		return nil
	}
	inbox := nats.InboxPrefix
	if p := q.nc.Opts.InboxPrefix; p != "" {
		inbox = p + "."
	}
	if kind, subject, ok := natsrefusal.Read(err); !ok || kind != metrics.PermissionSubscribe || !strings.HasPrefix(subject, inbox) {
		return nil
	}
	return fmt.Errorf("workqueue: queue %s: the NATS server refused the subscription its jobs are delivered on (%w): this process's NATS user needs subscribe permission on its inbox prefix (_INBOX.>, or the connection's custom inbox prefix)",
		q.cfg.Name, err)
}

// logAcksRefused logs an error naming the permission, once per refusal,
// if the connection's last error is the server refusing a publish to this
// consumer's ack subjects. Consume acks (and naks, and reports progress)
// without waiting for an answer, and the server says it refused one only
// in an asynchronous error: without this, a consumer whose user may not
// publish to $JS.ACK.> would run every job again after each ack_wait,
// with nothing said. It is asked on a redelivery, which such a refusal
// causes.
func (q *Queue[T]) logAcksRefused() {
	err := q.nc.LastError()
	kind, subject, ok := natsrefusal.Read(err)
	if !ok || kind != metrics.PermissionPublish {
		return
	}
	prefix, stream, consumer, ok := ackSubject(subject)
	if !ok || stream != q.cfg.Name || consumer != q.cfg.Group {
		return
	}
	if last := q.ackRefusal.Load(); last != nil && *last == err {
		return
	}
	q.ackRefusal.Store(&err)
	q.cfg.Logger.Error("workqueue: the NATS server refuses this consumer's acks, so its jobs come back after ack_wait and run again; this process's NATS user needs publish permission on $JS.ACK.> (at least "+prefix+">)",
		"queue", q.cfg.Name, "err", err)
}

// Shutdown stops pulling jobs, hands back the jobs pulled but not started
// (so that other workers get them at once), those still on their way
// included (it reads until the server confirms it sent nothing more, until
// the connection is lost, or at most ShutdownGrace after ctx ends), and
// waits for the running handlers to finish and their jobs to be acked or
// failed. If ctx ends first, it cancels the handlers' contexts and waits
// up to ShutdownGrace for them to return (their jobs are handed back for
// another worker); it then returns ctx's error, or, if handlers ignored
// their context and are still running, an *AbandonedError naming their
// jobs. Shutdown does not wait for those: their goroutines end when they
// return (Done closes then), and their jobs are redelivered after
// AckWait.
func (c *Consumer) Shutdown(ctx context.Context) error { return c.r.Shutdown(ctx) }

// Close stops the consumer now: it stops pulling, cancels the running
// handlers' contexts at once and hands their jobs and the jobs pulled but
// not started back (other workers get them at once), waiting at most
// ShutdownGrace for the handlers to return. It returns nil, or an
// *AbandonedError naming the handlers that ignored their cancelled
// context. Calling Shutdown or Close again returns nil.
func (c *Consumer) Close() error { return c.r.Close() }

// AbandonedError is returned by Shutdown when handlers were still running
// ShutdownGrace after their context was cancelled. Seqs are their jobs'
// sequence numbers; errors.Is(err, context.DeadlineExceeded) holds when
// Shutdown's context timed out.
type AbandonedError = jsconsume.AbandonedError

// ShutdownGrace is how long Shutdown waits, after its context ends and the
// handlers' contexts are cancelled, before it abandons the handlers still
// running.
const ShutdownGrace = jsconsume.ShutdownGrace

// Done is closed once the consumer has stopped: after Shutdown, or on a
// fatal error (see Err).
func (c *Consumer) Done() <-chan struct{} { return c.r.Done() }

// Err returns the fatal error that stopped the consumer (the connection
// was closed), or nil.
func (c *Consumer) Err() error { return c.r.Err() }

// Run handles the queue's jobs with h until ctx ends, then shuts the
// consumer down, letting running handlers finish for the drain timeout
// (WithDrainTimeout; the queue's AckWait by default). It returns nil after
// a clean stop. It fits loom.Runtime.Go:
//
//	rt.Go("prefill workers", func(ctx context.Context) error { return q.Run(ctx, h) })
func (q *Queue[T]) Run(ctx context.Context, h Handler[T], opts ...ConsumeOption) error {
	o := consumeOpts{drain: q.cfg.AckWait}
	for _, opt := range opts {
		opt(&o)
	}
	c, err := q.Consume(h, opts...)
	if err != nil {
		return err
	}
	select {
	case <-ctx.Done():
	case <-c.Done():
		return c.Err()
	}
	sctx, cancel := context.WithTimeout(context.Background(), o.drain)
	defer cancel()
	if err := c.Shutdown(sctx); err != nil {
		return fmt.Errorf("workqueue: queue %s: handlers still running after the drain timeout %s were cancelled: %w", q.cfg.Name, o.drain, err)
	}
	return c.Err()
}

// dequeueWait bounds one pull request of Dequeue.
const dequeueWait = 5 * time.Second

// Dequeue waits for the next job and returns it, for pull-style workers in
// the shape of the seed's NATSQueue.dequeue_task. Unlike that one, it does
// not acknowledge on receipt: the caller calls Ack once the job is done
// (or Fail, or Terminate), and a job neither acked nor failed within
// AckWait is redelivered, so a crash loses nothing. Call InProgress on long
// jobs. If ctx ends first, Dequeue returns ctx's error; give it a timeout
// for the seed's dequeue_timeout. A job that does not decode as T goes to
// the dead-letter stream and Dequeue waits for the next.
func (q *Queue[T]) Dequeue(ctx context.Context) (*Job[T], error) {
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		wait := dequeueWait
		if dl, ok := ctx.Deadline(); ok {
			wait = min(wait, time.Until(dl))
		}
		if wait < 10*time.Millisecond {
			<-ctx.Done()
			return nil, ctx.Err()
		}
		cons, err := q.cons(ctx)
		if err != nil {
			return nil, err
		}
		fctx, cancel := context.WithTimeout(ctx, wait)
		before := q.nc.LastError()
		msg, err := cons.Next(jetstream.FetchContext(fctx))
		cancel()
		if err != nil {
			if rerr := q.subscriptionRefused(before); rerr != nil {
				return nil, rerr
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded) {
				continue
			}
			// No responders: the server has no such consumer, as after a
			// restart without it (memory storage); or JetStream restarts,
			// and making it fails until it is back.
			if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, nats.ErrNoResponders) {
				if _, cerr := q.createConsumer(ctx); cerr == nil {
					continue
				}
			}
			if errors.Is(err, nats.ErrConnectionClosed) {
				return nil, fmt.Errorf("workqueue: dequeue from queue %s: %w", q.cfg.Name, err)
			}
			// A reconnect or a leader election: pull again shortly.
			select {
			case <-time.After(100 * time.Millisecond):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			continue
		}
		d := q.settler.Receive(ctx, msg)
		if d == nil {
			continue
		}
		job, err := q.job(d)
		if err != nil {
			_ = q.settler.Settle(d, err)
			continue
		}
		return job, nil
	}
}
