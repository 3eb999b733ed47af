// Package otelx holds what Loom's planes share to trace with the
// OpenTelemetry API: whether a TracerProvider is installed, and the W3C
// trace context in NATS message headers.
package otelx

import (
	"context"
	"fmt"
	"reflect"
	"strconv"
	"sync/atomic"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope of Loom's spans.
const ScopeName = "github.com/loomrt/loom"

// TraceParentHeader is the header that carries the W3C traceparent on NATS
// messages (the request plane, events, jobs, EventBus messages).
const TraceParentHeader = "traceparent"

// defaultTP is the global provider before a program installs one: its
// spans record nothing, so Loom makes none while it is in place.
var defaultTP = func() trace.TracerProvider {
	tp := otel.GetTracerProvider()
	if fmt.Sprintf("%T", tp) == "*global.tracerProvider" {
		return tp
	}
	return nil
}()

type cached struct {
	tp trace.TracerProvider
	t  trace.Tracer
}

// tracerSlots is how many providers' tracers Tracer keeps: a program may
// trace with several in turn (runtimes each WithTracerProvider, and the
// global one), and a provider's Tracer is too dear to call per span.
const tracerSlots = 8

var (
	tracers  [tracerSlots]atomic.Pointer[cached]
	nextSlot atomic.Uint32 // the slot a new provider takes, round robin
)

// Tracer returns a tracer of tp, or of the global provider when tp is nil;
// nil when that is OpenTelemetry's default (nothing installed), so that
// tracing costs nothing without an SDK. The tracers of the last
// tracerSlots providers are kept: finding one allocates nothing.
func Tracer(tp trace.TracerProvider) trace.Tracer {
	if tp == nil {
		if tp = otel.GetTracerProvider(); tp == defaultTP {
			return nil
		}
	}
	// Only comparable providers are kept, so that comparing one with tp
	// cannot panic.
	for i := range tracers {
		if c := tracers[i].Load(); c != nil && c.tp == tp {
			return c.t
		}
	}
	t := tp.Tracer(ScopeName)
	if reflect.ValueOf(tp).Comparable() {
		tracers[(nextSlot.Add(1)-1)%tracerSlots].Store(&cached{tp: tp, t: t})
	}
	return t
}

// Installed reports whether the global provider is one a program
// installed.
func Installed() bool { return otel.GetTracerProvider() != defaultTP }

// TraceParent formats the span context in ctx as a W3C traceparent; ""
// if there is none.
func TraceParent(ctx context.Context) string {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return ""
	}
	tid, sid := sc.TraceID(), sc.SpanID()
	return "00-" + tid.String() + "-" + sid.String() + "-" + sc.TraceFlags().String()
}

// ParseTraceParent parses a W3C traceparent into a remote span context.
func ParseTraceParent(s string) (trace.SpanContext, error) {
	bad := func(why string) (trace.SpanContext, error) {
		return trace.SpanContext{}, fmt.Errorf("traceparent %q: %s (want 00-<32 hex>-<16 hex>-<2 hex>)", s, why)
	}
	if len(s) < 55 || s[2] != '-' || s[35] != '-' || s[52] != '-' {
		return bad("malformed")
	}
	if s[:2] == "ff" || (s[:2] == "00" && len(s) != 55) || (len(s) > 55 && s[55] != '-') {
		return bad("unsupported version or trailing data")
	}
	if _, err := strconv.ParseUint(s[:2], 16, 8); err != nil {
		return bad("version is not hex")
	}
	tid, err := trace.TraceIDFromHex(s[3:35])
	if err != nil {
		return bad("trace id: " + err.Error())
	}
	sid, err := trace.SpanIDFromHex(s[36:52])
	if err != nil {
		return bad("span id: " + err.Error())
	}
	flags, err := strconv.ParseUint(s[53:55], 16, 8)
	if err != nil {
		return bad("flags are not hex")
	}
	return trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: tid, SpanID: sid, TraceFlags: trace.TraceFlags(flags) & trace.FlagsSampled, Remote: true,
	}), nil
}

// Inject sets h's traceparent from the span in ctx, making h if needed.
func Inject(ctx context.Context, h nats.Header) nats.Header {
	tp := TraceParent(ctx)
	if tp == "" {
		return h
	}
	if h == nil {
		h = nats.Header{}
	}
	h[TraceParentHeader] = []string{tp}
	return h
}

// Extract returns the remote span context of h's traceparent, if valid.
func Extract(h nats.Header) (trace.SpanContext, bool) {
	v := h[TraceParentHeader]
	if len(v) == 0 {
		return trace.SpanContext{}, false
	}
	sc, err := ParseTraceParent(v[0])
	return sc, err == nil
}

// Messaging attributes. The semantic conventions have no well-known
// messaging.system value for NATS or ZeroMQ: these are custom names, in
// lowercase as the well-known ones are.
var (
	SystemNATS   = semconv.MessagingSystemKey.String("nats")
	SystemZeroMQ = semconv.MessagingSystemKey.String("zeromq")
)

// Destination is the messaging.destination.name attribute.
func Destination(subject string) attribute.KeyValue {
	return semconv.MessagingDestinationNameKey.String(subject)
}

// Operation is the messaging.operation.type and .name attributes.
func Operation(typ, name string) []attribute.KeyValue {
	return []attribute.KeyValue{semconv.MessagingOperationTypeKey.String(typ), semconv.MessagingOperationNameKey.String(name)}
}

// ConsumerGroup is the messaging.consumer.group.name attribute.
func ConsumerGroup(name string) attribute.KeyValue {
	return semconv.MessagingConsumerGroupNameKey.String(name)
}

// MessageID is the messaging.message.id attribute.
func MessageID(id string) attribute.KeyValue { return semconv.MessagingMessageIDKey.String(id) }

// Fail records err on span.
func Fail(span trace.Span, err error) {
	span.RecordError(err)
	span.SetStatus(codes.Error, err.Error())
	span.SetAttributes(semconv.ErrorTypeKey.String(fmt.Sprintf("%T", err)))
}
