package workqueue

import (
	"context"
	"errors"
	"strconv"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/loomrt/loom/internal/jsconsume"
	"github.com/loomrt/loom/internal/otelx"
)

// Jobs are traced with the runtime's tracer for a queue from Open, or the
// global TracerProvider's for one from New, when there is one: each enqueue is a
// producer span whose context travels in the job's traceparent header, and
// each attempt at handling it (Consume, Run) a consumer span, its child,
// with the attempt number and whether the job went to the dead-letter
// stream. A Dequeue caller continues the trace with
// loom.ContextWithTraceParent(ctx, job.Header.Get("traceparent")).

// Span attributes of jobs, beside the messaging semantic conventions.
const (
	attrAttempt      = attribute.Key("loom.attempt")
	attrDeadLettered = attribute.Key("loom.dead_lettered")
	attrQueue        = attribute.Key("loom.queue")
)

// globalTracer is the tracer of a queue made by New: the global
// TracerProvider's, nil when none is installed.
func globalTracer() trace.Tracer { return otelx.Tracer(nil) }

// startEnqueue starts the producer span of a job and puts its context in
// m's headers; end records the outcome. Without a tracer it does nothing.
func (q *Queue[T]) startEnqueue(ctx context.Context, m *nats.Msg) (end func(error)) {
	tr := q.tracer()
	if tr == nil {
		return func(error) {}
	}
	attrs := append(otelx.Operation("send", "enqueue"), otelx.SystemNATS, otelx.Destination(m.Subject), attrQueue.String(q.cfg.Name))
	ctx, span := tr.Start(ctx, "send "+q.cfg.Name, trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(attrs...))
	m.Header = otelx.Inject(ctx, m.Header)
	return func(err error) {
		if err != nil {
			otelx.Fail(span, err)
		}
		span.End()
	}
}

// traced runs one attempt at a job under a consumer span, a child of the
// enqueue's.
func (q *Queue[T]) traced(ctx context.Context, job *Job[T], handle func(context.Context) error) error {
	tr := q.tracer()
	if tr == nil {
		return handle(ctx)
	}
	if sc, ok := otelx.Extract(job.Header); ok {
		ctx = trace.ContextWithRemoteSpanContext(ctx, sc)
	}
	attrs := append(otelx.Operation("process", "handle"), otelx.SystemNATS, otelx.Destination(q.cfg.Subject),
		otelx.ConsumerGroup(q.cfg.Group), otelx.MessageID(strconv.FormatUint(job.Seq, 10)),
		attrQueue.String(q.cfg.Name), attrAttempt.Int(job.Deliveries))
	ctx, span := tr.Start(ctx, "process "+q.cfg.Name, trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(attrs...))
	defer func() {
		// A panic fails the attempt as an error does (the consumer
		// recovers it, further out): the span says so before it ends.
		if v := recover(); v != nil {
			q.endAttempt(span, job, &jsconsume.PanicError{Value: v})
			panic(v)
		}
	}()
	err := handle(ctx)
	q.endAttempt(span, job, err)
	return err
}

// endAttempt ends the span of an attempt at job that ended with err.
func (q *Queue[T]) endAttempt(span trace.Span, job *Job[T], err error) {
	if err != nil {
		otelx.Fail(span, err)
		var te *jsconsume.TerminalError
		dead := errors.As(err, &te) || job.Deliveries >= q.cfg.MaxDeliver
		span.SetAttributes(attrDeadLettered.Bool(dead))
		if dead {
			span.AddEvent("loom.dead_letter", trace.WithAttributes(attribute.String("loom.error", err.Error())))
		}
	}
	span.End()
}
