package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/internal/jsstream"
	"github.com/loomrt/loom/metrics"
)

// JetStream: events are stored in one stream (events.jetstream.stream)
// under their subject prefixed with DurablePrefix, so that core NATS
// events, which use the same subjects, are not captured by the stream.
// Publishers publish asynchronously with a bounded window of unacknowledged
// publishes; subscriptions pull from a consumer at the reader's pace and
// acknowledge each event after the reader's loop body returns.

// DurablePrefix prefixes the subject of every event on the JetStream
// transport.
const DurablePrefix = "loom.events."

// ensureStream returns the events stream, creating it with the configured
// limits if it does not exist. An existing stream is used as it is (an
// operator's limits are kept; internal/jsstream warns with the
// differences), so operators change limits with the nats CLI.
func ensureStream(ctx context.Context, js jetstream.JetStream, c config.EventsJetStream, log *slog.Logger) (jetstream.Stream, error) {
	name := streamName(c)
	sc := jetstream.StreamConfig{
		Name:        name,
		Description: "Loom durable events (package events)",
		Subjects:    []string{DurablePrefix + ">"},
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      c.MaxAge,
		MaxBytes:    int64(c.MaxBytes),
		MaxMsgs:     int64(c.MaxMsgs),
		Discard:     jetstream.DiscardOld,
		Storage:     jetstream.FileStorage,
		Replicas:    max(c.Replicas, 1),
	}
	if c.MaxBytes == 0 {
		sc.MaxBytes = -1
	}
	if c.MaxMsgs == 0 {
		sc.MaxMsgs = -1
	}
	if c.Discard == "new" {
		sc.Discard = jetstream.DiscardNew
	}
	if c.Storage == "memory" {
		sc.Storage = jetstream.MemoryStorage
	}
	s, _, err := jsstream.Ensure(ctx, js, sc, log)
	// A server without JetStream for the account answers no request to
	// its API: nats.go says "no responders".
	if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) || errors.Is(err, nats.ErrNoResponders) {
		return nil, fmt.Errorf("events: JetStream stream %s: the NATS server %s has no JetStream for this connection's account (%w): start it with JetStream (nats-server -js; loom up enables it), or set events.transport to %s",
			name, js.Conn().ConnectedUrlRedacted(), err, NATS)
	}
	if err != nil {
		return nil, fmt.Errorf("events: create JetStream stream %s for %s: %w", name, DurablePrefix+">", err)
	}
	return s, nil
}

func streamName(c config.EventsJetStream) string {
	if c.Stream == "" {
		return "LOOM_EVENTS"
	}
	return c.Stream
}

type jetStreamSender struct {
	js      jetstream.JetStream
	nc      *nats.Conn
	subject string // the stream's subject for the publisher's events
	cfg     config.EventsJetStream
	log     *slog.Logger

	mu       sync.Mutex
	before   error // the connection's last error when the publisher began (see refused)
	failed   int
	firstErr error
	// lost is set when a publish found no stream to answer it: the
	// stream went away (a server restarted without it, or an operator
	// removed it), and the next send makes it again.
	lost     atomic.Bool
	restored time.Time // under mu: when restore last made the stream
}

func newJetStreamSender(ctx context.Context, rt *loom.Runtime, subject string, o options) (*jetStreamSender, error) {
	nc, err := rt.NATS(ctx)
	if err != nil {
		return nil, fmt.Errorf("events: the jetstream transport needs NATS (nats.url, NATS_SERVER): %w", err)
	}
	s := &jetStreamSender{nc: nc, subject: DurablePrefix + subject, before: nc.LastError(), cfg: o.cfg.JetStream, log: rt.Logger()}
	s.js, err = jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(o.cfg.JetStream.MaxPending),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.failed == 0 {
				s.firstErr = fmt.Errorf("the stream did not store an event on %s: %w", strings.TrimPrefix(m.Subject, DurablePrefix), err)
			}
			s.failed++
			if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrStreamNotFound) {
				s.lost.Store(true)
			}
		}))
	if err != nil {
		return nil, fmt.Errorf("events: JetStream: %w", err)
	}
	if _, err := ensureStream(ctx, s.js, o.cfg.JetStream, rt.Logger()); err != nil {
		return nil, err
	}
	return s, nil
}

// takeErr returns, once, the failures reported since the last call.
func (s *jetStreamSender) takeErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failed == 0 {
		return nil
	}
	err := s.firstErr
	if s.failed > 1 {
		err = fmt.Errorf("%d earlier events were not stored; the first: %w", s.failed, err)
	}
	s.failed, s.firstErr = 0, nil
	return err
}

func (s *jetStreamSender) send(ctx context.Context, subject string, env []byte) error {
	if s.lost.Load() {
		s.restore(ctx)
	}
	if err := s.takeErr(); err != nil {
		return fmt.Errorf("this event was not sent (publish it again if it matters) because an earlier one failed: %w", err)
	}
	// The client keeps the message until it is acknowledged: it needs its
	// own copy of the bytes.
	m := traceMsg(ctx, DurablePrefix+subject, append([]byte(nil), env...))
	for {
		_, err := s.js.PublishMsgAsync(m, jetstream.WithStallWait(50*time.Millisecond))
		if !errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
			return err
		}
		// The window of unacknowledged publishes is full: wait.
		if ctx.Err() != nil {
			if err := s.refused(); err != nil {
				return fmt.Errorf("waiting for the stream to acknowledge earlier events (events.jetstream.max_pending): %w", err)
			}
			return fmt.Errorf("waiting for the stream to acknowledge earlier events (events.jetstream.max_pending): %w", ctx.Err())
		}
	}
}

// restoreEvery bounds how often a publisher asks the
// server whether the stream is there, however often it finds it missing.
const restoreEvery = 250 * time.Millisecond

// restoreWait bounds one attempt to make the stream again.
const restoreWait = 2 * time.Second

// restore makes the stream again when a publish found none: without it
// every later event would fail the same way until the process restarted.
// The stream is created only when absent, with the configured limits, as
// at the start. A failure is left for a later send to retry (the events
// meanwhile fail, and subscribers count them as lost).
func (s *jetStreamSender) restore(ctx context.Context) {
	s.mu.Lock()
	if time.Since(s.restored) < restoreEvery {
		s.mu.Unlock()
		return
	}
	s.restored = time.Now()
	s.mu.Unlock()
	s.lost.Store(false)
	ctx, cancel := context.WithTimeout(ctx, restoreWait)
	defer cancel()
	if _, err := ensureStream(ctx, s.js, s.cfg, s.log); err != nil {
		s.lost.Store(true)
		s.log.Warn("events: the JetStream stream is gone and could not be made again; retrying at the next Publish", "stream", streamName(s.cfg), "err", err)
	}
}

func (s *jetStreamSender) subscribers(string) (int, error) { return 0, errNoSubscriberCount }

func (s *jetStreamSender) flush(ctx context.Context) error {
	select {
	case <-s.js.PublishAsyncComplete():
	case <-ctx.Done():
		if err := s.refused(); err != nil {
			return fmt.Errorf("%d events not yet acknowledged by the stream: %w", s.js.PublishAsyncPending(), err)
		}
		return fmt.Errorf("%d events not yet acknowledged by the stream: %w", s.js.PublishAsyncPending(), ctx.Err())
	}
	return s.takeErr()
}

// refused returns an error if the server refused publishes to the
// publisher's subject since the publisher began: it drops such a message,
// so its acknowledgement never comes (an event refused once stays
// unacknowledged), and reports the refusal only to the connection.
func (s *jetStreamSender) refused() error {
	err := refusal(s.nc.LastError(), s.before, metrics.PermissionPublish, s.subject)
	if err == nil {
		return nil
	}
	return fmt.Errorf("the NATS server refused events published on %s (%w): this process's NATS user needs publish permission on %s (the stream's subjects are %s)",
		s.subject, err, s.subject, DurablePrefix+">")
}

func (s *jetStreamSender) shutdown(ctx context.Context, drain bool) error {
	defer s.js.CleanupPublisher()
	if !drain {
		return nil
	}
	return s.flush(ctx)
}

// durableSub is a JetStream subscription: a pull consumer on the stream
// filtered by the subscription's pattern.
type durableSub struct {
	c         *subCore
	js        jetstream.JetStream
	cfg       config.EventsJetStream
	cc        jetstream.ConsumerConfig // as first created
	pullOpts  []jetstream.PullMessagesOpt
	ephemeral bool
	// created is when the stream the consumer was made on was created:
	// a stream made again since holds none of the events of the first.
	created time.Time

	// The consumer, made again if the server loses it; the reader
	// replaces them (under mu and itMu), close reads them (under itMu).
	itMu   sync.Mutex
	stream jetstream.Stream
	cons   jetstream.Consumer
	it     jetstream.MessagesContext
	name   string

	mu     sync.Mutex // the reader
	held   *held      // under mu
	next   uint64     // under mu: the stream sequence to resume from; 0: as first asked
	broken bool       // under mu: the consumer is gone and not yet made again
	// pending is the events the stream still held for the consumer when
	// it sent the last one accepted (the message's own count).
	pending atomic.Uint64
	closing atomic.Bool
	closeMu sync.Mutex
	closed  bool
}

func subscribeJetStream(ctx context.Context, rt *loom.Runtime, c *subCore, o options) (*durableSub, error) {
	nc, err := rt.NATS(ctx)
	if err != nil {
		return nil, fmt.Errorf("events: the jetstream transport needs NATS (nats.url, NATS_SERVER): %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("events: JetStream: %w", err)
	}
	stream, err := ensureStream(ctx, js, o.cfg.JetStream, rt.Logger())
	if err != nil {
		return nil, err
	}
	cc := jetstream.ConsumerConfig{
		Durable:       o.durable,
		Description:   "loom events subscription to " + c.pattern,
		FilterSubject: DurablePrefix + c.pattern,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       o.cfg.JetStream.AckWait,
		MaxAckPending: o.bufferSize,
	}
	switch o.deliver {
	case deliverNew:
		cc.DeliverPolicy = jetstream.DeliverNewPolicy
	case deliverAll:
		cc.DeliverPolicy = jetstream.DeliverAllPolicy
	case deliverFromSeq:
		cc.DeliverPolicy, cc.OptStartSeq = jetstream.DeliverByStartSequencePolicy, o.startSeq
	case deliverSince:
		t := o.startTime
		cc.DeliverPolicy, cc.OptStartTime = jetstream.DeliverByStartTimePolicy, &t
	case deliverLastPerSubject:
		cc.DeliverPolicy = jetstream.DeliverLastPerSubjectPolicy
	}
	if o.durable == "" {
		// An ephemeral consumer outlives a crashed process by this much.
		cc.InactiveThreshold = time.Minute
	}
	d := &durableSub{c: c, js: js, cfg: o.cfg.JetStream, cc: cc, ephemeral: o.durable == "",
		created: stream.CachedInfo().Created,
		// A short pull expiry: the client notices a pull request the
		// server no longer holds (seen under load: the consumer has
		// events, no request waits, and the client counts its own as
		// outstanding) after two missed heartbeats, half the expiry,
		// instead of after 30s.
		pullOpts: []jetstream.PullMessagesOpt{jetstream.PullMaxMessages(min(o.bufferSize, 512)), jetstream.PullExpiry(pullExpiry)},
	}
	if err := d.consume(ctx, stream, cc); err != nil {
		what := "consumer"
		if o.durable != "" {
			what = fmt.Sprintf("durable consumer %q (a durable keeps the Deliver* start it was created with; remove it with `nats consumer rm` to change it)", o.durable)
		}
		return nil, fmt.Errorf("events: JetStream %s for %s: %w", what, c.pattern, err)
	}
	if o.deliver == deliverNew {
		// Where "new" began (or, for a durable made before, after what it
		// acknowledged): a consumer made again starts there, not at what
		// is new by then.
		d.next = d.cons.CachedInfo().AckFloor.Stream + 1
	}
	return d, nil
}

// consume creates the consumer cc on stream and starts pulling from it.
func (d *durableSub) consume(ctx context.Context, stream jetstream.Stream, cc jetstream.ConsumerConfig) error {
	cons, err := stream.CreateOrUpdateConsumer(ctx, cc)
	if err != nil {
		return err
	}
	it, err := cons.Messages(d.pullOpts...)
	if err != nil {
		return err
	}
	d.itMu.Lock()
	defer d.itMu.Unlock()
	if d.closing.Load() {
		// Closed meanwhile: close has let go of the previous consumer.
		it.Stop()
		if d.ephemeral {
			_ = stream.DeleteConsumer(ctx, cons.CachedInfo().Name)
		}
		return fmt.Errorf("%w: subscription to %s", ErrClosed, d.c.pattern)
	}
	d.stream, d.cons, d.it, d.name = stream, cons, it, cons.CachedInfo().Name
	return nil
}

// consumerGone asks the server whether it still has the consumer, when
// pulls went without a heartbeat. A server that restarted without it
// (memory storage), or from which an operator removed it or its stream,
// answers a pull with nothing at all, not with "consumer not found":
// without asking, the subscription would wait for heartbeats forever.
func (d *durableSub) consumerGone(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, restoreWait)
	defer cancel()
	_, err := d.cons.Info(ctx)
	return errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound)
}

// recreate makes the consumer again, and the stream if it went too,
// retrying with a backoff until it works, ctx ends or the subscription
// closes (then the next loop tries again). It resumes after the last
// event received when the stream is the same; a stream made again holds
// only events published since, so it starts at its beginning. Events the
// lost stream held and the subscription had not received are counted as
// lost when their publisher's next event arrives.
func (d *durableSub) recreate(ctx context.Context, cause error) bool {
	c := d.c
	d.broken = true
	d.itMu.Lock()
	d.it.Stop()
	d.itMu.Unlock()
	c.log.Warn("events: the JetStream consumer went away (a server restarted without it, or it was removed); making it again",
		"consumer", d.name, "err", cause)
	delay := 100 * time.Millisecond
	for {
		err := d.remake(ctx)
		if err == nil {
			d.broken = false
			return true
		}
		c.log.Warn("events: making the JetStream consumer again failed; retrying", "err", err, "retry_in", delay)
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return false
		case <-c.done:
			return false
		}
		delay = min(2*delay, 5*time.Second)
	}
}

func (d *durableSub) remake(ctx context.Context) error {
	sctx, cancel := context.WithTimeout(ctx, restoreWait)
	defer cancel()
	stream, err := ensureStream(sctx, d.js, d.cfg, d.c.rt.Logger())
	if err != nil {
		return err
	}
	cc := d.cc
	if created := stream.CachedInfo().Created; !created.Equal(d.created) {
		d.c.log.Warn("events: the JetStream stream was made again: the events it held that this subscription had not received are lost; they are counted for each publisher it had heard from when that publisher's next event arrives",
			"stream", streamName(d.cfg))
		d.created, d.next = created, 1
	}
	if d.next > 0 {
		cc.DeliverPolicy, cc.OptStartSeq, cc.OptStartTime = jetstream.DeliverByStartSequencePolicy, d.next, nil
	}
	return d.consume(sctx, stream, cc)
}

// pullExpiry is how long a subscription's pull request lasts.
const pullExpiry = 5 * time.Second

// held is an event the reader took but did not get to (it broke out of
// the loop at a loss notice before it): the next loop starts with it.
type held struct {
	m         jetstream.Msg
	it        item
	streamSeq uint64
	notices   []LossError
}

// loop reads events until the subscription closes or deliver asks to stop.
// deliver reports whether the event was processed (then it is
// acknowledged); one it did not get to is kept for the next loop.
//
// Each event is acknowledged on its own (AckExplicit). Acknowledging in
// batches with AckAll would be faster, but AckAll acknowledges whatever a
// consumer delivered before the acknowledged event, including events
// handed back or awaiting redelivery, which could then be skipped.
func (d *durableSub) loop(ctx context.Context, deliver func(it *item, streamSeq uint64, notices []LossError) (processed, stop bool), fail func(error)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := d.c
	var next []jetstream.NextOpt
	if ctx.Done() != nil {
		next = append(next, jetstream.NextContext(ctx))
	}
	if d.broken && !d.recreate(ctx, errors.New("not made again before")) {
		return
	}
	for {
		h := d.held
		d.held = nil
		if h == nil {
			m, err := d.it.Next(next...)
			if err != nil {
				switch {
				case ctx.Err() != nil:
					return // this range is over; the subscription goes on
				case d.closing.Load() || errors.Is(err, jetstream.ErrMsgIteratorClosed) && !errors.Is(err, jetstream.ErrConnectionClosed):
					return // closed by us (also when the connection closed right after)
				case errors.Is(err, jetstream.ErrConnectionClosed), errors.Is(err, nats.ErrConnectionClosed):
					c.close(nil)
					fail(fmt.Errorf("%w: JetStream consumer %s for %s: %w", ErrConnectionClosed, d.name, c.pattern, err))
					return
				case errors.Is(err, jetstream.ErrConsumerDeleted), errors.Is(err, jetstream.ErrConsumerNotFound),
					errors.Is(err, jetstream.ErrNoHeartbeat) && d.consumerGone(ctx):
					if !d.recreate(ctx, err) {
						return
					}
					continue
				}
				// Missed heartbeats and the like: the iterator recovers.
				c.log.Debug("events: JetStream consumer", "consumer", d.name, "err", err)
				continue
			}
			if d.closing.Load() {
				_ = m.Nak() // fetched, not delivered: back to the stream
				continue
			}
			if h = d.accept(m); h == nil {
				_ = m.Ack() // malformed or a duplicate: done with it
				continue
			}
		}
		processed, stop := deliver(&h.it, h.streamSeq, h.notices)
		if !processed {
			h.notices = nil // already reported
			d.held = h
			return
		}
		_ = h.m.Ack()
		if stop {
			return
		}
	}
}

// accept decodes and tracks a message; it returns nil for one that is not
// to be delivered.
func (d *durableSub) accept(m jetstream.Msg) *held {
	c := d.c
	subject := strings.TrimPrefix(m.Subject(), DurablePrefix)
	data := m.Data()
	h := &held{m: m}
	md, mdErr := m.Metadata()
	if mdErr == nil {
		d.next = max(d.next, md.Sequence.Stream+1)
	}
	if len(data) > c.maxSize {
		c.malformedMsg(subject, fmt.Errorf("%w: %d bytes", ErrTooLarge, len(data)))
		return nil
	}
	name, err := DecodeEnvelope(data, &h.it.env)
	if err != nil {
		c.malformedMsg(subject, err)
		return nil
	}
	v, from, skipped := c.track.observe(h.it.env.PublisherID, h.it.env.InstanceID, h.it.env.Sequence)
	switch v {
	case duplicate:
		c.duplicates.Add(1)
		return nil
	case gap:
		c.lost.Add(skipped)
		c.gap(subject, &h.it.env, from)
		c.logLoss()
		if c.lossErrors {
			h.notices = []LossError{{PublisherID: h.it.env.PublisherID, Subject: subject, From: from, Lost: skipped}}
		}
	case late:
		c.reordered.Add(1)
	}
	c.received.Add(1)
	h.it.subject, h.it.codec = subject, name
	h.it.traceParent = c.traceReceive(subject, m.Headers(), &h.it.env)
	if mdErr == nil {
		h.streamSeq = md.Sequence.Stream
		d.pending.Store(md.NumPending)
	}
	return h
}

func (d *durableSub) close() error {
	d.closeMu.Lock()
	defer d.closeMu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	// Hand what was fetched and not delivered back to the stream now,
	// rather than after AckWait: the reader's loop does it if it runs,
	// else this does.
	d.closing.Store(true)
	d.itMu.Lock()
	defer d.itMu.Unlock()
	d.it.Drain()
	if d.mu.TryLock() {
		if d.held != nil {
			_ = d.held.m.Nak()
			d.held = nil
		}
		for {
			m, err := d.it.Next(jetstream.NextMaxWait(100 * time.Millisecond))
			if err != nil {
				break
			}
			_ = m.Nak()
		}
		d.mu.Unlock()
	}
	d.it.Stop()
	if !d.ephemeral {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := d.stream.DeleteConsumer(ctx, d.name)
	if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, nats.ErrConnectionClosed) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("events: remove JetStream consumer %s: %w (it expires by itself after a minute)", d.name, err)
	}
	return nil
}
