package events

import (
	"errors"
	"fmt"
	"time"
)

// Event is one event as a subscription delivers it: the decoded value and
// what its envelope says about it.
type Event[T any] struct {
	// Value is the decoded event (for raw subscriptions, the payload).
	Value T
	// Subject is the subject it was published on; see Scope.
	Subject string
	// Topic is its topic.
	Topic string
	// PublisherID names the publisher; Sequence is the event's place in
	// that publisher's sequence, from 0.
	PublisherID uint64
	Sequence    uint64
	// InstanceID is the publishing runtime's instance id (0 if the
	// publisher did not say): the discovery.Instance.ID of the instances
	// it serves, so that an event can be tied to the instance discovery
	// lists.
	InstanceID uint64
	// PublishedAt is the publisher's clock at Publish.
	PublishedAt time.Time
	// Codec is the encoding of Payload: "msgpack" or "json".
	Codec string
	// Payload is the encoded event.
	Payload []byte
	// TraceParent is the W3C traceparent of the publisher's span, when
	// the publisher traced and the transport carries headers (NATS,
	// JetStream); "" otherwise. loom.ContextWithTraceParent continues it.
	TraceParent string
	// StreamSequence is the event's sequence in the JetStream stream
	// (usable with DeliverFrom), 0 on other transports.
	StreamSequence uint64
}

// Scope returns the scope the event was published in, read from Subject.
func (e Event[T]) Scope() Scope {
	s, _, _ := ParseSubject(e.Subject)
	return s
}

// Errors callers branch on.
var (
	// ErrLost is wrapped by every *LossError.
	ErrLost = errors.New("events: events lost")
	// ErrClosed reports a call on a closed publisher or subscription.
	ErrClosed = errors.New("events: closed")
	// ErrTooLarge reports an event above events.max_event_size.
	ErrTooLarge = errors.New("events: event too large")
	// ErrConnectionClosed ends a subscription whose transport connection
	// closed for good (the NATS connection gave up reconnecting).
	ErrConnectionClosed = errors.New("events: connection closed")
)

// errRingClosed ends a subscription's stream without an error.
var errRingClosed = errors.New("events: subscription closed")

// LossError reports events a subscription did not deliver. Lost events
// never arrived: a publisher's sequence skipped from From to From+Lost-1.
// Dropped events arrived but the buffer was full (events.overflow). It
// wraps ErrLost; the stream goes on after it. See WithLossErrors.
type LossError struct {
	// PublisherID is the publisher whose sequence skipped; 0 when the
	// error merges several publishers or reports dropped events only.
	PublisherID uint64
	// Subject is the publisher's subject, when PublisherID is set.
	Subject string
	From    uint64
	Lost    uint64
	Dropped uint64
}

// Error says what was lost, from whom, and where to look.
func (e *LossError) Error() string {
	switch {
	case e.PublisherID != 0 && e.Dropped == 0:
		return fmt.Sprintf("events: %d events lost from publisher %x on %s (sequence %d to %d never arrived)",
			e.Lost, e.PublisherID, e.Subject, e.From, e.From+e.Lost-1)
	case e.Lost == 0:
		return fmt.Sprintf("events: %d events dropped by the full subscription buffer (reader too slow; see events.buffer_size and events.overflow)", e.Dropped)
	}
	return fmt.Sprintf("events: %d events lost in transit and %d dropped by the full subscription buffer", e.Lost, e.Dropped)
}

// Unwrap returns ErrLost.
func (e *LossError) Unwrap() error { return ErrLost }

func (e *LossError) merge(o LossError) {
	if e.PublisherID != o.PublisherID || e.From+e.Lost != o.From {
		e.PublisherID, e.Subject, e.From = 0, "", 0
	}
	e.Lost += o.Lost
	e.Dropped += o.Dropped
}

// Stats counts what a subscription received and what it lost. Every event
// published to it is, at any moment, delivered, dropped, lost or waiting:
// published = Delivered + Dropped + Lost + Buffered (+ malformed), up to the
// events still on the network.
type Stats struct {
	// Received counts events accepted: not duplicates, not malformed.
	Received uint64
	// Delivered counts events handed to the reader.
	Delivered uint64
	// Lost counts events that never arrived: skipped sequence numbers,
	// less those that arrived late after all.
	Lost uint64
	// Reordered counts events that arrived after a later one of the same
	// publisher (delivered, not lost).
	Reordered uint64
	// Duplicates counts events that arrived again; not delivered twice.
	Duplicates uint64
	// Dropped counts events that arrived but were dropped by the full
	// buffer (events.overflow), and on core NATS those the NATS client
	// dropped from its own full buffer in front of it (counted when the
	// client drops them).
	Dropped uint64
	// Malformed counts messages that were not events or whose payload did
	// not decode; skipped.
	Malformed uint64
	// Buffered is the events waiting now: in the buffer, held by a
	// transport waiting for room (Block), and on core NATS in the NATS
	// client's buffer before it. On JetStream it is the events the stream
	// still held for the subscription when it sent the last one delivered
	// (the server's count, as of then).
	Buffered int
	// Publishers is the publishers being tracked now.
	Publishers int
}
