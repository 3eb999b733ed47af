package events_test

import (
	"context"
	"strings"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/events"
	"github.com/loomrt/loom/internal/testutil"
)

// TestAReceivedEventsSpanLinksToItsPublishersSpan: on the transports with
// headers, Publish makes a producer span (the child of the caller's) whose
// context reaches the subscriber: its consumer span links to it and the
// Event carries its traceparent.
func TestAReceivedEventsSpanLinksToItsPublishersSpan(t *testing.T) {
	for _, transport := range []string{"nats", "jetstream"} {
		t.Run(transport, func(t *testing.T) {
			rec := tracetest.NewSpanRecorder()
			tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
			defer tp.Shutdown(context.Background())
			s := newSystem(t, transport)
			rt := s.Runtime(loom.WithTracerProvider(tp))
			scope := events.Scope{Namespace: "traced"}
			sub := subscribe[string](t, rt, scope, "t")
			pub := publisher[string](t, rt, scope, "t")
			ctx, parent := tp.Tracer("test").Start(t.Context(), "request")
			if err := pub.Publish(ctx, "hello"); err != nil {
				t.Fatal(err)
			}
			parent.End()
			var ev events.Event[string]
			for e, err := range sub.Events(t.Context()) {
				if err != nil {
					t.Fatal(err)
				}
				ev = e
				break
			}
			var send, recv sdktrace.ReadOnlySpan
			for _, sp := range rec.Ended() {
				switch sp.SpanKind() {
				case trace.SpanKindProducer:
					send = sp
				case trace.SpanKindConsumer:
					recv = sp
				}
			}
			if send == nil || recv == nil {
				t.Fatalf("spans: producer %v, consumer %v", send, recv)
			}
			if send.Parent().SpanID() != parent.SpanContext().SpanID() {
				t.Errorf("the publish span's parent is %s, want the caller's %s", send.Parent().SpanID(), parent.SpanContext().SpanID())
			}
			if l := recv.Links(); len(l) != 1 || l[0].SpanContext.SpanID() != send.SpanContext().SpanID() || l[0].SpanContext.TraceID() != send.SpanContext().TraceID() {
				t.Errorf("the receive span's links %v, want the publish span %s", l, send.SpanContext().SpanID())
			}
			if want := loom.TraceParent(trace.ContextWithSpanContext(context.Background(), send.SpanContext())); ev.TraceParent != want {
				t.Errorf("Event.TraceParent %q, want %q", ev.TraceParent, want)
			}
		})
	}
}

// TestEventSpansNameTheirMessagingSystem: the publish and receive spans'
// messaging.system is the system the events travel on: "nats" on core
// NATS and JetStream, "zeromq" on ZeroMQ (direct or through a broker),
// as docs/observability.md says.
func TestEventSpansNameTheirMessagingSystem(t *testing.T) {
	for _, transport := range transports {
		t.Run(transport, func(t *testing.T) {
			want := "nats"
			if strings.HasPrefix(transport, "zmq") {
				want = "zeromq"
			}
			rec := tracetest.NewSpanRecorder()
			tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
			defer tp.Shutdown(context.Background())
			s := newSystem(t, transport)
			rt := s.Runtime(loom.WithTracerProvider(tp))
			scope := events.Scope{Namespace: "system"}
			sub := subscribe[string](t, rt, scope, "t")
			pub := publisher[string](t, rt, scope, "t")
			waitSubscribed(t, pub, 1)
			if err := pub.Publish(t.Context(), "hello"); err != nil {
				t.Fatal(err)
			}
			for _, err := range sub.Events(testutil.Timeout(t, 10*time.Second)) {
				if err != nil {
					t.Fatal(err)
				}
				break
			}
			kinds := map[trace.SpanKind]bool{}
			for _, sp := range rec.Ended() {
				if k := sp.SpanKind(); k != trace.SpanKindProducer && k != trace.SpanKindConsumer {
					continue
				}
				kinds[sp.SpanKind()] = true
				got := ""
				for _, kv := range sp.Attributes() {
					if kv.Key == "messaging.system" {
						got = kv.Value.AsString()
					}
				}
				if got != want {
					t.Errorf("%s span %q: messaging.system = %q, want %q", sp.SpanKind(), sp.Name(), got, want)
				}
			}
			if !kinds[trace.SpanKindProducer] || !kinds[trace.SpanKindConsumer] {
				t.Fatalf("ended spans of kinds %v, want a producer and a consumer span", kinds)
			}
		})
	}
}
