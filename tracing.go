package loom

import (
	"context"
	"fmt"
	"iter"
	"strconv"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/loomrt/loom/internal/otelx"
)

// TracerName is the instrumentation scope of the spans Loom makes.
const TracerName = otelx.ScopeName

// WithTracerProvider makes the runtime trace with tp instead of the global
// TracerProvider (otel.GetTracerProvider).
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(o *options) { o.tp = tp }
}

// tracing is a runtime's access to its tracer.
type tracing struct {
	off   bool                 // tracing.enabled is false
	given trace.TracerProvider // WithTracerProvider
}

// tracer returns the tracer to make spans with, or nil when tracing is
// off: turned off by configuration, or no TracerProvider installed (the
// global one is OpenTelemetry's default, whose spans record nothing).
func (t *tracing) tracer() trace.Tracer {
	if t.off {
		return nil
	}
	return otelx.Tracer(t.given)
}

// Tracer returns the tracer the runtime makes its spans with, or nil when
// tracing is off (tracing.enabled is false, or no TracerProvider is
// installed). Packages built on the runtime (events, workqueue,
// eventbus) trace with it.
func (rt *Runtime) Tracer() trace.Tracer { return rt.trace.tracer() }

// TraceParent returns the W3C traceparent of the span in ctx, or "" if ctx
// holds no valid span context.
func TraceParent(ctx context.Context) string { return otelx.TraceParent(ctx) }

// ParseTraceParent parses a W3C traceparent ("00-<trace id>-<span id>-<flags>")
// into a remote span context. It returns an error naming the value if it
// is not one.
func ParseTraceParent(s string) (trace.SpanContext, error) {
	sc, err := otelx.ParseTraceParent(s)
	if err != nil {
		return sc, fmt.Errorf("loom: %w", err)
	}
	return sc, nil
}

// ContextWithTraceParent returns ctx carrying the remote span context of a
// W3C traceparent, so that spans started from it are its children; ctx
// itself if tp is empty or malformed.
func ContextWithTraceParent(ctx context.Context, tp string) context.Context {
	if tp == "" {
		return ctx
	}
	sc, err := ParseTraceParent(tp)
	if err != nil {
		return ctx
	}
	return trace.ContextWithRemoteSpanContext(ctx, sc)
}

// Span attribute keys Loom adds to the semantic conventions' own.
const (
	AttrInstanceID = attribute.Key("loom.instance_id")
	AttrRequestID  = attribute.Key("loom.request_id")
	AttrCanary     = attribute.Key("loom.health_check")
)

// rpcSystem is the rpc.system.name of Loom's request planes.
var rpcSystem = semconv.RPCSystemNameKey.String("loom")

// traceServer is the built-in interceptor that makes the server span of
// each request, a child of the caller's span (from the traceparent that
// travelled with the request).
func traceServer(rt *Runtime) Interceptor {
	return func(next Engine[any, any]) Engine[any, any] {
		return EngineFunc[any, any](func(ctx context.Context, req any) iter.Seq2[any, error] {
			tr := rt.trace.tracer()
			if tr == nil {
				return next.Generate(ctx, req)
			}
			return func(yield func(any, error) bool) {
				call := CallFromContext(ctx)
				attrs := []attribute.KeyValue{rpcSystem, semconv.RPCMethod(call.Path), AttrInstanceID.String(strconv.FormatUint(call.InstanceID, 16))}
				if call.RequestID != "" {
					attrs = append(attrs, AttrRequestID.String(call.RequestID))
				}
				if call.Canary {
					attrs = append(attrs, AttrCanary.Bool(true))
				}
				ctx, span := tr.Start(ctx, call.Path, trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(attrs...))
				var sp spanned
				defer sp.end(span, call)
				sp.relay(span, next.Generate(ctx, req), yield)
			}
		})
	}
}

// traceClient is the built-in interceptor that makes the client span of
// each call; the call path adds the picked instances and the retries as
// events, and the span's context travels to the server.
func traceClient(rt *Runtime) Interceptor {
	return func(next Engine[any, any]) Engine[any, any] {
		return EngineFunc[any, any](func(ctx context.Context, req any) iter.Seq2[any, error] {
			tr := rt.trace.tracer()
			if tr == nil {
				return next.Generate(ctx, req)
			}
			return func(yield func(any, error) bool) {
				call := CallFromContext(ctx)
				attrs := []attribute.KeyValue{rpcSystem, semconv.RPCMethod(call.Path)}
				if call.RequestID != "" {
					attrs = append(attrs, AttrRequestID.String(call.RequestID))
				}
				ctx, span := tr.Start(ctx, call.Path, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
				call.span = span
				var sp spanned
				defer sp.end(span, call)
				sp.relay(span, next.Generate(ctx, req), yield)
			}
		})
	}
}

// spanned is the state of a request's span while its stream runs.
type spanned struct {
	items   int
	inYield bool // the panic, if any, is the consumer's loop body's
}

// relay passes the items of seq to yield, failing span on an error.
func (sp *spanned) relay(span trace.Span, seq iter.Seq2[any, error], yield func(any, error) bool) {
	for item, err := range seq {
		if err != nil {
			endWithError(span, err)
		} else {
			sp.items++
		}
		sp.inYield = true
		ok := yield(item, err)
		sp.inYield = false
		if !ok {
			return
		}
	}
}

// end ends a request's span. A panic passing through (an interceptor's or
// the handler's, which the serving core recovers, or a client
// interceptor's, which reaches the caller) fails the span first; one of
// the consumer's loop body is not the request's failure.
func (sp *spanned) end(span trace.Span, call *Call) {
	if v := recover(); v != nil {
		switch {
		case sp.inYield:
		case call.Side == ServerSide:
			endWithError(span, atInstance(ErrHandlerPanic, call.Path, call.InstanceID, "%v", v))
		default:
			endWithError(span, fmt.Errorf("loom: client of %s: an interceptor panicked: %v", call.Path, v))
		}
		sp.finish(span, call)
		panic(v)
	}
	sp.finish(span, call)
}

func (sp *spanned) finish(span trace.Span, call *Call) {
	if call.Side == ClientSide && call.InstanceID != 0 {
		span.SetAttributes(AttrInstanceID.String(strconv.FormatUint(call.InstanceID, 16)))
	}
	span.SetAttributes(attribute.Int("loom.items", sp.items))
	span.End()
}

func endWithError(span trace.Span, err error) {
	span.RecordError(err)
	span.SetStatus(codes.Error, err.Error())
	span.SetAttributes(semconv.ErrorTypeKey.String(fmt.Sprintf("%T", err)))
}

// picked records on a traced call which instance an attempt went to.
func (c *Call) picked(cand *Candidate, attempt int) {
	c.InstanceID = cand.ID
	if c.span != nil && c.span.IsRecording() {
		c.span.AddEvent("loom.pick", trace.WithAttributes(
			AttrInstanceID.String(strconv.FormatUint(cand.ID, 16)),
			attribute.String("loom.transport", cand.Transport),
			semconv.ServerAddress(cand.Address),
			attribute.Int("loom.attempt", attempt)))
	}
}

// retried records on a traced call that an attempt was refused before its
// first response and the call moves to another instance.
func (c *Call) retried(cand *Candidate, err error) {
	if c.span != nil && c.span.IsRecording() {
		c.span.AddEvent("loom.retry", trace.WithAttributes(
			AttrInstanceID.String(strconv.FormatUint(cand.ID, 16)),
			attribute.String("loom.error", err.Error())))
	}
}

// tracingSetup is what RegisterTracingSetup registered.
var tracingSetup atomic.Pointer[func(context.Context) (func(context.Context) error, error)]

// RegisterTracingSetup makes Run call setup before the program starts
// and the function it returns at exit. Package otelsetup registers its
// Setup this way when it is imported, so that the SDK and its exporters
// are linked only into programs that ask for them.
func RegisterTracingSetup(setup func(ctx context.Context) (shutdown func(context.Context) error, err error)) {
	tracingSetup.Store(&setup)
}

func setUpTracing(ctx context.Context) (func(context.Context) error, error) {
	if p := tracingSetup.Load(); p != nil {
		return (*p)(ctx)
	}
	return func(context.Context) error { return nil }, nil
}

// flushTracing exports the spans still buffered, for 5 s at most.
func flushTracing(rt *Runtime, stop func(context.Context) error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := stop(ctx); err != nil {
		rt.log.Warn("tracing: flushing spans at exit failed", "err", err)
	}
}
