package eventbus

import (
	"context"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/loomrt/loom/internal/jsconsume"
	"github.com/loomrt/loom/internal/otelx"
)

// Messages are traced with the runtime's tracer for a bus from Open, or
// the global TracerProvider's for one from New, when there is one: a send is a
// producer span whose context travels in each message's traceparent
// header, and each handling of a message a consumer span, its child, with
// the consumer group and the delivery count.

// globalTracer is the tracer of a bus made by New: the global
// TracerProvider's, nil when none is installed.
func globalTracer() trace.Tracer { return otelx.Tracer(nil) }

// startSend starts the producer span of a send of msgs to topic and puts
// its context in their headers; end records the outcome.
func (b *Bus) startSend(ctx context.Context, topic string, msgs []*nats.Msg) func(error) {
	tr := b.tracer()
	if tr == nil {
		return func(error) {}
	}
	attrs := append(otelx.Operation("send", "send"), otelx.SystemNATS, otelx.Destination(topic),
		attribute.Int("messaging.batch.message_count", len(msgs)))
	ctx, span := tr.Start(ctx, "send "+topic, trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(attrs...))
	for _, m := range msgs {
		m.Header = otelx.Inject(ctx, m.Header)
	}
	return func(err error) {
		if err != nil {
			otelx.Fail(span, err)
		}
		span.End()
	}
}

// traced runs a handler on msg under a consumer span, a child of the
// sender's.
func (b *Bus) traced(ctx context.Context, msg *Message, handle func(context.Context) error) error {
	tr := b.tracer()
	if tr == nil {
		return handle(ctx)
	}
	if sc, ok := otelx.Extract(msg.Header); ok {
		ctx = trace.ContextWithRemoteSpanContext(ctx, sc)
	}
	attrs := append(otelx.Operation("process", "consume"), otelx.SystemNATS, otelx.Destination(msg.Topic),
		otelx.ConsumerGroup(msg.Group), attribute.Int("loom.attempt", max(msg.Deliveries, 1)))
	ctx, span := tr.Start(ctx, "process "+msg.Topic, trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(attrs...))
	defer func() {
		// A panic fails the handling as an error does (the consumer
		// recovers it, further out): the span says so before it ends.
		if v := recover(); v != nil {
			otelx.Fail(span, &jsconsume.PanicError{Value: v})
			span.End()
			panic(v)
		}
	}()
	err := handle(ctx)
	if err != nil {
		otelx.Fail(span, err)
	}
	span.End()
	return err
}
