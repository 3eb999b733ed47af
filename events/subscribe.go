package events

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/codec"
	"github.com/loomrt/loom/metrics"
)

// Subscription receives the events that match a scope and topic pattern.
// Range over Events to read them; one reader at a time.
type Subscription[T any] struct {
	c      *subCore
	decode func(codecName string, payload []byte) (T, error)
}

// source is a transport's receiving side.
type source interface {
	// close stops receiving and releases the transport's resources.
	close() error
}

// clientQueue is a client library's own buffer in front of a
// subscription's ring, which may drop messages before the subscription
// sees them (the NATS client's pending limits).
type clientQueue interface {
	// dropped counts the messages the client dropped so far.
	dropped() uint64
	// pending counts the messages waiting in the client's buffer.
	pending() int
}

// subCore is the part of a subscription that does not depend on T.
type subCore struct {
	rt         *loom.Runtime
	transport  string
	pattern    string
	maxSize    int
	lossErrors bool
	onGap      func(Gap)
	log        *slog.Logger
	metric     *metrics.EventSource
	track      *tracker

	ring    *ring       // core NATS and ZeroMQ
	durable *durableSub // JetStream
	src     source
	client  clientQueue // core NATS: the client's buffer before the ring

	// attributed counts the client's drops already matched to sequence
	// gaps: those gaps are not counted as lost again.
	attributed atomic.Uint64

	// Counters written by the transport's goroutine, then by the
	// reader's, on separate cache lines.
	received, lost, reordered, duplicates, dropped, malformed atomic.Uint64
	_                                                         [64]byte
	delivered                                                 atomic.Uint64
	_                                                         [56]byte

	lastTopic atomic.Pointer[string] // the last envelope's topic, to reuse

	logMu        sync.Mutex
	lastLog      time.Time
	unloggedMalf uint64
	unloggedLoss uint64

	closeMu sync.Mutex
	closed  bool
	done    chan struct{} // closed by close
}

// Subscribe subscribes to the events of type T on topic in scope. The
// scope's parts may be "*" (any one name) and topic may be "*" (any one
// topic) or ">" (every event at or below the scope): Scope{Namespace:
// "dynamo", Component: "*"} with topic "kv_events" receives the kv_events
// of every component of namespace dynamo.
//
// ctx bounds the setting up: Subscribe returns once the subscription is
// in place (the NATS server has its interest; the publishers ZeroMQ
// discovery knew of are dialed; the JetStream consumer exists). The
// subscription then lives, receiving and buffering events, until Close or
// the runtime's shutdown; each range over Events is bounded by its own
// context.
func Subscribe[T any](ctx context.Context, rt *loom.Runtime, scope Scope, topic string, opts ...Option) (*Subscription[T], error) {
	c, err := newSubCore(ctx, rt, scope, topic, opts)
	if err != nil {
		return nil, err
	}
	return &Subscription[T]{c: c, decode: func(name string, payload []byte) (T, error) {
		var v T
		var err error
		if name == codec.JSONName {
			err = codec.JSON.Unmarshal(payload, &v)
		} else {
			err = codec.MsgPack.Unmarshal(payload, &v)
		}
		return v, err
	}}, nil
}

// SubscribeRaw is Subscribe without decoding: each Event's Value is its
// encoded payload (Event.Codec says in which codec).
func SubscribeRaw(ctx context.Context, rt *loom.Runtime, scope Scope, topic string, opts ...Option) (*Subscription[[]byte], error) {
	c, err := newSubCore(ctx, rt, scope, topic, opts)
	if err != nil {
		return nil, err
	}
	return &Subscription[[]byte]{c: c, decode: func(_ string, payload []byte) ([]byte, error) { return payload, nil }}, nil
}

func newSubCore(ctx context.Context, rt *loom.Runtime, scope Scope, topic string, opts []Option) (*subCore, error) {
	pattern, err := Subject(scope, topic)
	if err != nil {
		return nil, err
	}
	o, err := buildOptions(rt.Config().Events, opts)
	if err != nil {
		return nil, err
	}
	if rt.Context().Err() != nil {
		return nil, fmt.Errorf("%w: subscription to %s: the runtime is shut down", ErrClosed, pattern)
	}
	c := &subCore{
		rt:         rt,
		transport:  o.transport,
		pattern:    pattern,
		maxSize:    o.cfg.MaxEventSize,
		lossErrors: o.lossErrors,
		onGap:      o.onGap,
		log:        rt.Logger().With("subscription", pattern, "transport", o.transport),
		track:      newTracker(),
		done:       make(chan struct{}),
	}
	if o.transport != JetStream {
		c.ring = newRing(o.bufferSize, o.overflow)
		c.ring.reportDrops = o.lossErrors
	}
	switch o.transport {
	case NATS:
		c.src, err = subscribeNATS(ctx, rt, c, o)
	case ZMQ:
		c.src, err = subscribeZMQ(ctx, rt, c, o)
	case JetStream:
		c.durable, err = subscribeJetStream(ctx, rt, c, o)
		c.src = c.durable
	}
	if err != nil {
		return nil, err
	}
	c.metric = rt.Metrics().EventSubscription(o.transport, pattern, c.counts)
	if st, ok := c.src.(interface{ start() }); ok {
		st.start()
	}
	// The subscription ends with the runtime, which waits for it.
	err = rt.Go("events subscription "+pattern, func(rctx context.Context) error {
		select {
		case <-rctx.Done():
		case <-c.done:
		}
		c.close(nil)
		return nil
	})
	if err != nil {
		c.close(nil)
		return nil, fmt.Errorf("%w: subscription to %s: the runtime is shut down: %w", ErrClosed, pattern, err)
	}
	return c, nil
}

// receive takes one message from a ring-based transport: it decodes the
// envelope, tracks the sequence and buffers the event. Called on the
// transport's goroutines; data must be owned by the callee from now on.
func (c *subCore) receive(subject string, h nats.Header, data []byte) {
	var it item
	if len(data) > c.maxSize {
		c.malformedMsg(subject, fmt.Errorf("%w: %d bytes, over events.max_event_size (%d)", ErrTooLarge, len(data), c.maxSize))
		return
	}
	var last string
	if p := c.lastTopic.Load(); p != nil {
		last = *p
	}
	name, err := decodeEnvelope(data, &it.env, last)
	if err != nil {
		c.malformedMsg(subject, err)
		return
	}
	if topic := it.env.Topic; topic != last {
		c.lastTopic.Store(&topic)
	}
	if !c.account(subject, &it.env) {
		return
	}
	it.subject, it.codec = subject, name
	it.traceParent = c.traceReceive(subject, h, &it.env)
	if c.ring.push(it) {
		c.dropped.Add(1)
		c.logLoss()
	}
}

// account tracks an envelope's sequence; it returns false for a duplicate.
func (c *subCore) account(subject string, env *Envelope) bool {
	v, from, skipped := c.track.observe(env.PublisherID, env.InstanceID, env.Sequence)
	switch v {
	case duplicate:
		c.duplicates.Add(1)
		return false
	case gap:
		// Events the client dropped are already counted as dropped; a gap
		// is lost only for what they do not explain.
		var byClient uint64
		if c.client != nil {
			byClient = c.attribute(skipped)
		}
		c.lost.Add(skipped - byClient)
		c.gap(subject, env, from)
		if c.lossErrors && c.ring != nil {
			n := LossError{PublisherID: env.PublisherID, Subject: subject, From: from, Lost: skipped - byClient, Dropped: byClient}
			if byClient != 0 {
				n.PublisherID, n.Subject, n.From = 0, "", 0
			}
			c.ring.notice(n)
		}
		c.logLoss()
	case late:
		c.reordered.Add(1)
	}
	c.received.Add(1)
	return true
}

// gap reports a gap to the OnGap callback, if any.
func (c *subCore) gap(subject string, env *Envelope, expected uint64) {
	if c.onGap != nil {
		c.onGap(Gap{Subject: subject, PublisherID: env.PublisherID, InstanceID: env.InstanceID, Expected: expected, Got: env.Sequence})
	}
}

// attribute matches up to skipped of the client's drops not yet matched to
// a gap, and returns how many it matched. Called on the one goroutine the
// NATS client runs the subscription's callback on.
func (c *subCore) attribute(skipped uint64) uint64 {
	done := c.attributed.Load()
	open := c.client.dropped() - done
	n := min(skipped, open)
	c.attributed.Store(done + n)
	return n
}

// logEvery bounds how often a subscription logs its losses and
// malformed messages.
const logEvery = 10 * time.Second

func (c *subCore) malformedMsg(subject string, err error) {
	c.malformed.Add(1)
	c.logMu.Lock()
	defer c.logMu.Unlock()
	c.unloggedMalf++
	if time.Since(c.lastLog) < logEvery {
		return
	}
	c.lastLog = time.Now()
	c.log.Warn("events: skipping malformed messages", "subject", subject, "count", c.unloggedMalf, "err", err)
	c.unloggedMalf = 0
}

func (c *subCore) logLoss() {
	c.logMu.Lock()
	defer c.logMu.Unlock()
	c.unloggedLoss++
	if time.Since(c.lastLog) < logEvery {
		return
	}
	c.lastLog = time.Now()
	s := c.stats()
	c.log.Warn("events: subscription losing events (see Stats or loom_events_* metrics)",
		"losses_since_last_report", c.unloggedLoss, "lost", s.Lost, "dropped", s.Dropped, "received", s.Received)
	c.unloggedLoss = 0
}

// close ends the subscription; err, if not nil, is what the reader gets
// after the buffered events. Only the first call acts: it reports so, with
// the error of releasing the transport.
func (c *subCore) close(err error) (first bool, closeErr error) {
	c.closeMu.Lock()
	if c.closed {
		c.closeMu.Unlock()
		return false, nil
	}
	c.closed = true
	close(c.done)
	if c.ring != nil {
		c.ring.close(err)
	}
	c.closeMu.Unlock()
	// Not under the lock: a transport may close from its own goroutine.
	err = c.src.close()
	if c.metric != nil {
		c.metric.Unregister()
	}
	return true, err
}

// counts reads the counters for the metrics.
func (c *subCore) counts() metrics.EventSubscriptionCounts {
	return metrics.EventSubscriptionCounts{
		Received: c.received.Load(), Delivered: c.delivered.Load(), Lost: c.lost.Load(),
		Reordered: c.reordered.Load(), Duplicates: c.duplicates.Load(), Dropped: c.droppedAll(),
		Malformed: c.malformed.Load(),
	}
}

// droppedAll counts the events dropped by the ring and by the client's
// buffer before it.
func (c *subCore) droppedAll() uint64 {
	n := c.dropped.Load()
	if c.client != nil {
		n += c.client.dropped()
	}
	return n
}

func (c *subCore) stats() Stats {
	lost, reordered := c.lost.Load(), c.reordered.Load()
	s := Stats{
		Received:   c.received.Load(),
		Delivered:  c.delivered.Load(),
		Reordered:  reordered,
		Duplicates: c.duplicates.Load(),
		Dropped:    c.droppedAll(),
		Malformed:  c.malformed.Load(),
		Publishers: c.track.publishers(),
	}
	if lost > reordered {
		s.Lost = lost - reordered
	}
	if c.ring != nil {
		s.Buffered = c.ring.len()
	}
	if c.client != nil {
		s.Buffered += c.client.pending()
	}
	if c.durable != nil {
		s.Buffered += int(c.durable.pending.Load())
	}
	return s
}

// Stats returns what the subscription has received and lost so far.
func (s *Subscription[T]) Stats() Stats { return s.c.stats() }

// Forget drops what the subscription keeps to follow the sequences of
// the publishers of runtime instance id (Event.InstanceID), once that
// instance has gone: a subscriber that follows the publishers' instances
// in discovery calls it when one leaves, so that a long-lived
// subscription keeps nothing of publishers that came and went (on core
// NATS and JetStream nothing else tells it they went). A publisher heard
// from again is followed afresh, from its next event.
func (s *Subscription[T]) Forget(id uint64) { s.c.track.forgetInstance(id) }

// Pattern returns the subject pattern the subscription matches.
func (s *Subscription[T]) Pattern() string { return s.c.pattern }

// Transport returns the name of the subscription's transport.
func (s *Subscription[T]) Transport() string { return s.c.transport }

// Close ends the subscription now: it stops receiving, and Events ends
// after the events already buffered (for JetStream, at once;
// unacknowledged events are delivered again to the next subscription of
// the same durable). A subscription has nothing to drain (its reader
// drains it by reading), so it has no Shutdown. Close returns the error of
// releasing the transport, if any; calling it again returns nil.
func (s *Subscription[T]) Close() error {
	_, err := s.c.close(nil)
	return err
}

// batchSize is how many buffered events the reader takes at once.
const batchSize = 128

// Events returns the stream of events, in the order they arrived (each
// publisher's in its sequence order, unless the transport reordered them).
// Payloads that do not decode as T are counted as malformed and skipped.
// With WithLossErrors, a *LossError reports losses and the stream goes on;
// any other error ends it (the transport's connection closed for good).
// The stream ends without an error when ctx ends (the subscription goes
// on: ranging again continues) or when the subscription is closed.
//
// Breaking out of the loop, or ctx ending, leaves the events not yet read
// in the subscription; ranging again continues with them. On JetStream an event
// is acknowledged once the loop body has run for it (also when the body
// then breaks out of the loop): an event whose body panicked, or that was
// in flight when the process died, is delivered again (at-least-once).
// Events the subscription had fetched but not delivered when it closes are
// handed back to the stream at once.
func (s *Subscription[T]) Events(ctx context.Context) iter.Seq2[Event[T], error] {
	return func(yield func(Event[T], error) bool) {
		c := s.c
		if c.durable != nil {
			c.durable.loop(ctx, func(it *item, streamSeq uint64, notices []LossError) (processed, stop bool) {
				for i := range notices {
					if !yield(Event[T]{}, &notices[i]) {
						return false, true
					}
				}
				ev, ok := s.event(it)
				if !ok {
					return true, false
				}
				ev.StreamSequence = streamSeq
				c.delivered.Add(1)
				// The body ran for the event, even if it then broke out
				// of the loop: it is processed.
				return true, !yield(ev, nil)
			}, func(err error) { yield(Event[T]{}, err) })
			return
		}
		batch := make([]item, 0, batchSize)
		for {
			var err error
			batch, err = c.ring.pop(ctx, batch[:0])
			if err != nil {
				if !errors.Is(err, errRingClosed) && ctx.Err() == nil {
					yield(Event[T]{}, err)
				}
				return
			}
			for i := range batch {
				var ev Event[T]
				var err error
				if l := batch[i].loss; l != nil {
					err = l
				} else {
					var ok bool
					if ev, ok = s.event(&batch[i]); !ok {
						continue
					}
					c.delivered.Add(1)
				}
				if !yield(ev, err) {
					c.unpop(batch[i+1:])
					clear(batch)
					return
				}
			}
			clear(batch)
		}
	}
}

func (c *subCore) unpop(items []item) {
	if n := c.ring.unpop(items); n > 0 {
		c.dropped.Add(uint64(n))
	}
}

// event decodes an item's payload into an Event.
func (s *Subscription[T]) event(it *item) (Event[T], bool) {
	v, err := s.decode(it.codec, it.env.Payload)
	if err != nil {
		s.c.malformedMsg(it.subject, fmt.Errorf("payload: %w", err))
		return Event[T]{}, false
	}
	return Event[T]{
		Value:       v,
		Subject:     it.subject,
		Topic:       it.env.Topic,
		PublisherID: it.env.PublisherID,
		Sequence:    it.env.Sequence,
		InstanceID:  it.env.InstanceID,
		PublishedAt: time.Unix(0, it.env.PublishedAt),
		Codec:       it.codec,
		Payload:     it.env.Payload,
		TraceParent: it.traceParent,
	}, true
}
