package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/codec"
	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/metrics"
)

// sender is a transport's publishing side.
type sender interface {
	// send publishes one encoded envelope; it must not keep env.
	send(ctx context.Context, subject string, env []byte) error
	// flush waits until what was published is on its way: at the NATS
	// server, written to each ZeroMQ subscriber, acknowledged by the
	// JetStream stream (returning a failed acknowledgement).
	flush(ctx context.Context) error
	// subscribers returns how many subscribers the transport knows to be
	// listening, or an error wrapping errors.ErrUnsupported.
	subscribers(subject string) (int, error)
	// shutdown waits for what was published to be on its way, up to ctx,
	// if drain is set, then releases the transport's resources.
	shutdown(ctx context.Context, drain bool) error
}

// Publisher publishes events of type T on one topic of one scope. It is
// safe for concurrent use; events get their sequence numbers in the order
// Publish is called.
type Publisher[T any] struct {
	c      *pubCore
	encode func(dst []byte, v T) ([]byte, error)
	raw    bool // encode returns the value itself
}

type pubCore struct {
	rt        *loom.Runtime
	transport string
	subject   string
	scope     Scope
	topic     string
	id        uint64
	instance  uint64
	codec     string
	compact   bool // MessagePack envelopes in the compact form
	maxSize   int
	tx        sender
	metric    *metrics.EventSource
	errors    atomic.Uint64
	published atomic.Uint64
	dropped   atomic.Uint64 // ZeroMQ: events dropped for a slow subscriber
	done      chan struct{} // closed by shutdown

	mu     sync.Mutex
	seq    uint64
	env    []byte
	pay    []byte
	clock  wallClock
	closed bool
}

// wallClock gives the wall time from the monotonic clock, re-anchored on
// the wall clock every clockAnchor: one clock read per event instead of
// time.Now's two. Between anchors it can drift from the wall clock by the
// rate NTP slews it (microseconds at most).
type wallClock struct {
	anchor time.Time
	wall   int64
}

const clockAnchor = 100 * time.Millisecond

// now returns Unix nanoseconds.
func (c *wallClock) now() int64 {
	if d := time.Since(c.anchor); d >= 0 && d < clockAnchor && !c.anchor.IsZero() {
		return c.wall + int64(d)
	}
	c.anchor = time.Now()
	c.wall = c.anchor.UnixNano()
	return c.wall
}

// NewPublisher returns a publisher of events of type T on topic in scope
// (which cannot hold wildcards), on the transport events.transport names.
// The payload is encoded with events.codec (MessagePack by default: T's
// fields use their msgpack or json tags).
//
// ctx bounds the set-up: on ZeroMQ the publisher binds its socket and
// registers it in discovery, on JetStream it makes sure the stream exists.
// The publisher lives until Shutdown, Close or the runtime's shutdown.
func NewPublisher[T any](ctx context.Context, rt *loom.Runtime, scope Scope, topic string, opts ...Option) (*Publisher[T], error) {
	c, err := newPubCore(ctx, rt, scope, topic, opts)
	if err != nil {
		return nil, err
	}
	cd, _ := codec.ByName(c.codec)
	return &Publisher[T]{c: c, encode: func(dst []byte, v T) ([]byte, error) { return cd.Marshal(dst, v) }}, nil
}

// NewRawPublisher returns a publisher of payloads already encoded. With
// the JSON codec each payload must be one JSON value; with MessagePack
// (the default) any bytes go.
func NewRawPublisher(ctx context.Context, rt *loom.Runtime, scope Scope, topic string, opts ...Option) (*Publisher[[]byte], error) {
	c, err := newPubCore(ctx, rt, scope, topic, opts)
	if err != nil {
		return nil, err
	}
	p := &Publisher[[]byte]{c: c, raw: true, encode: func(_ []byte, v []byte) ([]byte, error) { return v, nil }}
	if c.codec == codec.JSONName {
		p.encode = func(_ []byte, v []byte) ([]byte, error) {
			if !json.Valid(v) {
				return nil, fmt.Errorf("events: payload for %s is not valid JSON and the codec is json (use the msgpack codec for opaque bytes)", c.subject)
			}
			return v, nil
		}
	}
	return p, nil
}

func newPubCore(ctx context.Context, rt *loom.Runtime, scope Scope, topic string, opts []Option) (*pubCore, error) {
	if err := scope.validate(false); err != nil {
		return nil, err
	}
	if err := ValidateTopic(topic); err != nil {
		return nil, err
	}
	subject, err := Subject(scope, topic)
	if err != nil {
		return nil, err
	}
	o, err := buildOptions(rt.Config().Events, opts)
	if err != nil {
		return nil, err
	}
	if rt.Context().Err() != nil {
		return nil, fmt.Errorf("%w: publisher on %s: the runtime is shut down", ErrClosed, subject)
	}
	c := &pubCore{
		rt:        rt,
		transport: o.transport, subject: subject, scope: scope, topic: topic,
		id: discovery.RandomID(), instance: rt.ID(), codec: o.codec, compact: o.envelope == EnvelopeCompact,
		maxSize: o.cfg.MaxEventSize,
	}
	switch o.transport {
	case NATS:
		c.tx, err = newNATSSender(ctx, rt, subject)
	case ZMQ:
		c.tx, err = newZMQSender(ctx, rt, c, o)
	case JetStream:
		c.tx, err = newJetStreamSender(ctx, rt, subject, o)
	}
	if err != nil {
		return nil, err
	}
	c.metric = rt.Metrics().EventPublisher(o.transport, subject, func() metrics.EventPublisherCounts {
		return metrics.EventPublisherCounts{Published: c.published.Load(), Errors: c.errors.Load(), SendDropped: c.dropped.Load(), PeersRefused: c.peersRefused()}
	})
	// The runtime's shutdown ends the publisher, and waits for it.
	c.done = make(chan struct{})
	err = rt.Go("events publisher "+subject, func(ctx context.Context) error {
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			return c.shutdown(sctx, true)
		case <-c.done:
			return nil
		}
	})
	if err != nil {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = c.shutdown(sctx, true)
		return nil, fmt.Errorf("%w: publisher on %s: the runtime is shut down: %w", ErrClosed, subject, err)
	}
	return c, nil
}

// ID returns the publisher's id, as its events' PublisherID.
func (p *Publisher[T]) ID() uint64 { return p.c.id }

// Subject returns the subject the publisher publishes on.
func (p *Publisher[T]) Subject() string { return p.c.subject }

// Transport returns the name of the publisher's transport.
func (p *Publisher[T]) Transport() string { return p.c.transport }

// Publish publishes v. On core NATS and ZeroMQ it returns once the event
// is queued for sending; on JetStream it waits while events.jetstream.
// max_pending publishes await the stream's acknowledgement (back-pressure),
// up to ctx, and reports a failed acknowledgement of an earlier event:
// then it does not send v, and says so (the earlier event's sequence
// number was used, so subscribers count that one as lost; v takes none).
// An event that cannot be encoded or is above events.max_event_size is
// refused with an error and takes no sequence number.
func (p *Publisher[T]) Publish(ctx context.Context, v T) error {
	c := p.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return fmt.Errorf("%w: publisher on %s was shut down", ErrClosed, c.subject)
	}
	payload, err := p.encode(c.pay[:0], v)
	if err != nil {
		c.errors.Add(1)
		return fmt.Errorf("events: publish on %s: %w", c.subject, err)
	}
	if !p.raw {
		c.pay = payload // reuse the buffer; a raw payload is the caller's
	}
	env := Envelope{PublisherID: c.id, InstanceID: c.instance, Sequence: c.seq,
		PublishedAt: c.clock.now(), Topic: c.topic, Payload: payload}
	if c.codec == codec.JSONName {
		c.env = env.AppendJSON(c.env[:0])
	} else if c.compact {
		c.env = env.AppendMsgPackCompact(c.env[:0])
	} else {
		c.env = env.AppendMsgPack(c.env[:0])
	}
	if len(c.env) > c.maxSize {
		c.errors.Add(1)
		return fmt.Errorf("%w: %d bytes encoded on %s, over events.max_event_size (%d)", ErrTooLarge, len(c.env), c.subject, c.maxSize)
	}
	sctx, end := c.startPublish(ctx)
	err = c.tx.send(sctx, c.subject, c.env)
	if end != nil {
		end(err)
	}
	if err != nil {
		c.errors.Add(1)
		return fmt.Errorf("events: publish on %s over %s: %w", c.subject, c.transport, err)
	}
	c.seq++
	c.published.Add(1)
	// Keep big buffers from pinning memory after one large event.
	if cap(c.env) > 256<<10 {
		c.env, c.pay = nil, nil
	}
	return nil
}

// Subscribers returns how many subscribers (or brokers with subscribers)
// are connected and subscribed to the publisher's subject. ZeroMQ
// publishers know; on NATS and JetStream it returns an error wrapping
// errors.ErrUnsupported.
func (p *Publisher[T]) Subscribers() (int, error) { return p.c.tx.subscribers(p.c.subject) }

// WaitForSubscribers waits until at least n subscribers (or a broker with
// subscribers) are connected and subscribed to the publisher's subject, or
// ctx ends. ZeroMQ publishers know their subscribers; on NATS and
// JetStream it returns an error wrapping errors.ErrUnsupported.
func (p *Publisher[T]) WaitForSubscribers(ctx context.Context, n int) error {
	for {
		got, err := p.c.tx.subscribers(p.c.subject)
		if err != nil {
			return err
		}
		if got >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("events: %d of %d subscribers on %s: %w", got, n, p.c.subject, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Flush waits, up to ctx, until the events published so far are on their
// way: flushed to the NATS server, written to every ZeroMQ subscriber's
// connection, or acknowledged by the JetStream stream (it returns the
// error of a failed acknowledgement). A NATS user without publish
// permission on the subject is told here: on core NATS the server's
// refusal of events published since the last Flush (the server reports
// it only to the connection, so Publish, which does not wait, cannot
// see it); on JetStream, when ctx ends before a refused event's
// acknowledgement, which never comes.
func (p *Publisher[T]) Flush(ctx context.Context) error {
	c := p.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return fmt.Errorf("%w: publisher on %s was shut down", ErrClosed, c.subject)
	}
	if err := c.tx.flush(ctx); err != nil {
		return fmt.Errorf("events: flush publisher on %s: %w", c.subject, err)
	}
	return nil
}

// Shutdown stops the publisher gracefully. It waits, up to ctx, for the
// events already published to leave: flushed to the NATS server, written
// to every ZeroMQ subscriber's connection, or acknowledged by the
// JetStream stream (it returns the error of a failed acknowledgement).
// Then a ZeroMQ publisher leaves discovery and closes its socket. Publish
// fails afterwards; calling Shutdown or Close again returns nil.
func (p *Publisher[T]) Shutdown(ctx context.Context) error {
	return p.c.shutdown(ctx, true)
}

// Close stops the publisher now, without waiting for the events already
// published: those still in a ZeroMQ send queue are dropped, JetStream
// acknowledgements still awaited are no longer reported (core NATS has
// handed its events to the runtime's connection, which sends them). A
// ZeroMQ publisher leaves discovery and closes its socket. Publish fails
// afterwards; calling Shutdown or Close again returns nil.
func (p *Publisher[T]) Close() error {
	return p.c.shutdown(context.Background(), false)
}

// peersRefused is what a ZeroMQ publisher's socket refused; 0 elsewhere.
func (c *pubCore) peersRefused() uint64 {
	if z, ok := c.tx.(*zmqSender); ok {
		return z.sock.Refused()
	}
	return 0
}

func (c *pubCore) shutdown(ctx context.Context, drain bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	close(c.done)
	defer c.metric.Unregister()
	if err := c.tx.shutdown(ctx, drain); err != nil {
		return fmt.Errorf("events: shut down publisher on %s: %w", c.subject, err)
	}
	return nil
}

var errNoSubscriberCount = fmt.Errorf("events: this transport does not know its subscribers: %w", errors.ErrUnsupported)

// PublisherStats counts what a publisher published.
type PublisherStats struct {
	// Published counts events handed to the transport.
	Published uint64
	// Errors counts Publish calls that failed.
	Errors uint64
	// Dropped counts, on ZeroMQ, events dropped for a subscriber whose
	// send queue was full (events.zmq.send_queue), once per subscriber;
	// that subscriber counts them as lost when a later event arrives.
	Dropped uint64
	// PeersRefused counts, on ZeroMQ, connections closed at accept
	// because the publisher held events.zmq.max_peers.
	PeersRefused uint64
}

// Stats returns what the publisher has published and dropped so far.
func (p *Publisher[T]) Stats() PublisherStats {
	c := p.c
	return PublisherStats{Published: c.published.Load(), Errors: c.errors.Load(), Dropped: c.dropped.Load(), PeersRefused: c.peersRefused()}
}
