package events

import (
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/loomrt/loom/codec"
	"github.com/loomrt/loom/config"
)

// Transport names, the values of events.transport.
const (
	NATS      = "nats"      // core NATS: the default
	ZMQ       = "zmq"       // ZeroMQ, direct or through a broker
	JetStream = "jetstream" // durable, on a JetStream stream
)

// Overflow is what a subscription does when its buffer is full
// (events.overflow).
type Overflow string

// The overflow policies.
const (
	// DropOldest drops the oldest buffered event to make room, and counts
	// it: a slow reader sees the newest events. The default.
	DropOldest Overflow = "drop_oldest"
	// DropNewest drops the event that does not fit, and counts it.
	DropNewest Overflow = "drop_newest"
	// Block makes the transport wait for room. On core NATS the wait
	// pushes back into the NATS client's own bounded buffer (65536
	// messages, 64 MiB), which drops the newest messages when it fills:
	// they are counted as dropped at once (Stats, metrics), and a gap they
	// leave is not counted again as lost. On ZeroMQ it pushes back to the
	// publisher, which drops for this subscriber past
	// events.zmq.send_queue: the publisher counts them at once, the
	// subscription as lost when the publisher's next event shows the gap.
	// JetStream subscriptions always work this way, and lose nothing.
	Block Overflow = "block"
)

// Option tunes a publisher or a subscription; each says which it applies
// to. Options override the events.* configuration keys.
type Option func(*options)

type deliver uint8

const (
	deliverNew deliver = iota
	deliverAll
	deliverFromSeq
	deliverSince
	deliverLastPerSubject
)

type options struct {
	transport  string
	codec      string
	bufferSize int
	overflow   Overflow
	lossErrors bool
	setDeliver bool
	deliver    deliver
	startSeq   uint64
	startTime  time.Time
	durable    string
	onGap      func(Gap)
	envelope   string
	cfg        config.Events
	bad        []error // option values refused
}

// WithTransport chooses the transport (NATS, ZMQ or JetStream) instead of
// events.transport. Publishers and subscribers must use the same.
func WithTransport(name string) Option { return func(o *options) { o.transport = name } }

// WithCodec encodes a publisher's events with the codec named name
// (codec.MsgPackName or codec.JSONName) instead of events.codec.
// Subscriptions read both and ignore it.
func WithCodec(name string) Option { return func(o *options) { o.codec = name } }

// WithEnvelope writes a publisher's MessagePack envelopes in the form
// named (EnvelopeDynamo or EnvelopeCompact) instead of events.envelope.
// Subscriptions read both and ignore it.
func WithEnvelope(form string) Option { return func(o *options) { o.envelope = form } }

// WithBuffer sets a subscription's buffer size and overflow policy instead
// of events.buffer_size and events.overflow; a size of 0 or an empty
// policy keeps the configured one. A negative size is an error.
func WithBuffer(size int, overflow Overflow) Option {
	return func(o *options) {
		if size != 0 {
			o.bufferSize = size
		}
		if overflow != "" {
			o.overflow = overflow
		}
		if size < 0 {
			o.bad = append(o.bad, fmt.Errorf("events: WithBuffer(%d, ...): a buffer holds at least 1 event (0 keeps events.buffer_size)", size))
		}
	}
}

// WithLossErrors makes a subscription report losses in its stream: a
// *LossError (errors.Is(err, ErrLost)) comes before the first event after
// a gap, and after events the buffer dropped. The stream goes on after it.
// Without it losses are only counted (Stats, metrics) and logged.
func WithLossErrors() Option { return func(o *options) { o.lossErrors = true } }

// Gap describes events a subscription never received from one publisher:
// its sequence went from Expected-1 straight to Got, so the events
// Expected to Got-1 are lost.
type Gap struct {
	// Subject is the subject the event after the gap arrived on.
	Subject string
	// PublisherID is the publisher whose sequence skipped.
	PublisherID uint64
	// InstanceID is the publishing runtime's instance id, or 0.
	InstanceID uint64
	// Expected is the sequence the subscription waited for.
	Expected uint64
	// Got is the sequence that arrived instead (Got > Expected).
	Got uint64
}

// Lost returns how many events the gap skipped.
func (g Gap) Lost() uint64 { return g.Got - g.Expected }

// OnGap makes a subscription call fn for every gap in a publisher's
// sequence, as soon as the event after the gap arrives and before that
// event is delivered: a subscriber that keeps state built from the events
// (a router's index of the workers' caches) learns at once that its copy
// of that publisher's state is incomplete and can fetch a snapshot:
//
//	resync := make(chan events.Gap, 64)
//	sub, err := events.Subscribe[KvEvent](ctx, rt, scope, "kv_events",
//		events.OnGap(func(g events.Gap) {
//			select {
//			case resync <- g: // a goroutine fetches g.InstanceID's snapshot
//			default:          // one already pending is enough
//			}
//		}))
//
// fn runs on the transport's receiving goroutine: it must return quickly
// (hand the work to another goroutine, as above) and must not call the
// subscription. Gaps are counted (Stats.Lost) whether or not fn is set;
// a restarted publisher has a new id and is not a gap.
func OnGap(fn func(Gap)) Option { return func(o *options) { o.onGap = fn } }

// DeliverNew starts a JetStream subscription with the events published
// from now on; the default.
func DeliverNew() Option { return func(o *options) { o.setDeliver, o.deliver = true, deliverNew } }

// DeliverAll starts a JetStream subscription with the oldest event the
// stream still holds.
func DeliverAll() Option { return func(o *options) { o.setDeliver, o.deliver = true, deliverAll } }

// DeliverFrom starts a JetStream subscription at the event with stream
// sequence seq (Event.StreamSequence).
func DeliverFrom(seq uint64) Option {
	return func(o *options) { o.setDeliver, o.deliver, o.startSeq = true, deliverFromSeq, seq }
}

// DeliverSince starts a JetStream subscription with the first event stored
// at or after t.
func DeliverSince(t time.Time) Option {
	return func(o *options) { o.setDeliver, o.deliver, o.startTime = true, deliverSince, t }
}

// DeliverLastPerSubject starts a JetStream subscription with the last event
// of each matching subject (the latest state of each publisher scope),
// then the new ones.
func DeliverLastPerSubject() Option {
	return func(o *options) { o.setDeliver, o.deliver = true, deliverLastPerSubject }
}

// Durable names a JetStream subscription's consumer so that it outlives
// the process: a subscription made again with the same name resumes after
// the last event it acknowledged. Without it the consumer is removed when
// the subscription closes.
func Durable(name string) Option { return func(o *options) { o.durable = name } }

func buildOptions(cfg config.Events, opts []Option) (options, error) {
	o := options{
		transport:  cfg.Transport,
		codec:      cfg.Codec,
		envelope:   cfg.Envelope,
		bufferSize: cfg.BufferSize,
		overflow:   Overflow(cfg.Overflow),
		cfg:        cfg,
	}
	for _, opt := range opts {
		opt(&o)
	}
	if len(o.bad) > 0 {
		return o, o.bad[0]
	}
	if o.deliver == deliverFromSeq && o.startSeq == 0 {
		return o, fmt.Errorf("events: DeliverFrom(0): stream sequences start at 1 (Event.StreamSequence); use DeliverAll for every event the stream holds")
	}
	if o.transport == "" {
		o.transport = NATS
	}
	if o.codec == "" {
		o.codec = codec.MsgPackName
	}
	if o.envelope == "" {
		o.envelope = EnvelopeDynamo
	}
	if o.envelope != EnvelopeDynamo && o.envelope != EnvelopeCompact {
		return o, fmt.Errorf("events: unknown envelope form %q (events.envelope); use %s or %s", o.envelope, EnvelopeDynamo, EnvelopeCompact)
	}
	if o.overflow == "" {
		o.overflow = DropOldest
	}
	if o.bufferSize <= 0 {
		o.bufferSize = 4096
	}
	if o.cfg.MaxEventSize <= 0 {
		o.cfg.MaxEventSize = 1 << 20
	}
	switch o.transport {
	case NATS, ZMQ, JetStream:
	default:
		return o, fmt.Errorf("events: unknown transport %q (events.transport); use %s, %s or %s", o.transport, NATS, ZMQ, JetStream)
	}
	switch o.codec {
	case codec.MsgPackName, codec.JSONName:
	default:
		return o, fmt.Errorf("events: unknown codec %q (events.codec); use %s or %s", o.codec, codec.MsgPackName, codec.JSONName)
	}
	switch o.overflow {
	case DropOldest, DropNewest, Block:
	default:
		return o, fmt.Errorf("events: unknown overflow policy %q (events.overflow); use %s, %s or %s", o.overflow, DropOldest, DropNewest, Block)
	}
	if o.transport != JetStream && (o.setDeliver || o.durable != "") {
		return o, fmt.Errorf("events: Deliver* and Durable options need the %s transport (events.transport is %s); other transports deliver only new events", JetStream, o.transport)
	}
	if o.transport == JetStream {
		if err := validStreamName(o.cfg.JetStream.Stream); err != nil {
			return o, err
		}
	}
	if o.durable != "" {
		if err := validConsumerName(o.durable); err != nil {
			return o, err
		}
	}
	if z := o.cfg.ZMQ; o.transport == ZMQ && (z.BrokerPub == "") != (z.BrokerSub == "") {
		return o, fmt.Errorf("events: events.zmq.broker_pub is %q and events.zmq.broker_sub is %q: set both to go through a broker, or neither for direct", z.BrokerPub, z.BrokerSub)
	}
	return o, nil
}

func validConsumerName(name string) error {
	if name == "" || len(name) > 64 {
		return fmt.Errorf("events: durable name %q: want 1 to 64 characters", name)
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("events: durable name %q: use letters, digits, - and _ only", name)
		}
	}
	return nil
}

// validStreamName checks events.jetstream.stream ("" is the default).
// NATS refuses some names ("nats: invalid stream name") but takes others
// no tool can name: a NUL, a control character, bytes that are not UTF-8.
func validStreamName(name string) error {
	if name == "" {
		return nil
	}
	bad := len(name) > 255 || !utf8.ValidString(name)
	for _, r := range name {
		if unicode.IsSpace(r) || !unicode.IsPrint(r) || strings.ContainsRune(".*>/\\", r) {
			bad = true
		}
	}
	if bad {
		return fmt.Errorf("events: events.jetstream.stream (LOOM_EVENTS_JETSTREAM_STREAM) %q is not a name a JetStream stream can take: use up to 255 letters, digits, - and _ (no whitespace, control characters, '.', '*', '>', '/' or '\\', and valid UTF-8)", name)
	}
	return nil
}
