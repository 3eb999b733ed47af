package events

import (
	"context"
	"strconv"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/loomrt/loom/internal/otelx"
)

// Events are traced when the runtime traces (a TracerProvider is
// installed and tracing.enabled): each Publish is a producer span whose
// context travels in the NATS message's traceparent header (core NATS and
// JetStream; ZeroMQ messages have no headers), and each event received is
// a consumer span linked to its publisher's (a link, not a parent: one
// publish reaches many subscribers). Event.TraceParent carries the
// publisher's span context to the reader.

// messagingSystem is the messaging.system attribute of the events
// travelling on transport: ZeroMQ's for ZMQ, NATS's for core NATS and
// JetStream.
func messagingSystem(transport string) attribute.KeyValue {
	if transport == ZMQ {
		return otelx.SystemZeroMQ
	}
	return otelx.SystemNATS
}

// startPublish starts an event's producer span; end records the outcome.
func (c *pubCore) startPublish(ctx context.Context) (context.Context, func(error)) {
	tr := c.rt.Tracer()
	if tr == nil {
		return ctx, nil
	}
	attrs := append(otelx.Operation("send", "publish"), messagingSystem(c.transport), otelx.Destination(c.subject),
		attribute.String("loom.events.transport", c.transport), attribute.Int64("loom.events.sequence", int64(c.seq)))
	ctx, span := tr.Start(ctx, "send "+c.subject, trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(attrs...))
	return ctx, func(err error) {
		if err != nil {
			otelx.Fail(span, err)
		}
		span.End()
	}
}

// traceMsg is the message of an event, with the traceparent of the
// publish span in ctx if there is one.
func traceMsg(ctx context.Context, subject string, data []byte) *nats.Msg {
	m := &nats.Msg{Subject: subject, Data: data}
	if ctx != nil {
		m.Header = otelx.Inject(ctx, nil)
	}
	return m
}

// traceReceive records an event's consumer span, linked to the publisher's.
func (c *subCore) traceReceive(subject string, h nats.Header, env *Envelope) string {
	tp := ""
	if v := h[otelx.TraceParentHeader]; len(v) > 0 {
		tp = v[0]
	}
	tr := c.rt.Tracer()
	if tr == nil {
		return tp
	}
	opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(append(otelx.Operation("receive", "receive"),
		messagingSystem(c.transport), otelx.Destination(subject), attribute.String("loom.events.publisher_id", strconv.FormatUint(env.PublisherID, 16)),
		attribute.Int64("loom.events.sequence", int64(env.Sequence)))...)}
	if sc, ok := otelx.Extract(h); ok {
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: sc}))
	}
	_, span := tr.Start(context.Background(), "receive "+c.pattern, opts...)
	span.End()
	return tp
}
