package loom

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/loomrt/loom/codec"
	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/internal/plane"
	"github.com/loomrt/loom/internal/planes"
	"github.com/loomrt/loom/internal/supervise"
	"github.com/loomrt/loom/metrics"
)

// Candidate is an instance a Client may route a request to, with the
// number of requests this client has in flight on it.
type Candidate struct {
	discovery.Instance
	key        string
	addr       *planes.Addr // what callers here learned about its address; nil for none
	inFlight   atomic.Int64
	avoidUntil atomic.Int64 // unix nanoseconds; set when its connection failed
}

// InFlight returns how many of this client's requests the instance is
// serving now.
func (c *Candidate) InFlight() int64 { return c.inFlight.Load() }

// ClientOption tunes a Client.
type ClientOption func(*clientOptions)

type clientOptions struct {
	picker       Picker
	wait         time.Duration
	noRetry      bool
	interceptors []Interceptor
	borrow       bool
}

// usable reports whether cand should get new requests: its connection has
// not failed lately, its server has not sent GOAWAY nor stopped answering
// lately. It reads the clock only if cand was avoided at some point, and
// then once per *now (0 until read).
func usable(cand *Candidate, now *int64) bool {
	until := cand.avoidUntil.Load()
	if a := cand.addr; a != nil {
		if a.Draining() {
			return false
		}
		until = max(until, a.StalledUntil())
	}
	if until == 0 {
		return true
	}
	if *now == 0 {
		*now = time.Now().UnixNano()
	}
	return until <= *now
}

// WithPicker routes requests with p instead of the picker named by
// client.router.
func WithPicker(p Picker) ClientOption { return func(o *clientOptions) { o.picker = p } }

// WithWaitTimeout sets how long a call waits for an instance to appear
// before failing with ErrNoInstances (default client.wait_timeout).
func WithWaitTimeout(d time.Duration) ClientOption { return func(o *clientOptions) { o.wait = d } }

// WithBorrowedResponses lets a Client whose response type is []byte yield
// items that alias the transport's receive buffer instead of copies: an
// item is valid only until the loop body that received it returns. It
// saves a copy and an allocation per item of a stream; keep an item by
// copying it (bytes.Clone). Other response types are unaffected.
func WithBorrowedResponses() ClientOption { return func(o *clientOptions) { o.borrow = true } }

// WithoutRetry turns off retrying a request on another instance when the
// first one refuses it before responding (ErrDraining, ErrOverloaded).
func WithoutRetry() ClientOption { return func(o *clientOptions) { o.noRetry = true } }

// Client calls an endpoint. It watches discovery for the endpoint's
// instances and routes each request with its Picker. A Client is an Engine,
// so it can stand wherever a handler can, and it is safe for concurrent use.
type Client[Req, Resp any] struct {
	core    *clientCore
	unaries sync.Pool // *unary[Resp], for Call
}

// clientCore is the untyped part of a Client: the live instance set.
type clientCore struct {
	rt       *Runtime
	planes   *planes.Planes // what calls to other processes go out on
	path     string
	query    discovery.Query
	picker   Picker
	wait     time.Duration
	noRetry  bool
	borrow   bool          // []byte responses alias the receive buffer
	local    bool          // take the local fast path for instances in this process
	maxFrame int           // the largest response item this caller accepts
	cooldown time.Duration // how long a failed instance is avoided
	m        *metrics.ClientEndpoint
	cancel   context.CancelFunc // ends the client's watch

	interceptors []Interceptor // the runtime's, then the client's
	tasks        *supervise.Group

	list atomic.Pointer[[]*Candidate] // sorted by id; replaced, never mutated
	// spared is the last list of usable instances choose offered the
	// picker while some were avoided; replaced, never mutated, nil when
	// list changes.
	spared atomic.Pointer[[]*Candidate]

	mu      sync.Mutex
	cands   map[uint64]*Candidate
	changed chan struct{} // closed and replaced whenever list changes
	closed  bool
	// isClosed mirrors closed for the lock-free path of pick.
	isClosed atomic.Bool
	// draining: Shutdown was called; new calls fail, calls in progress
	// (retries included) go on.
	draining atomic.Bool
}

// NewClient returns a client of ep. It starts watching discovery at once;
// calls wait (up to the wait timeout) for a first instance. Close it when
// done; Runtime.Shutdown closes it too.
func NewClient[Req, Resp any](ctx context.Context, ep *Endpoint, opts ...ClientOption) (*Client[Req, Resp], error) {
	rt := ep.Runtime()
	o := clientOptions{wait: rt.cfg.Client.WaitTimeout, noRetry: !rt.cfg.Client.Retry}
	for _, opt := range opts {
		opt(&o)
	}
	if err := checkInterceptors("WithCallInterceptors", o.interceptors); err != nil {
		return nil, fmt.Errorf("loom: client of %s: %w", ep.path, err)
	}
	if o.picker == nil {
		p, err := PickerByName(rt.cfg.Client.Router)
		if err != nil {
			return nil, err
		}
		o.picker = p
	}
	c := &clientCore{
		rt: rt, planes: rt.planes, path: ep.path, query: ep.query(), picker: o.picker, wait: o.wait, noRetry: o.noRetry, borrow: o.borrow,
		local: rt.cfg.Client.LocalFastPath, cooldown: rt.cfg.Client.FailureCooldown, maxFrame: rt.cfg.RequestPlane.MaxFrameSize,
		m:     rt.metrics.Client(ep.comp.ns.name, ep.comp.name, ep.name),
		cands: make(map[uint64]*Candidate), changed: make(chan struct{}),
		interceptors: append(slices.Clip(rt.clientICs), o.interceptors...),
	}
	c.list.Store(&[]*Candidate{})
	if rt.isClosed() {
		return nil, fmt.Errorf("%w: runtime shut down; cannot create a client of %s", ErrClosed, ep.path)
	}
	// The watch lives as long as the client, not as long as ctx.
	cctx, cancel := context.WithCancel(rt.ctx)
	c.cancel = cancel
	stop := context.AfterFunc(ctx, cancel) // until the watch is set up, ctx bounds it
	events, err := rt.disc.Watch(cctx, c.query)
	if !stop() {
		err = errors.Join(err, ctx.Err())
	}
	if err != nil {
		cancel()
		if rt.isClosed() {
			return nil, fmt.Errorf("%w: runtime shut down; cannot create a client of %s", ErrClosed, ep.path)
		}
		return nil, fmt.Errorf("loom: client of %s: watch discovery: %w", ep.path, err)
	}
	c.tasks = supervise.New(cctx, rt.log, rt.metrics)
	if !rt.addClient(c) {
		cancel()
		return nil, fmt.Errorf("%w: runtime shut down; cannot create a client of %s", ErrClosed, ep.path)
	}
	_ = c.tasks.Go("watch "+ep.path, func(ctx context.Context) error {
		c.follow(ctx, events)
		return nil
	})
	return &Client[Req, Resp]{core: c}, nil
}

// follow applies discovery events to the instance set until ctx ends. If
// the watch ends early (the backend failed), it watches again and replaces
// the set with the new snapshot.
func (c *clientCore) follow(ctx context.Context, events <-chan discovery.Event) {
	backoff := 50 * time.Millisecond
	for {
		wctx, cancel := context.WithCancel(ctx)
		if events == nil {
			var err error
			events, err = c.rt.disc.Watch(wctx, c.query)
			if err != nil {
				cancel()
				c.rt.log.Warn("client watch failed; retrying", "endpoint", c.path, "err", err, "backoff", backoff)
				select {
				case <-ctx.Done():
					return
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, 5*time.Second)
				continue
			}
		}
		snapshot := make(map[uint64]discovery.Instance)
		synced := false
	loop:
		for {
			select {
			case <-ctx.Done():
				cancel()
				return
			case ev, ok := <-events:
				if !ok {
					break loop
				}
				switch {
				case ev.Kind == discovery.Synced:
					synced = true
					c.replace(snapshot)
				case !synced && ev.Kind == discovery.Added:
					snapshot[ev.Instance.ID] = ev.Instance
				case !synced && ev.Kind == discovery.Removed:
					delete(snapshot, ev.Instance.ID)
				case ev.Kind == discovery.Added:
					c.update(ev.Instance, true)
				case ev.Kind == discovery.Removed:
					c.update(ev.Instance, false)
				}
			}
		}
		cancel()
		events = nil
		if ctx.Err() != nil {
			return
		}
		c.rt.log.Warn("client watch ended; watching again", "endpoint", c.path)
	}
}

func (c *clientCore) replace(set map[uint64]discovery.Instance) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id := range c.cands {
		if _, ok := set[id]; !ok {
			c.drop(id)
		}
	}
	for id, inst := range set {
		if !planes.Speaks(inst.Transport) {
			c.drop(id)
			continue
		}
		if old, ok := c.cands[id]; !ok || old.Instance.Address != inst.Address || old.Transport != inst.Transport {
			c.put(c.candidate(inst))
		}
	}
	c.publish()
}

func (c *clientCore) update(inst discovery.Instance, added bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if added && planes.Speaks(inst.Transport) {
		c.put(c.candidate(inst))
	} else {
		c.drop(inst.ID)
	}
	c.publish()
}

// put makes cand the instance of its id, in place of any other; c.mu is
// held.
func (c *clientCore) put(cand *Candidate) {
	c.drop(cand.ID)
	c.cands[cand.ID] = cand
}

// drop forgets instance id and gives back what the planes keep for its
// address; c.mu is held.
func (c *clientCore) drop(id uint64) {
	if old, ok := c.cands[id]; ok {
		delete(c.cands, id)
		c.planes.Release(old.Instance.Address, old.addr)
	}
}

// candidate makes a Candidate of a new record. A new record at an address
// that sent GOAWAY is a new server there, so the address is usable again.
func (c *clientCore) candidate(inst discovery.Instance) *Candidate {
	c.planes.Restarted(inst.Address)
	return &Candidate{Instance: inst, key: inst.Key(), addr: c.planes.Addr(inst.Transport, inst.Address)}
}

// publish stores a new sorted list and wakes waiters; c.mu is held.
func (c *clientCore) publish() {
	list := make([]*Candidate, 0, len(c.cands))
	for _, cand := range c.cands {
		list = append(list, cand)
	}
	slices.SortFunc(list, func(a, b *Candidate) int { return cmp.Compare(a.ID, b.ID) })
	c.list.Store(&list)
	c.spared.Store(nil)
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *clientCore) close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.isClosed.Store(true)
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
	c.cancel()
	_ = c.tasks.Stop(context.Background())
	c.mu.Lock()
	for id := range c.cands {
		c.drop(id)
	}
	c.mu.Unlock()
	c.rt.removeClient(c)
}

// exhaustedError: every instance the client knows was tried. after says
// how long the call then waited for another to appear ("" if it did not).
type exhaustedError struct{ after string }

func (e *exhaustedError) Error() string { return "loom: every instance refused the request" }

// pick chooses an instance, waiting up to c.wait for one to appear. With
// direct set, only that instance will do; tried instances are skipped.
// Once every known instance has been tried, pick waits the same way for
// one it has not tried if await is set, and otherwise fails at once with
// an *exhaustedError.
func (c *clientCore) pick(ctx context.Context, direct uint64, tried []*Candidate, await bool) (*Candidate, error) {
	var timer *time.Timer
	for {
		// The instance list is read without the lock; the lock is taken
		// only to wait for it to change.
		list, changed, closed := *c.list.Load(), (chan struct{})(nil), c.isClosed.Load()
		if len(list) == 0 || direct != 0 || len(tried) > 0 {
			c.mu.Lock()
			list, changed, closed = *c.list.Load(), c.changed, c.closed
			c.mu.Unlock()
		}
		if closed || len(tried) == 0 && c.draining.Load() {
			return nil, fmt.Errorf("%w: client of %s", ErrClosed, c.path)
		}
		if direct != 0 || len(tried) > 0 {
			list = filter(list, direct, tried)
		}
		if len(list) > 0 {
			cand, err := c.choose(ctx, list)
			if err != nil {
				return nil, err
			}
			return cand, nil
		}
		if len(tried) > 0 && (!await || c.wait <= 0) {
			return nil, &exhaustedError{}
		}
		if timer == nil {
			timer = time.NewTimer(c.wait)
			defer timer.Stop()
		}
		select {
		case <-changed:
		case <-ctx.Done():
			if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return nil, ctx.Err()
			}
			if len(tried) > 0 {
				return nil, &exhaustedError{after: "before the caller's deadline"}
			}
			// The caller's deadline came before client.wait_timeout: as
			// far as the caller can tell, there are no instances.
			if direct != 0 {
				return nil, fmt.Errorf("%w: instance %x of %s not found before the caller's deadline (%w; `loom ls %s` lists instances)", ErrNoInstances, direct, c.path, ctx.Err(), c.path)
			}
			return nil, fmt.Errorf("%w: none of %s appeared before the caller's deadline (%w; is a server for it running and registered in the same discovery? `loom ls %s` lists instances)", ErrNoInstances, c.path, ctx.Err(), c.path)
		case <-timer.C:
			if len(tried) > 0 {
				return nil, &exhaustedError{after: "within " + c.wait.String()}
			}
			if direct != 0 {
				return nil, fmt.Errorf("%w: instance %x of %s not found after %s (`loom ls %s` lists instances)", ErrNoInstances, direct, c.path, c.wait, c.path)
			}
			return nil, fmt.Errorf("%w: none of %s appeared within %s (is a server for it running and registered in the same discovery? `loom ls %s` lists instances; client.wait_timeout sets the wait)", ErrNoInstances, c.path, c.wait, c.path)
		}
	}
}

// choose asks the picker among the instances that should get new
// requests (see usable), or among all of them if none should. The picker
// is asked once: a picker that scores every candidate (the KV router)
// would otherwise score them again whenever it chose one to avoid.
func (c *clientCore) choose(ctx context.Context, list []*Candidate) (*Candidate, error) {
	var now int64
	if i := slices.IndexFunc(list, func(c *Candidate) bool { return !usable(c, &now) }); i >= 0 {
		if ok := c.usableOf(list, i, &now); len(ok) > 0 {
			list = ok
		}
	}
	cand, err := c.picker.Pick(ctx, list)
	if err != nil {
		return nil, fmt.Errorf("loom: %s: picker: %w", c.path, err)
	}
	if cand == nil {
		return nil, fmt.Errorf("loom: %s: picker chose no instance", c.path)
	}
	return cand, nil
}

// usableOf returns the usable instances of list, whose first unusable one
// is at i. While an instance is avoided, call after call finds the same
// ones usable: those are then the list it returned last time, so the
// common call allocates nothing here, cooldown or not.
func (c *clientCore) usableOf(list []*Candidate, i int, now *int64) []*Candidate {
	var last []*Candidate
	if p := c.spared.Load(); p != nil {
		last = *p
	}
	n := 0                 // usable instances so far, all equal to last[:n]
	var fresh []*Candidate // set once they differ from last
	for k, cand := range list {
		if k == i || k > i && !usable(cand, now) {
			continue
		}
		if fresh == nil {
			if n < len(last) && last[n] == cand {
				n++
				continue
			}
			fresh = append(make([]*Candidate, 0, len(list)-1), last[:n]...)
		}
		fresh = append(fresh, cand)
	}
	if fresh == nil {
		return last[:n:n]
	}
	// Clipped as the published lists are, so that a picker's append does
	// not write where another call's picker may; a copy of fresh, since
	// storing &fresh would put fresh on the heap on every call.
	spared := slices.Clip(fresh)
	c.spared.Store(&spared)
	return spared
}

func filter(list []*Candidate, direct uint64, tried []*Candidate) []*Candidate {
	out := make([]*Candidate, 0, len(list))
	for _, cand := range list {
		if (direct == 0 || cand.ID == direct) && !slices.Contains(tried, cand) {
			out = append(out, cand)
		}
	}
	return out
}

// Generate routes req to an instance and streams its responses. A call
// refused before its first response (the instance is draining or
// overloaded) is retried on another instance unless WithoutRetry was given;
// a stream that breaks after its first response ends with an error.
func (c *Client[Req, Resp]) Generate(ctx context.Context, req Req) iter.Seq2[Resp, error] {
	return func(yield func(Resp, error) bool) { c.run(ctx, req, 0, yield) }
}

// Direct returns an Engine that sends every request to the instance with
// the given id, waiting for it to appear like Generate does.
func (c *Client[Req, Resp]) Direct(id uint64) Engine[Req, Resp] {
	return EngineFunc[Req, Resp](func(ctx context.Context, req Req) iter.Seq2[Resp, error] {
		return func(yield func(Resp, error) bool) { c.run(ctx, req, id, yield) }
	})
}

func (c *Client[Req, Resp]) run(ctx context.Context, req Req, direct uint64, yield func(Resp, error) bool) {
	if c.core.intercepted() || ctx.Value(outgoingKey{}) != nil {
		c.runIntercepted(ctx, req, direct, yield)
		return
	}
	c.attempts(ctx, req, direct, nil, yield)
}

// attempts routes req to an instance, and to others while they refuse it
// before responding. call is the traced or intercepted call, or nil.
func (c *Client[Req, Resp]) attempts(ctx context.Context, req Req, direct uint64, call *Call, yield func(Resp, error) bool) {
	core := c.core
	var tried []*Candidate
	var last error
	// await: every instance tried so far was draining or unreachable, so
	// one that replaces it is worth waiting for. An overloaded instance
	// is backpressure, which the caller hears at once.
	await := true
	for {
		cand, err := core.pick(ctx, direct, tried, await)
		if err != nil {
			if ex, ok := errors.AsType[*exhaustedError](err); ok {
				err = last
				if ex.after != "" {
					err = fmt.Errorf("%w (no other instance of %s appeared %s; `loom ls %s` lists instances, client.wait_timeout sets the wait)", last, core.path, ex.after, core.path)
				}
			}
			core.count(err)
			var zero Resp
			yield(zero, err)
			return
		}
		if call != nil {
			call.picked(cand, len(tried)+1)
		}
		started, err := c.call(ctx, cand, req, call, yield)
		if err == nil {
			core.m.OK.Inc()
			return
		}
		if !started && retryable(err) && !core.noRetry && direct == 0 && ctx.Err() == nil {
			if call != nil {
				call.retried(cand, err)
			}
			tried = append(tried, cand)
			last = err
			await = await && !errors.Is(err, ErrOverloaded)
			core.m.Retries.Inc()
			continue
		}
		core.count(err)
		var zero Resp
		yield(zero, err)
		return
	}
}

// count records a failed call's outcome.
func (c *clientCore) count(err error) {
	switch {
	case errors.Is(err, ErrNoInstances):
		c.m.NoInstances.Inc()
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		c.m.Cancelled.Inc()
	default:
		c.m.Error.Inc()
	}
}

// call sends req to one instance: in this process directly, elsewhere over
// the transport its record names.
func (c *Client[Req, Resp]) call(ctx context.Context, cand *Candidate, req Req, call *Call, yield func(Resp, error) bool) (bool, error) {
	cand.inFlight.Add(1)
	defer cand.inFlight.Add(-1)
	if c.core.local {
		if v, ok := localServers.Load(cand.key); ok {
			s := v.(*served)
			// The network's limits hold here too: a request above the
			// instance's max frame size, or an item above this caller's,
			// fails as it would between processes.
			// A handler that reuses its items' memory is called
			// through the codec, so that the caller gets copies.
			if eng, ok := s.engine.(Engine[Req, Resp]); ok && !s.reusesItems {
				if n, ok := knownSize(&req); ok && n > s.maxFrame {
					return false, s.requestTooLarge(n)
				}
				return serveTyped(ctx, stopOf(ctx), s, eng, req, yieldFunc[Resp](yield), false, c.core.maxFrame)
			}
			return callRaw(ctx, s, req, c.core.maxFrame, yield)
		}
	}
	started, err, failed := callRemote(ctx, c.core, cand, req, call, yield)
	if failed {
		cand.avoidUntil.Store(time.Now().Add(c.core.cooldown).UnixNano())
	}
	return started, err
}

// callRemote calls an instance in another process. failed reports that the
// instance or its connection failed, rather than the request.
func callRemote[Req, Resp any](ctx context.Context, c *clientCore, cand *Candidate, req Req, call *Call, yield func(Resp, error) bool) (started bool, err error, failed bool) {
	cdc, err := codec.ByName(cand.Codec)
	if err != nil {
		return false, fmt.Errorf("%w: %s instance %x: %v", ErrUnreachable, c.path, cand.ID, err), false
	}
	// The transport copies the request: encode it into a pooled buffer.
	bp := encodeBufs.Get().(*[]byte)
	payload, err := encodeRequest(cdc, (*bp)[:0], &req)
	if err != nil {
		encodeBufs.Put(bp)
		return false, fmt.Errorf("loom: %s: encode request: %w", c.path, err), false
	}
	mr := plane.Request{Path: c.path, Codec: cdc.Name(), Payload: payload}
	call.request(ctx, &mr)
	stream, err := c.planes.Open(ctx, planes.Target{Transport: cand.Transport, Address: cand.Address, TLS: cand.TLS}, mr)
	if cap(payload) <= maxPooledEncodeBuf {
		*bp = payload[:0]
		encodeBufs.Put(bp)
	}
	if err != nil {
		mapped, failed := fromPlane(ctx, c.path, cand.ID, err)
		return false, mapped, failed
	}
	// The stream goes back for reuse when this returns (it is a unary
	// call's largest allocation), unless something else may still hold
	// it: the watch that passes a graceful stop on, once it has fired.
	reuse := true
	// A call made inside another's loop with the same context reports on
	// itself while it runs, then hands the Lookahead back.
	la := lookaheadOf(ctx)
	var outer interface{ Buffered() bool }
	if la != nil {
		outer, la.s = la.s, stream
	}
	defer func() {
		if la != nil {
			la.s = outer
		}
		if r, ok := stream.(interface{ Release() }); ok && reuse {
			r.Release()
		} else {
			stream.Close()
		}
	}()
	if stop := stopOf(ctx); stop != nil {
		unhook := context.AfterFunc(stop, stream.Stop)
		defer func() { reuse = unhook() && reuse }()
	}
	var item, zero Resp
	var target *Resp // the decode target of types without a fast path
	_, isBytes := any((*Resp)(nil)).(*[]byte)
	for {
		b, err := stream.Recv()
		if err == io.EOF {
			return started, nil, false
		}
		if err != nil {
			mapped, failed := fromPlane(ctx, c.path, cand.ID, err)
			return started, mapped, failed
		}
		p, fast := []byte(nil), false
		if isBytes {
			p, fast = codec.Borrow(cdc, b)
		}
		if fast {
			if !c.borrow {
				p = bytes.Clone(p)
			}
			*(*[]byte)(unsafe.Pointer(&item)) = p
		} else {
			// One decode target per stream, zeroed before each decode so
			// that no item shares memory with the last.
			if target == nil {
				target = new(Resp)
			}
			*target = zero
			if err := cdc.Unmarshal(b, target); err != nil {
				stream.Cancel()
				return started, fmt.Errorf("loom: %s instance %x: response does not decode as %T: %w", c.path, cand.ID, item, err), false
			}
			item = *target
		}
		started = true
		if !yield(item, nil) {
			stream.Cancel()
			return started, nil, false
		}
	}
}

// encodeRequest appends req encoded in cdc to dst; a []byte request skips
// the interface conversion that would allocate.
func encodeRequest[Req any](cdc codec.Codec, dst []byte, req *Req) ([]byte, error) {
	if _, ok := any((*Req)(nil)).(*[]byte); ok {
		if out, ok := codec.AppendBytes(cdc, dst, *(*[]byte)(unsafe.Pointer(req))); ok {
			return out, nil
		}
	}
	return marshalCopy(cdc, dst, *req)
}

// marshalCopy encodes a copy of req: handing the encoder the caller's
// own variable would move it to the heap on every call, fast path or not.
func marshalCopy[Req any](cdc codec.Codec, dst []byte, req Req) ([]byte, error) {
	return cdc.Marshal(dst, &req)
}

var errConsumerStopped = errors.New("loom: consumer stopped reading")

// callRaw calls a handler in this process whose types differ from the
// caller's, through the endpoint's codec, as the network would.
func callRaw[Req, Resp any](ctx context.Context, s *served, req Req, maxItem int, yield func(Resp, error) bool) (bool, error) {
	payload, err := s.codec.Marshal(nil, req)
	if err != nil {
		return false, fmt.Errorf("loom: %s: encode request: %w", s.ep.path, err)
	}
	if len(payload) > s.maxFrame {
		return false, s.requestTooLarge(len(payload))
	}
	started, _, err := s.raw(ctx, stopOf(ctx), s.codec, payload, sendFunc(func(b []byte) error {
		if len(b) > maxItem {
			return s.itemTooLarge(len(b), maxItem)
		}
		var item Resp
		if err := s.codec.Unmarshal(b, &item); err != nil {
			return fmt.Errorf("loom: %s: response does not decode as the caller's type: %w", s.ep.path, err)
		}
		if !yield(item, nil) {
			return errConsumerStopped
		}
		return nil
	}), false)
	if errors.Is(err, errConsumerStopped) {
		err = nil
	}
	return started, err
}

// Instances returns the instances the client currently knows, by id.
func (c *Client[Req, Resp]) Instances() []discovery.Instance {
	list := *c.core.list.Load()
	out := make([]discovery.Instance, len(list))
	for i, cand := range list {
		out[i] = cand.Instance
	}
	return out
}

// WaitForInstances blocks until the client knows at least n instances or
// ctx ends.
func (c *Client[Req, Resp]) WaitForInstances(ctx context.Context, n int) error {
	have, err := c.waitList(ctx, func(list []*Candidate) bool { return len(list) >= n })
	if err != nil && !errors.Is(err, ErrClosed) {
		return fmt.Errorf("loom: %s: %d of %d instances: %w", c.core.path, have, n, err)
	}
	return err
}

// WaitForInstance blocks until the client knows an instance for which ok
// reports true, or ctx ends: an instance with given metadata, one other
// than those that failed, one with a given id. ok is asked about each
// instance the client knows, again every time that list changes.
func (c *Client[Req, Resp]) WaitForInstance(ctx context.Context, ok func(discovery.Instance) bool) error {
	have, err := c.waitList(ctx, func(list []*Candidate) bool {
		for _, cand := range list {
			if ok(cand.Instance) {
				return true
			}
		}
		return false
	})
	if err != nil && !errors.Is(err, ErrClosed) {
		return fmt.Errorf("loom: %s: none of %d instances is the one waited for: %w", c.core.path, have, err)
	}
	return err
}

// waitList blocks until done reports true for the client's list of
// instances, the client is closed, or ctx ends; it returns the length of
// the list it saw last.
func (c *Client[Req, Resp]) waitList(ctx context.Context, done func([]*Candidate) bool) (int, error) {
	for {
		c.core.mu.Lock()
		list, changed, closed := *c.core.list.Load(), c.core.changed, c.core.closed
		c.core.mu.Unlock()
		if done(list) {
			return len(list), nil
		}
		if closed {
			return len(list), fmt.Errorf("%w: client of %s", ErrClosed, c.core.path)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return len(list), ctx.Err()
		}
	}
}

// Shutdown stops the client gracefully: new calls fail with ErrClosed at
// once, and Shutdown waits until the calls in progress on an instance
// have ended, or ctx ends, then stops the client as Close does. It returns
// an error wrapping ctx's if calls were still in progress.
func (c *Client[Req, Resp]) Shutdown(ctx context.Context) error {
	core := c.core
	core.draining.Store(true)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var err error
	for n := core.inFlight(); n > 0; n = core.inFlight() {
		select {
		case <-tick.C:
			continue
		case <-ctx.Done():
			err = fmt.Errorf("loom: client of %s: %d calls still in progress: %w", core.path, n, ctx.Err())
		}
		break
	}
	core.close()
	return err
}

// Close stops the client now: its discovery watch ends and new calls fail
// with ErrClosed. Calls in progress keep the instance they have and end on
// their own, bounded by their contexts; Close does not wait for them.
// Runtime.Shutdown and Runtime.Close close every client of the runtime.
// It returns nil; the error is there so that Client.Close has the
// signature of the Close of the runtime's other handles (subscriptions,
// queues, buses).
func (c *Client[Req, Resp]) Close() error {
	c.core.close()
	return nil
}

// inFlight returns how many calls of the client are on an instance now.
func (c *clientCore) inFlight() int64 {
	var n int64
	for _, cand := range *c.list.Load() {
		n += cand.inFlight.Load()
	}
	return n
}
