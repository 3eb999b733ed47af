package loom

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"maps"
	"math/rand/v2"
	"strconv"

	"go.opentelemetry.io/otel/trace"

	"github.com/loomrt/loom/internal/plane"
	"github.com/loomrt/loom/internal/wire"
)

// Interceptor wraps the engine that every request of an endpoint (on the
// server side) or of a client (on the client side) goes through. It is an
// Operator over the one engine shape with untyped requests and responses:
// it sees the request, may change it or refuse it (return Fail(err), with a
// *RefusedError from Refuse for a refusal the caller should see as one),
// reads and adds request metadata through CallFromContext, and sees every
// response item and the end of the stream as it ranges over next's.
//
// The request and items are the endpoint's or the client's own types (an
// interceptor may type-switch on them); one that replaces the request must
// keep its type.
//
// Order, outermost first. Server side: the endpoint's metrics and
// admission, the built-in tracing interceptor, the runtime's interceptors
// (WithServerInterceptors) in the order given, the endpoint's
// (WithServeInterceptors), the built-in panic recovery, the handler.
// Client side: the built-in tracing interceptor, the runtime's
// (WithClientInterceptors), the client's (WithCallInterceptors), then the
// call itself (routing, retries, the transport).
type Interceptor func(next Engine[any, any]) Engine[any, any]

// Side says on which end of a call an interceptor runs.
type Side uint8

// The sides.
const (
	ServerSide Side = iota + 1
	ClientSide
)

func (s Side) String() string {
	switch s {
	case ServerSide:
		return "server"
	case ClientSide:
		return "client"
	}
	return "Side(" + strconv.Itoa(int(s)) + ")"
}

// Call describes the request an interceptor, a handler or a log line is
// about. CallFromContext returns it.
type Call struct {
	// Side is where this Call is seen.
	Side Side
	// Path is the endpoint, "namespace/component/endpoint".
	Path string
	// InstanceID is, on the server, the serving instance's id; on the
	// client, that of the instance the last attempt went to (0 before one
	// is picked).
	InstanceID uint64
	// RequestID identifies the request in both sides' logs: made by the
	// client (or given with WithRequestID), sent with the request.
	RequestID string
	// Header is the request metadata. On the client, interceptors may add
	// keys and they are sent with the request (at most 64 keys of 1 to 255
	// bytes, values up to 65535 bytes); on the server it holds what the
	// caller sent. Never nil.
	Header map[string]string
	// Canary is set on the server for the runtime's own health check
	// requests (see WithHealthCheck).
	Canary bool

	traceParent string     // server: the caller's, as received
	span        trace.Span // client: the call's span, for pick and retry events
}

type callKey struct{}

// CallFromContext returns the Call of the request ctx belongs to: in an
// interceptor, in a handler (on endpoints with interceptors, or while
// tracing is on) and in the calls it makes. It returns a Call with no
// path, and an empty Header, if there is none.
func CallFromContext(ctx context.Context) *Call {
	if c, ok := ctx.Value(callKey{}).(*Call); ok {
		return c
	}
	return &Call{Header: map[string]string{}}
}

func callFrom(ctx context.Context) *Call {
	c, _ := ctx.Value(callKey{}).(*Call)
	return c
}

// outgoing is the metadata a caller put in its context for the calls
// made with it.
type outgoing struct {
	requestID string
	header    map[string]string
}

type outgoingKey struct{}

// WithRequestID returns ctx with id as the request id of the calls made
// with it, instead of a fresh one. An id above 255 bytes fails the calls.
func WithRequestID(ctx context.Context, id string) context.Context {
	o, _ := ctx.Value(outgoingKey{}).(*outgoing)
	n := &outgoing{requestID: id}
	if o != nil {
		n.header = o.header
	}
	return context.WithValue(ctx, outgoingKey{}, n)
}

// WithHeader returns ctx with a request header that calls made with it
// send (client interceptors see it in Call.Header and may change it).
func WithHeader(ctx context.Context, key, value string) context.Context {
	o, _ := ctx.Value(outgoingKey{}).(*outgoing)
	n := &outgoing{header: make(map[string]string, 1)}
	if o != nil {
		n.requestID = o.requestID
		maps.Copy(n.header, o.header)
	}
	n.header[key] = value
	return context.WithValue(ctx, outgoingKey{}, n)
}

// newRequestID returns a random request id: 16 hex digits.
func newRequestID() string {
	return fmt.Sprintf("%016x", rand.Uint64())
}

// WithServerInterceptors adds interceptors that every endpoint the runtime
// serves runs, outermost first, outside the endpoint's own.
func WithServerInterceptors(ics ...Interceptor) Option {
	return func(o *options) { o.serverICs = append(o.serverICs, ics...) }
}

// WithClientInterceptors adds interceptors that every client of the
// runtime runs, outermost first, outside the client's own.
func WithClientInterceptors(ics ...Interceptor) Option {
	return func(o *options) { o.clientICs = append(o.clientICs, ics...) }
}

// WithServeInterceptors adds interceptors that this endpoint runs, inside
// the runtime's, outermost first.
func WithServeInterceptors(ics ...Interceptor) ServeOption {
	return func(o *serveOptions) { o.interceptors = append(o.interceptors, ics...) }
}

// WithCallInterceptors adds interceptors that this client runs, inside
// the runtime's, outermost first.
func WithCallInterceptors(ics ...Interceptor) ClientOption {
	return func(o *clientOptions) { o.interceptors = append(o.interceptors, ics...) }
}

// chain composes interceptors around end, the first outermost. One that
// returns a nil Engine makes the request fail with an error saying so.
func chain(path string, ics []Interceptor, end Engine[any, any]) Engine[any, any] {
	for i := len(ics) - 1; i >= 0; i-- {
		if end = ics[i](end); end == nil {
			err := fmt.Errorf("loom: %s: interceptor %d of %d returned a nil Engine", path, i+1, len(ics))
			return EngineFunc[any, any](func(context.Context, any) iter.Seq2[any, error] { return Fail[any](err) })
		}
	}
	return end
}

// checkInterceptors returns an error naming option if one of ics is nil,
// which would fail every request.
func checkInterceptors(option string, ics []Interceptor) error {
	for i, ic := range ics {
		if ic == nil {
			return fmt.Errorf("loom: %s: interceptor %d of %d is nil", option, i+1, len(ics))
		}
	}
	return nil
}

// intercepted reports whether a request to s takes the intercepted path.
func (s *served) intercepted() bool {
	return len(s.interceptors) > 0 || s.ep.Runtime().trace.tracer() != nil
}

// generate is the hook of the serving core: the handler's stream, through
// the interceptors when there are any (or tracing is on). rctx is the
// request's context, caller the caller's (which holds the Call of a
// network request or of a local caller).
func generate[Req, Resp any](rctx, caller context.Context, s *served, eng Engine[Req, Resp], req Req) iter.Seq2[Resp, error] {
	if !s.intercepted() {
		return eng.Generate(rctx, req)
	}
	call := &Call{Side: ServerSide, Path: s.ep.path, InstanceID: s.inst.ID}
	switch in := callFrom(caller); {
	case in != nil && in.Side == ServerSide: // from the network, or a canary
		call.RequestID, call.Header, call.traceParent, call.Canary = in.RequestID, in.Header, in.traceParent, in.Canary
		rctx = ContextWithTraceParent(rctx, in.traceParent)
	case in != nil: // a client in this process
		call.RequestID, call.Header = in.RequestID, maps.Clone(in.Header)
		if sc := trace.SpanContextFromContext(caller); sc.IsValid() {
			rctx = trace.ContextWithRemoteSpanContext(rctx, sc)
		}
	}
	if call.Header == nil {
		call.Header = map[string]string{}
	}
	rctx = context.WithValue(rctx, callKey{}, call)
	end := EngineFunc[any, any](func(ctx context.Context, r any) iter.Seq2[any, error] {
		return func(yield func(any, error) bool) {
			typed, ok := r.(Req)
			if !ok {
				var want Req
				yield(nil, fmt.Errorf("loom: %s: an interceptor replaced the request with a %T; the handler takes %T", s.ep.path, r, want))
				return
			}
			recovered(ctx, s, func() iter.Seq2[Resp, error] { return eng.Generate(ctx, typed) }, yield)
		}
	})
	eng2 := s.chained(end)
	return func(yield func(Resp, error) bool) {
		for item, err := range eng2.Generate(rctx, req) {
			if err != nil {
				var re *RefusedError
				if errors.As(err, &re) && re.Path == "" {
					re.Path, re.InstanceID = s.ep.path, s.inst.ID
				}
				var zero Resp
				yield(zero, err)
				return
			}
			v, ok := item.(Resp)
			if !ok {
				var zero Resp
				yield(zero, fmt.Errorf("loom: %s: an interceptor sent a %T; the endpoint sends %T", s.ep.path, item, zero))
				return
			}
			if !yield(v, nil) {
				return
			}
		}
	}
}

// chained wraps end in the server's interceptors: tracing, the
// runtime's, the endpoint's.
func (s *served) chained(end Engine[any, any]) Engine[any, any] {
	end = chain(s.ep.path, s.interceptors, end)
	return traceServer(s.ep.Runtime())(end)
}

// recovered is the built-in recovery interceptor, innermost: a handler's
// panic becomes an ErrHandlerPanic item that the interceptors around it
// see (the serving core recovers the interceptors' own).
func recovered[Resp any](ctx context.Context, s *served, gen func() iter.Seq2[Resp, error], yield func(any, error) bool) {
	inYield := false
	defer func() {
		if v := recover(); v != nil {
			if inYield {
				panic(v)
			}
			yield(nil, s.handlerPanic(ctx, v))
		}
	}()
	for item, err := range gen() {
		inYield = true
		ok := yield(item, err)
		inYield = false
		if !ok || err != nil {
			return
		}
	}
}

// intercepted reports whether the client's calls take the intercepted
// path: it has interceptors, or tracing is on.
func (c *clientCore) intercepted() bool {
	return len(c.interceptors) > 0 || c.rt.trace.tracer() != nil
}

// runIntercepted is the hook of a client call: the call through the
// client's interceptors, with a Call that carries the request id and the
// headers to the transport.
func (c *Client[Req, Resp]) runIntercepted(ctx context.Context, req Req, direct uint64, yield func(Resp, error) bool) {
	core := c.core
	call := &Call{Side: ClientSide, Path: core.path}
	if o, ok := ctx.Value(outgoingKey{}).(*outgoing); ok {
		call.RequestID, call.Header = o.requestID, maps.Clone(o.header)
	}
	if call.RequestID == "" {
		call.RequestID = newRequestID()
	}
	if call.Header == nil {
		call.Header = map[string]string{}
	}
	ctx = context.WithValue(ctx, callKey{}, call)
	end := EngineFunc[any, any](func(ctx context.Context, r any) iter.Seq2[any, error] {
		return func(y func(any, error) bool) {
			typed, ok := r.(Req)
			if !ok {
				var want Req
				y(nil, fmt.Errorf("loom: client of %s: an interceptor replaced the request with a %T; the client sends %T", core.path, r, want))
				return
			}
			if err := call.check(); err != nil {
				core.count(err)
				y(nil, err)
				return
			}
			c.attempts(ctx, typed, direct, call, func(resp Resp, err error) bool { return y(resp, err) })
		}
	})
	eng := traceClient(core.rt)(chain(core.path, core.interceptors, end))
	for item, err := range eng.Generate(ctx, req) {
		if err != nil {
			var zero Resp
			yield(zero, err)
			return
		}
		v, ok := item.(Resp)
		if !ok {
			var zero Resp
			yield(zero, fmt.Errorf("loom: client of %s: an interceptor sent a %T; the client receives %T", core.path, item, zero))
			return
		}
		if !yield(v, nil) {
			return
		}
	}
}

// check returns an error naming what of the call's metadata the request
// planes cannot carry. The call then fails at once, on every plane and on
// the local fast path alike: it is the caller's mistake, which no
// instance would accept, not a failure of the instance to retry elsewhere
// and avoid.
func (c *Call) check() error {
	switch {
	case len(c.RequestID) > wire.MaxShortField:
		return fmt.Errorf("loom: client of %s: the request id is %d bytes, above the limit of %d (loom.WithRequestID)", c.Path, len(c.RequestID), wire.MaxShortField)
	case len(c.Header) > wire.MaxHeaders:
		return fmt.Errorf("loom: client of %s: the request has %d headers, above the limit of %d (loom.WithHeader, Call.Header)", c.Path, len(c.Header), wire.MaxHeaders)
	}
	for k, v := range c.Header {
		if len(k) == 0 || len(k) > wire.MaxShortField {
			return fmt.Errorf("loom: client of %s: request header key %q is %d bytes; keys are 1 to %d bytes (loom.WithHeader, Call.Header)", c.Path, k, len(k), wire.MaxShortField)
		}
		if len(v) > wire.MaxHeaderValue {
			return fmt.Errorf("loom: client of %s: request header %q has a value of %d bytes, above the limit of %d (loom.WithHeader, Call.Header)", c.Path, k, len(v), wire.MaxHeaderValue)
		}
	}
	return nil
}

// request fills the metadata fields of a transport request from c.
func (c *Call) request(ctx context.Context, r *plane.Request) {
	if c == nil {
		return
	}
	r.RequestID = c.RequestID
	r.TraceParent = TraceParent(ctx)
	if len(c.Header) > 0 {
		r.Headers = c.Header
	}
}
