package eventbus_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/loomrt/loom/eventbus"
	"github.com/loomrt/loom/internal/testutil"
)

// TestAConsumedMessageIsASpanUnderItsSend: with a TracerProvider installed
// (the EventBus traces with the global one), a send is a producer span,
// the child of the caller's, and the handling of the message in each group
// a consumer span, the send's child.
func TestAConsumedMessageIsASpanUnderItsSend(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	otel.SetTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)))
	modes(t, func(t *testing.T, js bool) {
		ns := startNATS(t, nil)
		b := newBus(t, busConfig(ns, js))
		c := newCollector()
		if err := b.RegisterConsumer("", "traced.topic", "g", c); err != nil {
			t.Fatal(err)
		}
		p, err := b.NewProducer("", "traced.topic", "producers", 1)
		if err != nil {
			t.Fatal(err)
		}
		ctx, parent := otel.Tracer("test").Start(ctxFor(t, 20*time.Second), "request")
		if err := p.Send(ctx, []byte("one")); err != nil {
			t.Fatal(err)
		}
		parent.End()
		var send, process sdktrace.ReadOnlySpan
		testutil.Eventually(t, 10*time.Second, "a send and a process span in the caller's trace", func() bool {
			for _, s := range rec.Ended() {
				if s.SpanContext().TraceID() != parent.SpanContext().TraceID() {
					continue
				}
				switch s.SpanKind() {
				case trace.SpanKindProducer:
					send = s
				case trace.SpanKindConsumer:
					process = s
				}
			}
			return send != nil && process != nil
		})
		if send.Parent().SpanID() != parent.SpanContext().SpanID() || process.Parent().SpanID() != send.SpanContext().SpanID() {
			t.Fatalf("parents: send under %s (want %s), process under %s (want %s)", send.Parent().SpanID(), parent.SpanContext().SpanID(), process.Parent().SpanID(), send.SpanContext().SpanID())
		}
		if send.Name() != "send traced.topic" || process.Name() != "process traced.topic" {
			t.Fatalf("span names %q, %q", send.Name(), process.Name())
		}
	})
}

// TestAHandlingThatPanicsIsAFailedSpan: a handler's panic fails the
// handling like an error does (the consumer recovers it), and its span
// has the error status, on Core NATS and on JetStream.
func TestAHandlingThatPanicsIsAFailedSpan(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	otel.SetTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)))
	modes(t, func(t *testing.T, js bool) {
		ns := startNATS(t, nil)
		b := newBus(t, busConfig(ns, js))
		h := eventbus.HandlerFunc(func(ctx context.Context, msg *eventbus.Message) error { panic("handler exploded") })
		if err := b.RegisterConsumer("", "panics.topic", "g", h); err != nil {
			t.Fatal(err)
		}
		p, err := b.NewProducer("", "panics.topic", "producers", 1)
		if err != nil {
			t.Fatal(err)
		}
		ctx, parent := otel.Tracer("test").Start(ctxFor(t, 20*time.Second), "request")
		if err := p.Send(ctx, []byte("one")); err != nil {
			t.Fatal(err)
		}
		parent.End()
		var process sdktrace.ReadOnlySpan
		testutil.Eventually(t, 10*time.Second, "a process span in the caller's trace", func() bool {
			for _, s := range rec.Ended() {
				if s.SpanContext().TraceID() == parent.SpanContext().TraceID() && s.SpanKind() == trace.SpanKindConsumer {
					process = s
				}
			}
			return process != nil
		})
		if process.Status().Code != codes.Error || !strings.Contains(process.Status().Description, "handler exploded") {
			t.Fatalf("the panicked handling's span has status %v, want the error status naming the panic", process.Status())
		}
	})
}
