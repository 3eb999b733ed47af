package jsconsume

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/loomrt/loom/metrics"
	"github.com/loomrt/loom/objectstore"
)

// settleTimeout bounds the calls that settle a message (dead-letter
// publish, double ack, object delete), which must not depend on a handler
// context that may have ended.
const settleTimeout = 5 * time.Second

// Settler decides what happens to each delivered message: it prepares
// deliveries, runs handlers and acks, naks or dead-letters the result.
// Its fields are set once, before use.
type Settler struct {
	// Queue names the stream for logs and dead-letter headers, and Group
	// the consumer.
	Queue, Group string
	// JS publishes dead letters.
	JS jetstream.JetStream
	// Policy is the retry policy.
	Policy Policy
	// DeadLetterSubject is where dead letters go.
	DeadLetterSubject string
	// Payloads resolves offloaded payloads; nil if none are expected.
	Payloads *objectstore.Offloader
	// DeleteAfterAck deletes an offloaded payload once its message is
	// acknowledged (work queues: nobody else will read it).
	DeleteAfterAck bool
	// Metrics and Log must be set.
	Metrics *metrics.Queue
	Log     *slog.Logger

	// failedCopies remembers, by stream sequence, why a message was to be
	// dead-lettered when its copy could not be stored, so that the retry
	// keeps the real reason and error.
	mu           sync.Mutex
	failedCopies map[uint64]deadCause
}

type deadCause struct {
	reason string
	err    error
}

// maxFailedCopies bounds Settler.failedCopies.
const maxFailedCopies = 4096

// Delivery is one delivered message, prepared for its handler.
type Delivery struct {
	Msg  jetstream.Msg
	Meta *jetstream.MsgMetadata
	// Data is the payload: the body, or the offloaded object.
	Data []byte
	// Ref names the offloaded object, if there was one.
	Ref *objectstore.Ref

	mu      sync.Mutex
	settled bool
}

// ErrSettled is returned when a delivery is acked, failed or terminated a
// second time.
var ErrSettled = errors.New("jsconsume: message already settled")

// claim marks d settled, reporting whether it was not yet.
func (d *Delivery) claim() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.settled {
		return false
	}
	d.settled = true
	return true
}

// Receive prepares msg for a handler. It returns nil when the message was
// dealt with here: dead-lettered because it has been delivered more than
// MaxDeliver times or its offloaded payload cannot be read, or handed back
// after a transient error reading it.
func (s *Settler) Receive(ctx context.Context, msg jetstream.Msg) *Delivery {
	meta, err := msg.Metadata()
	if err != nil {
		// Not a JetStream delivery; nothing to settle.
		s.Log.Error("queue: message without JetStream metadata dropped", "queue", s.Queue, "subject", msg.Subject(), "err", err)
		return nil
	}
	d := &Delivery{Msg: msg, Meta: meta, Data: msg.Data()}
	if meta.NumDelivered > 1 {
		s.Metrics.Redelivered.Inc()
	}
	s.Metrics.Pending.Set(float64(meta.NumPending))
	if int(meta.NumDelivered) > s.Policy.MaxDeliver {
		if c, ok := s.failedCopy(meta.Sequence.Stream); ok {
			s.deadLetter(d, c.reason, c.err)
			return nil
		}
		s.deadLetter(d, ReasonExpired, fmt.Errorf("delivered %d times, more than max_deliver %d, without an answer within ack_wait %s: its handler hung past handler_timeout, its consumer died, consumers shutting down handed it back before it started (each such delivery counts), or the server refused its acks (the NATS user may not publish to $JS.ACK.>)",
			meta.NumDelivered, s.Policy.MaxDeliver, s.Policy.AckWait))
		return nil
	}
	if s.Payloads != nil {
		data, ref, err := s.Payloads.Resolve(ctx, msg.Headers(), msg.Data())
		d.Ref = ref
		if err != nil {
			if errors.Is(err, objectstore.ErrBadRef) || errors.Is(err, objectstore.ErrNotFound) {
				s.deadLetter(d, ReasonPayload, err)
			} else {
				s.fail(d, fmt.Errorf("reading offloaded payload: %w", err))
			}
			return nil
		}
		d.Data = data
	}
	return d
}

// handle runs h on d and settles the outcome: ack on success, nak with
// backoff on failure, dead letter after MaxDeliver attempts or on a
// TerminalError. A panic in h is recovered and counts as a failure. h's
// context has HandlerTimeout as its deadline, so that the calls h makes
// inherit the budget and h sees DeadlineExceeded, not the Canceled of a
// consumer stopping; while h runs, sl's watchdog reports progress every
// AckWait/2 until then.
func (s *Settler) handle(ctx context.Context, d *Delivery, h func(context.Context, *Delivery) error, sl *slot) {
	start := time.Now()
	deadline := start.Add(s.Policy.handlerTimeout())
	hctx, cancel := context.WithDeadline(ctx, deadline)
	sl.begin(d.Msg, d.Meta.Sequence.Stream, start, deadline)
	err := s.call(hctx, d, h)
	sl.end()
	s.Metrics.HandlerDuration.Observe(time.Since(start).Seconds())
	cancel()
	if err != nil && ctx.Err() != nil && !d.isSettled() {
		// The consumer is stopping: hand the message back at once for
		// another consumer instead of counting a failure with backoff.
		if d.claim() {
			_ = d.Msg.Nak()
		}
		return
	}
	if err := s.Settle(d, err); err != nil && !errors.Is(err, ErrSettled) {
		s.Log.Warn("queue: settling a message failed; it will be redelivered after ack_wait",
			"queue", s.Queue, "seq", d.Meta.Sequence.Stream, "err", err)
	}
}

// release undoes claim, for a settling that did not reach the server.
func (d *Delivery) release() {
	d.mu.Lock()
	d.settled = false
	d.mu.Unlock()
}

func (d *Delivery) isSettled() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.settled
}

// call runs h, turning a panic into a *PanicError.
func (s *Settler) call(ctx context.Context, d *Delivery, h func(context.Context, *Delivery) error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			s.Log.Error("queue: handler panicked", "queue", s.Queue, "seq", d.Meta.Sequence.Stream,
				"panic", r, "stack", string(debug.Stack()))
			err = &PanicError{Value: r}
		}
	}()
	return h(ctx, d)
}

// Settle acks d if err is nil, else fails it: dead letter for a
// TerminalError or the last attempt, nak with backoff otherwise. It
// returns ErrSettled if d was settled already (by the handler itself, say).
func (s *Settler) Settle(d *Delivery, err error) error {
	if !d.claim() {
		return ErrSettled
	}
	if err == nil {
		return s.ack(d)
	}
	var te *TerminalError
	if errors.As(err, &te) {
		s.deadLetter(d, te.Reason, te.Err)
		return nil
	}
	s.fail(d, err)
	return nil
}

// AckSync acknowledges d and waits until the server confirms it. If the
// server does not confirm it (ctx ends first, the connection is lost), d
// is not taken as settled: it may be acked again or failed.
func (s *Settler) AckSync(ctx context.Context, d *Delivery) error {
	if !d.claim() {
		return ErrSettled
	}
	if err := d.Msg.DoubleAck(ctx); err != nil {
		if !errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
			// Not confirmed: the caller may ack again, or fail the
			// message, rather than be told it is settled.
			d.release()
		}
		return fmt.Errorf("queue %s: ack of message %d: %w", s.Queue, d.Meta.Sequence.Stream, err)
	}
	s.Metrics.Acked.Inc()
	if d.Ref != nil && s.DeleteAfterAck {
		if err := s.Payloads.Delete(ctx, *d.Ref); err != nil {
			s.Log.Warn("queue: deleting an offloaded payload after its ack failed; the bucket's TTL will remove it",
				"queue", s.Queue, "object", d.Ref.Bucket+"/"+d.Ref.Name, "err", err)
		}
	}
	return nil
}

func (s *Settler) ack(d *Delivery) error {
	if d.Ref == nil || !s.DeleteAfterAck {
		if err := d.Msg.Ack(); err != nil {
			return fmt.Errorf("queue %s: ack of message %d: %w", s.Queue, d.Meta.Sequence.Stream, err)
		}
		s.Metrics.Acked.Inc()
		return nil
	}
	// The object may go only once the server has the ack: a lost ack
	// redelivers the message, which still needs its payload.
	ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
	defer cancel()
	if err := d.Msg.DoubleAck(ctx); err != nil {
		return fmt.Errorf("queue %s: ack of message %d: %w", s.Queue, d.Meta.Sequence.Stream, err)
	}
	s.Metrics.Acked.Inc()
	if err := s.Payloads.Delete(ctx, *d.Ref); err != nil {
		s.Log.Warn("queue: deleting an offloaded payload after its ack failed; the bucket's TTL will remove it",
			"queue", s.Queue, "object", d.Ref.Bucket+"/"+d.Ref.Name, "err", err)
	}
	return nil
}

// Fail hands d back after a failure: a nak with backoff, or the dead
// letter on the last attempt.
func (s *Settler) Fail(d *Delivery, err error) error {
	if err == nil {
		err = errors.New("failed without an error")
	}
	return s.Settle(d, err)
}

// fail: nak with backoff, or dead letter on the last attempt. d is claimed.
func (s *Settler) fail(d *Delivery, err error) {
	n := int(d.Meta.NumDelivered)
	if n >= s.Policy.MaxDeliver {
		s.deadLetter(d, ReasonFailed, err)
		return
	}
	delay := s.Policy.Backoff(n)
	s.Log.Debug("queue: job failed; retrying after backoff", "queue", s.Queue, "seq", d.Meta.Sequence.Stream,
		"attempt", n, "max_deliver", s.Policy.MaxDeliver, "backoff", delay, "err", err)
	if nerr := d.Msg.NakWithDelay(delay); nerr != nil {
		s.Log.Warn("queue: nak failed; the job comes back after ack_wait", "queue", s.Queue, "err", nerr)
		return
	}
	s.Metrics.Nakked.Inc()
}

// Terminate dead-letters d at once with reason and err.
func (s *Settler) Terminate(d *Delivery, reason string, err error) error {
	if !d.claim() {
		return ErrSettled
	}
	s.deadLetter(d, reason, err)
	return nil
}

// deadLetter copies d to the dead-letter subject, then terminates it. If
// the copy cannot be stored, d is handed back (nak with the longest
// backoff) and dead-lettered when it comes back: it is never dropped.
func (s *Settler) deadLetter(d *Delivery, reason string, cause error) {
	ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
	defer cancel()
	orig := d.Msg.Headers()
	h := make(nats.Header, len(orig)+9)
	for k, v := range orig {
		if k == nats.MsgIdHdr || k == "Nats-Expected-Stream" || k == "Nats-Expected-Last-Sequence" ||
			k == "Nats-Expected-Last-Subject-Sequence" || k == "Nats-Expected-Last-Msg-Id" || k == "Nats-TTL" {
			continue
		}
		h[k] = v
	}
	info := DeadLetterInfo{
		Queue:      s.Queue,
		Group:      s.Group,
		Subject:    d.Msg.Subject(),
		Reason:     reason,
		Error:      cause.Error(),
		Deliveries: int(d.Meta.NumDelivered),
		StreamSeq:  d.Meta.Sequence.Stream,
		Time:       time.Now(),
		MsgID:      orig.Get(nats.MsgIdHdr),
	}
	info.Header(h)
	// The same message dead-lettered twice (a crash between the copy and
	// the term) is stored once.
	h.Set(nats.MsgIdHdr, "dlq."+s.Queue+"."+s.Group+"."+strconv.FormatUint(d.Meta.Sequence.Stream, 10))
	m := &nats.Msg{Subject: s.DeadLetterSubject, Header: h, Data: d.Msg.Data()}
	s.fitDeadLetter(ctx, m, cause)
	if _, err := s.JS.PublishMsg(ctx, m); err != nil {
		s.Log.Error("queue: copying a message to the dead-letter stream failed; it will be retried",
			"queue", s.Queue, "seq", d.Meta.Sequence.Stream, "dead_letter_subject", s.DeadLetterSubject, "err", err)
		s.rememberFailedCopy(d.Meta.Sequence.Stream, deadCause{reason: reason, err: cause})
		_ = d.Msg.NakWithDelay(max(s.Policy.BackoffMax, time.Second))
		return
	}
	s.failedCopy(d.Meta.Sequence.Stream)
	if err := d.Msg.TermWithReason(reason); err != nil {
		s.Log.Warn("queue: terminating a dead-lettered message failed; it may be redelivered and dead-lettered again (stored once)",
			"queue", s.Queue, "seq", d.Meta.Sequence.Stream, "err", err)
	}
	s.Metrics.DeadLettered.Inc()
	s.Log.Warn("queue: job moved to the dead-letter stream", "queue", s.Queue, "seq", d.Meta.Sequence.Stream,
		"reason", reason, "deliveries", d.Meta.NumDelivered, "err", cause)
}

// minErrorHeader is the least of the error a dead letter keeps in its
// header before its body is offloaded instead.
const minErrorHeader = 128

// fitDeadLetter makes a dead-letter copy fit the server's max_payload: the
// copy adds headers (the error up to 1 KiB, and the rest) to a job that
// may have been just below the limit. It shortens the error header first,
// down to minErrorHeader bytes; if that is not enough it offloads the body
// to the object store (when the queue has one); else it leaves the copy
// as is, and publishing it fails.
func (s *Settler) fitDeadLetter(ctx context.Context, m *nats.Msg, cause error) {
	limit := s.JS.Conn().MaxPayload()
	if s.Payloads != nil {
		limit = s.Payloads.Limit()
	}
	over := int64(len(m.Data)) + objectstore.HeaderSize(m.Header) - limit
	if over <= 0 {
		return
	}
	have := int64(len(m.Header.Get(HeaderError)))
	if have-over >= minErrorHeader {
		m.Header.Set(HeaderError, oneLine(cause.Error(), int(have-over)))
		return
	}
	if s.Payloads == nil || m.Header.Get(objectstore.RefHeader) != "" {
		return
	}
	if _, err := s.Payloads.Prepare(ctx, m, "dlq/"+s.Queue, "dead letter of a job for queue "+s.Queue); err != nil {
		s.Log.Warn("queue: a dead letter is above max_payload and its body cannot be offloaded", "queue", s.Queue, "err", err)
	}
}

func (s *Settler) rememberFailedCopy(seq uint64, c deadCause) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failedCopies == nil {
		s.failedCopies = make(map[uint64]deadCause)
	}
	if len(s.failedCopies) < maxFailedCopies {
		s.failedCopies[seq] = c
	}
}

// failedCopy returns and forgets why seq was to be dead-lettered, if its
// copy could not be stored before.
func (s *Settler) failedCopy(seq uint64) (deadCause, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.failedCopies[seq]
	delete(s.failedCopies, seq)
	return c, ok
}

// heldRedelivery deals with msg, delivered again while a handler of this
// consumer still runs on an earlier delivery of it, past handler_timeout
// and ignoring its cancelled context. Running it a second time here would
// let one stuck job take a second slot (and, delivery after delivery,
// every slot), so it is handed back with the usual backoff, for another
// consumer, and dead-lettered (ReasonExpired) on its last delivery. The
// stuck handler keeps its one slot until it returns.
func (s *Settler) heldRedelivery(msg jetstream.Msg, meta *jetstream.MsgMetadata, running time.Duration) {
	s.Metrics.Redelivered.Inc()
	n := int(meta.NumDelivered)
	cause := fmt.Errorf("its handler has been running for %s, past handler_timeout %s, and did not return when its context was cancelled (a handler must return when its context ends); delivered %d times, max_deliver %d",
		running.Round(time.Millisecond), s.Policy.handlerTimeout(), n, s.Policy.MaxDeliver)
	if n >= s.Policy.MaxDeliver {
		d := &Delivery{Msg: msg, Meta: meta, Data: msg.Data(), settled: true}
		s.deadLetter(d, ReasonExpired, cause)
		return
	}
	delay := s.Policy.Backoff(n)
	s.Log.Warn("queue: job redelivered while its handler here still runs; handed back for another consumer",
		"queue", s.Queue, "seq", meta.Sequence.Stream, "attempt", n, "backoff", delay, "err", cause)
	if err := msg.NakWithDelay(delay); err != nil {
		s.Log.Warn("queue: nak failed; the job comes back after ack_wait", "queue", s.Queue, "err", err)
		return
	}
	s.Metrics.Nakked.Inc()
}

// InProgress tells the server d is still being worked on, resetting its
// AckWait.
func (s *Settler) InProgress(d *Delivery) error {
	if d.isSettled() {
		return ErrSettled
	}
	return d.Msg.InProgress()
}
