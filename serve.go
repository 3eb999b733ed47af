package loom

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"runtime"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/loomrt/loom/codec"
	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/metrics"
)

// localServers maps an instance record key to the endpoint serving it in
// this process, for the local fast path: a call to an instance found here
// runs the handler directly, with no serialization and no network.
var localServers sync.Map // string -> *served

// ServeOption tunes how an endpoint is served.
type ServeOption func(*serveOptions)

type serveOptions struct {
	codec        string
	metadata     map[string]string
	interceptors []Interceptor
	health       *healthOptions
	reused       bool
}

// WithCodec serves the endpoint with the named codec ("msgpack" or
// "json") instead of request_plane.codec.
func WithCodec(name string) ServeOption { return func(o *serveOptions) { o.codec = name } }

// WithReusedItems declares that the endpoint's handler reuses an item's
// memory once yield returns: it refills one []byte, or overwrites a
// struct's slices, instead of making every item anew, so that a stream
// costs it no allocation per item. Loom then finishes with each item
// before yield returns: the network planes encode it, and a caller in
// this process receives a decoded copy, as a caller in another process
// would, instead of the handler's own value. Server interceptors see the
// handler's values: one that keeps an item past its yield must copy it.
func WithReusedItems() ServeOption { return func(o *serveOptions) { o.reused = true } }

// MetadataRegisteredAt is the metadata key of an instance record that
// holds when it was registered (RFC 3339); `loom ls` shows its age.
const MetadataRegisteredAt = "registered_at"

// MetadataStatusAddr is the metadata key of an instance record that holds
// the host:port of its process's status server (/metrics, /health), when
// status.port turns one on; `loom dashboard` reads each instance's load
// there.
const MetadataStatusAddr = "status_addr"

// WithMetadata adds metadata to the instance's discovery record.
func WithMetadata(md map[string]string) ServeOption {
	return func(o *serveOptions) { o.metadata = maps.Clone(md) }
}

// served is an endpoint being served by one runtime: its discovery record,
// its handler, and the count of requests in flight used to drain it.
type served struct {
	ep     *Endpoint
	inst   discovery.Instance
	key    string
	engine any // Engine[Req, Resp], asserted by typed clients
	// raw serves a request given as bytes in codec c, sending each response
	// item encoded in c; for callers whose types differ from the handler's
	// and for network transports. The payload belongs to the request: a
	// []byte request aliases it. derived is serveTyped's. out counts the
	// bytes sent.
	raw   func(ctx, stop context.Context, c codec.Codec, payload []byte, send sender, derived bool) (started bool, out int, err error)
	codec codec.Codec
	// reusesItems: the handler reuses an item's memory after yield
	// (WithReusedItems), so callers in this process take the raw path.
	reusesItems bool
	// maxFrame is the largest request the instance accepts
	// (request_plane.max_frame_size): the network's limit, which the
	// local fast path applies too.
	maxFrame int
	m        *metrics.Endpoint
	log      *slog.Logger

	interceptors []Interceptor // the runtime's, then the endpoint's
	health       *healthCheck  // nil without WithHealthCheck

	// parents are children of the endpoint's context that network
	// requests' contexts hang from, picked at random: a request's context
	// registers with its parent under the parent's lock (once something
	// waits on it), and one parent would be a lock every such request on
	// every core takes. Each holds s
	// under servedKey, so that a request need not look its path up twice.
	parents       []context.Context
	parentsCancel []context.CancelFunc // called once the endpoint is no longer served

	inFlight   atomic.Int64
	draining   atomic.Bool
	registered atomic.Bool // its record is in discovery
	drainOnce  sync.Once
	drained    chan struct{} // closed once draining with nothing in flight
}

// Serve serves ep with eng in this runtime: the instance is registered in
// discovery (bound to the runtime's lifetime) and callers anywhere can reach
// it. ctx bounds the registration. An endpoint is served at most once per
// runtime; run more runtimes (processes) for more instances.
//
// Each request runs under a context that is a child of ep.Context() with
// the caller's deadline, cancelled when the caller cancels (kill); see
// Stopped for graceful stop. A handler that panics fails that request with
// ErrHandlerPanic; the endpoint keeps serving.
func Serve[Req, Resp any](ctx context.Context, ep *Endpoint, eng Engine[Req, Resp], opts ...ServeOption) error {
	if eng == nil {
		return fmt.Errorf("loom: serve %s: nil engine", ep.path)
	}
	rt := ep.Runtime()
	o := serveOptions{codec: rt.cfg.RequestPlane.Codec}
	for _, opt := range opts {
		opt(&o)
	}
	if err := checkInterceptors("WithServeInterceptors", o.interceptors); err != nil {
		return fmt.Errorf("loom: serve %s: %w", ep.path, err)
	}
	if o.metadata == nil {
		o.metadata = make(map[string]string, 1)
	}
	o.metadata[MetadataRegisteredAt] = time.Now().UTC().Format(time.RFC3339Nano)
	if a := rt.StatusAddr(); a != "" {
		o.metadata[MetadataStatusAddr] = a
	}
	c, err := codec.ByName(o.codec)
	if err != nil {
		return fmt.Errorf("loom: serve %s: %w", ep.path, err)
	}
	s := &served{
		ep: ep,
		inst: discovery.Instance{
			Namespace: ep.comp.ns.name, Component: ep.comp.name, Endpoint: ep.name,
			ID: rt.id, Codec: c.Name(), Metadata: o.metadata,
		},
		engine:      eng,
		reusesItems: o.reused,
		codec:       c,
		maxFrame:    rt.cfg.RequestPlane.MaxFrameSize,
		m:           rt.metrics.Endpoint(ep.comp.ns.name, ep.comp.name, ep.name),
		log:         rt.log.With("endpoint", ep.path),
		drained:     make(chan struct{}),

		interceptors: append(slices.Clip(rt.serverICs), o.interceptors...),
	}
	if o.health != nil {
		if err := s.setHealth(o.health, func(req any) bool { _, ok := req.(Req); return ok }); err != nil {
			return err
		}
	}
	s.key = s.inst.Key()
	s.parents = make([]context.Context, streamParents())
	s.parentsCancel = make([]context.CancelFunc, len(s.parents))
	for i := range s.parents {
		ctx, cancel := context.WithCancel(ep.ctx)
		s.parents[i], s.parentsCancel[i] = context.WithValue(ctx, servedKey{}, s), cancel
	}
	// A request's state is reused by the endpoint's next request: it is
	// the largest of a unary call's allocations, and on two cores each
	// byte a call allocates costs it about half a nanosecond in
	// collections (docs/performance.md, the sixth pass). See rawCall.
	calls := sync.Pool{New: func() any { return new(rawCall[Req, Resp]) }}
	s.raw = func(ctx, stop context.Context, c codec.Codec, payload []byte, send sender, derived bool) (bool, int, error) {
		r := calls.Get().(*rawCall[Req, Resp])
		r.codec, r.send = c, send
		if ps, ok := send.(prefixSender); ok {
			if _, bytes := any((*Resp)(nil)).(*[]byte); bytes {
				var h [8]byte
				if _, ok := codec.AppendBytesHeader(c, h[:0], nil); ok {
					r.ps = ps
				}
			}
		}
		if !decodeBorrowed(c, payload, &r.req) {
			if err := c.Unmarshal(payload, &r.req); err != nil {
				s.m.Refused.Inc()
				return false, 0, &BadRequestError{Path: ep.path, Err: err}
			}
		}
		r.st.out, r.st.raw, r.st.gen = r, r, &r.gen
		started, err := serveWith(&r.st, ctx, stop, s, eng, r.req, derived)
		if err == nil {
			err = r.sendErr
		}
		out := r.out
		r.reset()
		calls.Put(r)
		return started, out, err
	}

	if err := rt.claim(ep, s); err != nil {
		return err
	}
	undo := func() {
		localServers.CompareAndDelete(s.key, s)
		rt.paths.remove(s)
		s.releaseParents()
		rt.unclaim(ep, s)
	}
	transport, addr, tls, err := rt.planes.Serve(ctx)
	if err != nil {
		undo()
		return fmt.Errorf("loom: serve %s: %w", ep.path, err)
	}
	s.inst.Transport, s.inst.Address, s.inst.TLS = transport, addr, tls
	localServers.Store(s.key, s)
	rt.paths.add(s)
	if err := rt.disc.Register(ctx, s.inst); err != nil {
		undo()
		return fmt.Errorf("loom: serve %s: register instance %x: %w", ep.path, rt.id, err)
	}
	s.registered.Store(true)
	if s.health != nil {
		s.health.run = healthRunner(s, eng)
		s.startHealth(rt)
	}
	s.log.Debug("serving", "codec", c.Name())
	return nil
}

// streamParent returns the parent for a network request's context: a
// descendant of the endpoint's context.
func (s *served) streamParent() context.Context {
	return s.parents[rand.Uint32N(uint32(len(s.parents)))]
}

// releaseParents cancels the request parents once nothing runs under
// them (or past the grace period, when the endpoint's context was
// cancelled anyway).
func (s *served) releaseParents() {
	for _, cancel := range s.parentsCancel {
		cancel()
	}
}

// streamParents is how many parents a served endpoint spreads its
// requests' contexts over.
func streamParents() int { return max(8, 4*runtime.GOMAXPROCS(0)) }

// acquire admits one request unless the endpoint is draining.
func (s *served) acquire() bool {
	s.inFlight.Add(1)
	if s.draining.Load() {
		s.release()
		return false
	}
	return true
}

// requests returns how many requests s is serving.
func (s *served) requests() int64 { return s.inFlight.Load() }

// ready reports whether s should receive traffic: registered in
// discovery, and its health check (if any) passing.
func (s *served) ready() (bool, string) {
	if !s.registered.Load() {
		return false, s.ep.path + " is not registered yet"
	}
	if s.health != nil {
		if why := s.health.failing.Load(); why != nil {
			return false, *why
		}
	}
	return true, ""
}

func (s *served) release() {
	if s.inFlight.Add(-1) == 0 && s.draining.Load() {
		s.drainOnce.Do(func() { close(s.drained) })
	}
}

// startDrain refuses new requests. The local fast-path entry stays until
// the drain ends, so that callers who still see the record are refused with
// a retryable error rather than finding nothing.
func (s *served) startDrain() {
	s.draining.Store(true)
	if s.inFlight.Load() == 0 {
		s.drainOnce.Do(func() { close(s.drained) })
	}
}

// requestContext derives a request's context: a child of the endpoint's
// context with the caller's deadline and stop signal, cancelled when the
// caller's context is.
func (s *served) requestContext(caller, stop context.Context) (context.Context, context.CancelFunc) {
	var rctx context.Context
	var cancel context.CancelFunc
	if d, ok := caller.Deadline(); ok {
		rctx, cancel = context.WithDeadline(s.ep.ctx, d)
	} else {
		rctx, cancel = context.WithCancel(s.ep.ctx)
	}
	if stop != nil {
		rctx = context.WithValue(rctx, stopKey{}, stop)
	}
	if caller.Done() == nil {
		return rctx, cancel
	}
	unhook := context.AfterFunc(caller, cancel)
	return rctx, func() { unhook(); cancel() }
}

// yielder receives a served request's items. A pointer to a per-request
// struct satisfies it without an allocation, where a closure would cost
// one per captured variable.
type yielder[Resp any] interface {
	yield(item Resp) bool
}

// yieldFunc adapts a caller's yield function.
type yieldFunc[Resp any] func(Resp, error) bool

func (f yieldFunc[Resp]) yield(item Resp) bool { return f(item, nil) }

// sender takes a request's encoded response items: a network stream, or
// a function for callers in this process.
type sender interface{ Send(p []byte) error }

// prefixSender is a sender that takes an encoder's header and the bytes
// it frames as one item, copying each once (mux.ServerStream).
type prefixSender interface {
	SendPrefixed(prefix, p []byte) error
}

type sendFunc func([]byte) error

func (f sendFunc) Send(p []byte) error { return f(p) }

// rawCall is the state of one request served from bytes, in one
// allocation: decoded request, encode buffer, the stream it sends on, and
// the serving core's state. Once the request is over it serves the
// endpoint's next one (Serve pools them), so nothing the handler can keep
// points into it: the request's context is a separate object, and the
// yield function it was given checks gen, which reset advances, before it
// touches the state.
type rawCall[Req, Resp any] struct {
	gen atomic.Uint64 // requests this state has served
	rawState[Req, Resp]
}

// reset readies r for another request: the state is cleared, the encode
// buffer kept unless it grew large, and a yield of the request just over
// now panics as a late yield does.
func (r *rawCall[Req, Resp]) reset() {
	r.gen.Add(1)
	buf := r.buf
	if cap(buf) > maxPooledEncodeBuf {
		buf = nil
	}
	r.rawState = rawState[Req, Resp]{buf: buf[:0]}
}

type rawState[Req, Resp any] struct {
	st      serving[Req, Resp]
	req     Req
	out     int
	item    Resp // the item being encoded: passed by pointer, so not boxed
	buf     []byte
	sendErr error
	codec   codec.Codec
	send    sender
	// ps is send, when Resp is []byte, codec encodes it as a header and
	// the bytes, and send takes the two: an item is then sent with no
	// encode copy and no write to this struct's pointers (each a write
	// barrier while the garbage collector runs). The header is written
	// in buf.
	ps prefixSender
}

func (r *rawCall[Req, Resp]) yield(item Resp) bool {
	if r.ps != nil {
		if r.buf == nil {
			r.buf = make([]byte, 0, 256)
		}
		b := *(*[]byte)(unsafe.Pointer(&item))
		h, _ := codec.AppendBytesHeader(r.codec, r.buf[:0], b)
		r.out += len(h) + len(b)
		if err := r.ps.SendPrefixed(h, b); err != nil {
			r.sendErr = err
			return false
		}
		return true
	}
	if r.buf == nil {
		r.buf = make([]byte, 0, 256)
	}
	r.item = item
	if r.buf, r.sendErr = r.codec.Marshal(r.buf[:0], &r.item); r.sendErr == nil {
		r.out += len(r.buf)
		r.sendErr = r.send.Send(r.buf)
	}
	var zero Resp
	r.item = zero
	return r.sendErr == nil
}

// A request's encode buffer stays with its reused state (a transport
// copies what it is given, so one buffer serves every item of a request
// and then the next request), unless it grew above this. A client's
// request buffers are pooled alike.
const maxPooledEncodeBuf = 64 << 10

var encodeBufs = sync.Pool{New: func() any { b := make([]byte, 0, 256); return &b }}

// decodeBorrowed decodes a []byte request without copying it, when v is a
// *[]byte and c can: the payload belongs to the request.
func decodeBorrowed[T any](c codec.Codec, payload []byte, v *T) bool {
	p, ok := any(v).(*[]byte)
	if !ok {
		return false
	}
	b, ok := codec.Borrow(c, payload)
	if ok {
		*p = b
	}
	return ok
}

// reqCtx is the context of a network request whose transport context
// already descends from the endpoint's: it adds only the stop signal, in
// one small allocation of its own, so that a handler keeping its context
// past the request keeps nothing the next request reuses.
type reqCtx struct {
	context.Context
	stop context.Context
}

func (c *reqCtx) Value(key any) any {
	if _, ok := key.(stopKey); ok && c.stop != nil {
		return c.stop
	}
	return c.Context.Value(key)
}

// knownSize returns the size of *v where it is known without encoding
// it: the length of a []byte or a string, the payloads that grow large.
func knownSize[T any](v *T) (int, bool) {
	switch p := any(v).(type) {
	case *[]byte:
		return len(*p), true
	case *string:
		return len(*p), true
	}
	return 0, false
}

// requestTooLarge is the local fast path's refusal of a request of n
// bytes, as the network's.
func (s *served) requestTooLarge(n int) error {
	return atInstance(ErrTooLarge, s.ep.path, s.inst.ID, "request of %d bytes is above the instance's max frame size %d (request_plane.max_frame_size)", n, s.maxFrame)
}

// itemTooLarge is the local fast path's failure of a response item of n
// bytes above the caller's limit, as the network's.
func (s *served) itemTooLarge(n, limit int) error {
	return atInstance(ErrTooLarge, s.ep.path, s.inst.ID, "response item of %d bytes is above the caller's max frame size %d (request_plane.max_frame_size)", n, limit)
}

// serving is the state of one request in serveTyped, in one allocation
// (part of a rawCall's, for a request from the network).
type serving[Req, Resp any] struct {
	s       *served
	maxItem int // 0: no limit (the transport applies its own)
	out     yielder[Resp]
	raw     *rawCall[Req, Resp] // out, when it is a request served from bytes: called directly
	// rctx is the context yield checks: the request's, or for a transport
	// context the request's context wraps, that one (the same Err, one
	// call fewer per item).
	rctx context.Context
	// gen, when the state is reused (a rawCall's), is the count of
	// requests it has served: the yield given to the handler checks it.
	gen   *atomic.Uint64
	start int64 // sinceEpoch when the request was admitted
	items int
	// done: the loop over the handler's stream is over, as far as the
	// handler may tell: its yield returned false, or its iterator
	// returned. A yield after that panics, as in a range loop.
	started, inYield, stopped, panicked, done bool
	err                                       error
}

// epoch is the origin of sinceEpoch.
var epoch = time.Now()

// sinceEpoch returns the monotonic time since epoch: one clock read, where
// time.Now takes two (the wall clock too), for durations only.
func sinceEpoch() int64 { return int64(time.Since(epoch)) }

// serveTyped is the one serving core: admission, the request context,
// metrics and panic recovery around eng, yielding each item to out in the
// caller's goroutine. stop is the caller's stop signal, if any. derived
// says that caller is a transport's context already descending from the
// endpoint's, which then serves as the request's context as it is.
// maxItem, for a caller in this process, is the largest []byte or string
// item it accepts, as a transport would check (0: none). It
// reports whether any item was yielded, and the error the stream ended
// with: nil if it completed or the caller stopped reading.
func serveTyped[Req, Resp any](caller, stop context.Context, s *served, eng Engine[Req, Resp], req Req, out yielder[Resp], derived bool, maxItem int) (started bool, err error) {
	return serveWith(&serving[Req, Resp]{maxItem: maxItem, out: out}, caller, stop, s, eng, req, derived)
}

// serveWith is serveTyped with the request's state given: st has out and
// maxItem set, nothing else.
func serveWith[Req, Resp any](st *serving[Req, Resp], caller, stop context.Context, s *served, eng Engine[Req, Resp], req Req, derived bool) (started bool, err error) {
	if !s.acquire() {
		s.m.Refused.Inc()
		return false, atInstance(ErrDraining, s.ep.path, s.inst.ID, "shutting down")
	}
	st.s, st.start = s, sinceEpoch()
	s.m.InFlight.Add(1)
	var rctx context.Context
	cancel := func() {}
	if derived {
		rctx = &reqCtx{Context: caller, stop: stop}
		st.rctx = caller
	} else {
		rctx, cancel = s.requestContext(caller, stop)
		st.rctx = rctx
	}
	outcome := s.m.OK
	defer func() {
		cancel()
		s.m.Items.Add(st.items)
		s.m.Duration.Observe(time.Duration(sinceEpoch() - st.start))
		s.m.InFlight.Add(-1)
		outcome.Inc()
		s.release()
		if s.health != nil && !isCanary(caller) {
			killed := outcome == s.m.Cancelled && !st.started
			s.health.served(outcome == s.m.OK || outcome == s.m.Cancelled && st.started, killed)
		}
	}()

	st.run(rctx, caller, eng, req)

	err = st.err
	switch {
	case st.panicked:
		outcome = s.m.Panic
	case st.stopped:
		outcome = s.m.Cancelled
		err = nil
	case rctx.Err() != nil && (err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)):
		outcome = s.m.Cancelled
		err = s.killError(caller, rctx, st.started, derived)
	case errors.Is(err, ErrHandlerPanic):
		outcome = s.m.Panic
	case errors.Is(err, ErrRefused):
		outcome = s.m.Refused
	case err != nil:
		outcome = s.m.Error
	}
	return st.started, err
}

// run calls the handler's stream with a yield of its own, recovering the
// handler's panics. A range loop over the stream would cost two
// allocations (its body's closure, and the loop state the closure
// shares); this yield captures only st (and, for a reused state, the
// generation it checks).
func (st *serving[Req, Resp]) run(rctx, caller context.Context, eng Engine[Req, Resp], req Req) {
	defer func() {
		if v := recover(); v != nil {
			if st.inYield {
				panic(v) // the caller's loop body panicked: not ours to swallow
			}
			st.panicked = true
			st.err = st.s.handlerPanic(rctx, v)
		}
	}()
	seq := generate(rctx, caller, st.s, eng, req)
	if g := st.gen; g != nil {
		// The state serves other requests once this one is over: a
		// yield kept past it must not reach theirs.
		gen := g.Load()
		seq(func(item Resp, herr error) bool {
			if g.Load() != gen {
				panic(errYieldAfterEnd)
			}
			return st.yield(item, herr)
		})
	} else {
		seq(func(item Resp, herr error) bool { return st.yield(item, herr) })
	}
	st.done = true
}

// errYieldAfterEnd is the panic of a handler that yields after its yield
// returned false or after its stream returned, as a range loop's is.
var errYieldAfterEnd = errors.New("loom: the handler's stream continued iteration after yield returned false or after it returned")

// yield takes one item of the handler's stream.
func (st *serving[Req, Resp]) yield(item Resp, herr error) bool {
	if st.done || st.inYield {
		// inYield: the caller's loop body panicked and the handler's
		// stream recovered it and went on.
		panic(errYieldAfterEnd)
	}
	if herr != nil {
		st.err, st.done = herr, true
		return false
	}
	if st.rctx.Err() != nil {
		st.done = true
		return false // killed: drop what the handler still sends
	}
	if st.maxItem > 0 {
		if n, ok := knownSize(&item); ok && n > st.maxItem {
			st.err, st.done = st.s.itemTooLarge(n, st.maxItem), true
			return false
		}
	}
	if !st.started {
		st.started = true
		st.s.m.FirstResponse.Observe(time.Duration(sinceEpoch() - st.start))
	}
	st.items++
	st.inYield = true
	var ok bool
	if st.raw != nil {
		ok = st.raw.yield(item)
	} else {
		ok = st.out.yield(item)
	}
	st.inYield = false
	if !ok {
		st.stopped, st.done = true, true
		return false
	}
	return true
}

// killError says why a request's context ended: the caller's cancellation
// or deadline, or the endpoint shutting down under it.
func (s *served) killError(caller, rctx context.Context, started, derived bool) error {
	if derived && s.ep.ctx.Err() != nil {
		// The endpoint's context is the transport context's parent, so
		// the caller's error cannot tell the two apart.
		return s.shutDownError(started)
	}
	if err := caller.Err(); err != nil {
		return err
	}
	if errors.Is(rctx.Err(), context.DeadlineExceeded) {
		return context.DeadlineExceeded
	}
	return s.shutDownError(started)
}

func (s *served) shutDownError(started bool) error {
	if started {
		return atInstance(ErrStreamReset, s.ep.path, s.inst.ID, "shut down while serving")
	}
	return atInstance(ErrClosed, s.ep.path, s.inst.ID, "shut down")
}

// handlerPanic logs a handler's panic, recovered with v, and returns the
// request's error. Both recovery points (the serving core's, and the
// innermost interceptor when an endpoint has interceptors) come here, so
// a panic is logged and reported one way.
func (s *served) handlerPanic(ctx context.Context, v any) error {
	s.log.ErrorContext(ctx, "handler panicked", "panic", v, "stack", string(debug.Stack()))
	return atInstance(ErrHandlerPanic, s.ep.path, s.inst.ID, "%v", v)
}

// shutdownAll drains the served endpoints among eps together: refuse new
// requests, unregister, wait for in-flight requests until ctx ends, then
// cancel the rest. With now set (Close), requests in flight are cancelled
// at once and that is no error.
func shutdownAll(ctx context.Context, eps []*Endpoint, now bool) error {
	// Endpoints another shutdown is draining already (the runtime's, when
	// a component shuts down during it) are waited for too, not cancelled
	// at once.
	var all, already []*served
	for _, e := range eps {
		s := e.Runtime().servedBy(e)
		switch {
		case s == nil:
		case s.draining.Load():
			already = append(already, s)
		default:
			all = append(all, s)
		}
	}
	var errs []error
	for _, s := range all {
		s.startDrain()
	}
	// All at once, under one bound: a discovery server that does not
	// answer costs the shutdown one timeout, not one per endpoint.
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	uerrs := make([]error, len(all))
	var wg sync.WaitGroup
	for i, s := range all {
		wg.Go(func() {
			if err := s.ep.Runtime().disc.Unregister(uctx, s.inst); err != nil {
				uerrs[i] = fmt.Errorf("loom: unregister %s instance %x: %w", s.ep.path, s.inst.ID, err)
			}
		})
	}
	wg.Wait()
	cancel()
	errs = append(errs, uerrs...)
	var left int64
	for _, s := range append(all, already...) {
		if now {
			s.ep.cancel()
			continue
		}
		select {
		case <-s.drained:
		case <-ctx.Done():
			left += s.inFlight.Load()
			s.ep.cancel()
		}
	}
	for _, s := range all {
		localServers.CompareAndDelete(s.key, s)
		s.ep.Runtime().paths.remove(s)
		s.releaseParents()
		if s.health != nil {
			s.health.end()
		}
	}
	if left > 0 {
		errs = append(errs, fmt.Errorf("loom: shutdown: %d requests still running after the grace period were cancelled", left))
	}
	return errors.Join(errs...)
}
