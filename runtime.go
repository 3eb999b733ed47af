package loom

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"

	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/discovery"
	_ "github.com/loomrt/loom/discovery/memory" // the default backend
	"github.com/loomrt/loom/internal/planes"
	"github.com/loomrt/loom/internal/supervise"
	"github.com/loomrt/loom/metrics"
	"github.com/loomrt/loom/natsconn"
)

// Runtime is one process's connection to a Loom system: its configuration,
// discovery, transports, metrics and lifecycle. It is the root of the
// context tree runtime -> component -> endpoint -> request.
//
// A process usually has one, made by Run or NewRuntime. Several in one
// process (as the demo runs, one per simulated worker) find each other
// through the process-wide memory discovery store, or any shared backend.
type Runtime struct {
	cfg     config.Config
	urlFrom string // where nats.url came from, if loaded here
	id      uint64
	log     *slog.Logger
	disc    discovery.Discovery
	ownDisc bool
	metrics *metrics.Metrics
	ctx     context.Context
	cancel  context.CancelFunc
	tasks   *supervise.Group

	natsMu  sync.Mutex
	ownNATS bool
	// nc is read without natsMu by the probes (live), which must not
	// wait behind a connection being made under it.
	nc atomic.Pointer[nats.Conn]

	planes *planes.Planes // the request planes, started on first use
	paths  pathTable      // the endpoints served here, by path
	status *statusServer
	trace  tracing

	serverICs, clientICs []Interceptor

	started time.Time

	mu         sync.Mutex
	draining   bool // no new endpoints are served
	closed     bool // Shutdown was called
	namespaces map[string]*Namespace
	components map[string]*Component
	clients    map[closer]struct{}
}

// closer is what the runtime closes at shutdown: its clients.
type closer interface{ close() }

// Option configures a Runtime.
type Option func(*options)

type options struct {
	cfg    *config.Config
	load   []config.Option
	disc   discovery.Discovery
	nc     *nats.Conn
	log    *slog.Logger
	id     uint64
	metric *metrics.Metrics
	tp     trace.TracerProvider

	serverICs, clientICs []Interceptor
}

// WithConfig uses cfg instead of loading the configuration from its layers
// (config.Load).
func WithConfig(cfg config.Config) Option { return func(o *options) { o.cfg = &cfg } }

// WithLoadOptions loads the configuration from its layers with opts
// (config.WithValue, say, to set a key whatever the environment says).
// WithConfig takes precedence.
func WithLoadOptions(opts ...config.Option) Option {
	return func(o *options) { o.load = append(o.load, opts...) }
}

// WithDiscovery uses d instead of the backend named by discovery.backend.
// The runtime does not close d.
func WithDiscovery(d discovery.Discovery) Option { return func(o *options) { o.disc = d } }

// WithNATSConn uses nc instead of connecting to nats.url. The runtime does
// not close nc.
func WithNATSConn(nc *nats.Conn) Option { return func(o *options) { o.nc = nc } }

// WithLogger logs to l instead of a logger built from the log.* keys.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithInstanceID sets the runtime's instance id instead of a random one
// (or, on etcd, the lease id). It must be between 1 and 2^53-1.
func WithInstanceID(id uint64) Option { return func(o *options) { o.id = id } }

// WithMetrics records into m instead of a new set, so that several
// runtimes in one process can share one registry.
func WithMetrics(m *metrics.Metrics) Option { return func(o *options) { o.metric = m } }

// NewRuntime starts a runtime. Without options it loads the configuration
// from its layers (see package config) and connects to the discovery
// backend it names; ctx bounds that start-up. The runtime lives until
// Shutdown, not until ctx ends.
func NewRuntime(ctx context.Context, opts ...Option) (*Runtime, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	var warnings []string
	var urlFrom string
	if o.cfg == nil {
		loaded, err := config.Load(o.load...)
		if err != nil {
			return nil, err
		}
		o.cfg = &loaded.Config
		warnings = loaded.Warnings
		urlFrom = loaded.Source("nats.url")
	} else if err := o.cfg.Validate(); err != nil {
		return nil, err
	}
	log := o.log
	if log == nil {
		log = NewLogger(o.cfg.Log)
	}
	for _, w := range warnings {
		log.Warn("config: " + w)
	}
	if err := checkInterceptors("WithServerInterceptors", o.serverICs); err != nil {
		return nil, err
	}
	if err := checkInterceptors("WithClientInterceptors", o.clientICs); err != nil {
		return nil, err
	}
	if o.id > discovery.MaxID {
		return nil, fmt.Errorf("loom: instance id %d is above 2^53-1; JSON clients could not keep it exact", o.id)
	}
	if o.metric == nil {
		o.metric = metrics.New()
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	rt := &Runtime{
		cfg:        *o.cfg,
		urlFrom:    urlFrom,
		log:        log,
		metrics:    o.metric,
		ctx:        rctx,
		cancel:     cancel,
		namespaces: make(map[string]*Namespace),
		components: make(map[string]*Component),
		clients:    make(map[closer]struct{}),
		serverICs:  o.serverICs,
		clientICs:  o.clientICs,
	}
	rt.nc.Store(o.nc)
	rt.trace.given, rt.trace.off = o.tp, !o.cfg.Tracing.Enabled
	if err := rt.openDiscovery(ctx, o.disc); err != nil {
		cancel()
		rt.closeNATS()
		return nil, err
	}
	// The instance id: given, else the discovery's (the etcd lease id),
	// else random.
	rt.id = o.id
	if idd, ok := rt.disc.(interface{ ID() uint64 }); ok && rt.id == 0 {
		rt.id = idd.ID()
	}
	if rt.id == 0 {
		rt.id = discovery.RandomID()
	}
	rt.log = log.With("instance", fmt.Sprintf("%x", rt.id))
	rt.planes = planes.New(planes.Config{
		RequestPlane:    rt.cfg.RequestPlane,
		FailureCooldown: rt.cfg.Client.FailureCooldown,
		ID:              rt.id,
		Logger:          rt.log,
		OnLimit:         rt.metrics.LimitHit,
		OnStall:         rt.metrics.ServerStalled,
		NATS:            rt.NATS,
	}, &rt.paths)
	rt.tasks = supervise.New(rctx, rt.log, rt.metrics)
	rt.started = time.Now()
	if err := rt.startStatus(); err != nil {
		cancel()
		if rt.ownDisc {
			_ = rt.disc.Close()
		}
		rt.closeNATS()
		return nil, err
	}
	return rt, nil
}

// openDiscovery connects to the backend discovery.backend names, unless
// one was given.
func (rt *Runtime) openDiscovery(ctx context.Context, given discovery.Discovery) error {
	dc := rt.cfg.Discovery
	if given != nil {
		rt.disc = given
		return nil
	}
	name := dc.Backend
	if name == "" {
		name = "memory"
	}
	d, err := discovery.OpenBackend(ctx, name, discovery.Env{Config: dc, Logger: rt.log, NATS: rt.NATS})
	if err != nil {
		return err
	}
	rt.disc = d
	rt.ownDisc = true
	return nil
}

// closeNATS closes the NATS connection if the runtime opened it.
func (rt *Runtime) closeNATS() {
	rt.natsMu.Lock()
	defer rt.natsMu.Unlock()
	if nc := rt.nc.Load(); rt.ownNATS && nc != nil {
		// The runtime's own close is no failure: one of a connection
		// reconnecting to a server that is gone (a process stopped while
		// NATS is down) logged "NATS connection closed" as an error, with
		// nats.go's last reconnect error.
		nc.SetClosedHandler(nil)
		nc.SetDisconnectErrHandler(nil)
		nc.Close()
	}
}

// NewLogger builds the slog logger the log.* keys describe, writing to
// standard error.
func NewLogger(c config.Log) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.Level)); err != nil {
		level = slog.LevelInfo
	}
	hopts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(LogHandler(slog.NewJSONHandler(os.Stderr, hopts)))
	}
	return slog.New(LogHandler(slog.NewTextHandler(os.Stderr, hopts)))
}

// ID returns the runtime's instance id, shared by every endpoint it serves.
func (rt *Runtime) ID() uint64 { return rt.id }

// Config returns the runtime's configuration.
func (rt *Runtime) Config() config.Config { return rt.cfg }

// Logger returns the runtime's logger.
func (rt *Runtime) Logger() *slog.Logger { return rt.log }

// Discovery returns the discovery backend the runtime registers in.
func (rt *Runtime) Discovery() discovery.Discovery { return rt.disc }

// Metrics returns the runtime's metrics.
func (rt *Runtime) Metrics() *metrics.Metrics { return rt.metrics }

// Context returns the runtime's root context: done once Shutdown has
// cancelled the work that did not drain.
func (rt *Runtime) Context() context.Context { return rt.ctx }

// Go runs fn in the runtime's supervised group: a panic is recovered,
// logged and counted (loom_background_task_panics_total) instead of taking
// the process down, and Shutdown cancels fn's context and waits for it.
// name labels that counter, whose series starts at 0 when a task of that
// name first starts: name kinds of task ("flush", "watch-config"), not
// each run of one (no request or peer ids in it).
func (rt *Runtime) Go(name string, fn func(ctx context.Context) error) error {
	return rt.tasks.Go(name, fn)
}

// NATS returns the runtime's NATS connection, connecting on first use with
// the nats.* keys (or the connection given with WithNATSConn).
func (rt *Runtime) NATS(ctx context.Context) (*nats.Conn, error) {
	rt.natsMu.Lock()
	defer rt.natsMu.Unlock()
	if nc := rt.nc.Load(); nc != nil {
		return nc, nil
	}
	if rt.ctx.Err() != nil {
		return nil, fmt.Errorf("%w: runtime shut down", ErrClosed)
	}
	nc, err := natsconn.Connect(ctx, rt.cfg.NATS, natsconn.WithLogger(rt.log),
		natsconn.WithMetrics(rt.metrics), natsconn.WithURLSource(rt.urlFrom))
	if err != nil {
		return nil, err
	}
	rt.ownNATS = true
	rt.nc.Store(nc)
	return nc, nil
}

// Namespace returns the namespace called name, checking the name.
func (rt *Runtime) Namespace(name string) (*Namespace, error) {
	if err := discovery.ValidateNamespace(name); err != nil {
		return nil, fmt.Errorf("loom: %w", err)
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if ns, ok := rt.namespaces[name]; ok {
		return ns, nil
	}
	ns := &Namespace{rt: rt, name: name}
	rt.namespaces[name] = ns
	return ns, nil
}

// Endpoint returns the endpoint at path "namespace/component/endpoint".
func (rt *Runtime) Endpoint(path string) (*Endpoint, error) {
	nsName, compName, epName, err := ParsePath(path)
	if err != nil {
		return nil, err
	}
	ns, err := rt.Namespace(nsName)
	if err != nil {
		return nil, err
	}
	comp, err := ns.Component(compName)
	if err != nil {
		return nil, err
	}
	return comp.Endpoint(epName)
}

func (rt *Runtime) component(ns *Namespace, name string) (*Component, error) {
	key := ns.name + "/" + name
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if c, ok := rt.components[key]; ok {
		return c, nil
	}
	if rt.closed {
		return nil, fmt.Errorf("%w: runtime shut down; cannot add component %s", ErrClosed, key)
	}
	ctx, cancel := context.WithCancel(rt.ctx)
	c := &Component{ns: ns, name: name, ctx: ctx, cancel: cancel, endpoints: make(map[string]*Endpoint)}
	rt.components[key] = c
	return c, nil
}

func (rt *Runtime) endpoint(c *Component, name string) (*Endpoint, error) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if e, ok := c.endpoints[name]; ok {
		return e, nil
	}
	ctx, cancel := context.WithCancel(c.ctx)
	e := &Endpoint{comp: c, name: name, path: c.ns.name + "/" + c.name + "/" + name, ctx: ctx, cancel: cancel}
	c.endpoints[name] = e
	return e, nil
}

func (rt *Runtime) isClosed() bool {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.closed
}

// addClient records c, for close to close; it reports false if the
// runtime is shut down.
func (rt *Runtime) addClient(c closer) bool {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.closed {
		return false
	}
	rt.clients[c] = struct{}{}
	return true
}

// removeClient forgets c, which was closed.
func (rt *Runtime) removeClient(c closer) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	delete(rt.clients, c)
}

// claim makes s what ep serves, unless the runtime is shutting down or ep
// is served already.
func (rt *Runtime) claim(ep *Endpoint, s *served) error {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	switch {
	case rt.closed || rt.draining:
		return fmt.Errorf("%w: runtime shutting down; cannot serve %s", ErrClosed, ep.path)
	case ep.served != nil:
		return fmt.Errorf("loom: %s is already served by this runtime (instance %x); start another runtime for another instance", ep.path, rt.id)
	case ep.ctx.Err() != nil:
		return fmt.Errorf("%w: %s was shut down and cannot be served again", ErrClosed, ep.path)
	}
	ep.served = s
	return nil
}

// unclaim undoes claim after serving failed to start.
func (rt *Runtime) unclaim(ep *Endpoint, s *served) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if ep.served == s {
		ep.served = nil
	}
}

// servedBy returns what ep serves, or nil.
func (rt *Runtime) servedBy(ep *Endpoint) *served {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return ep.served
}

// allServed returns every endpoint the runtime serves, and whether it is
// shutting down.
func (rt *Runtime) allServed() (all []*served, stopping bool) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	for _, c := range rt.components {
		for _, e := range c.endpoints {
			if e.served != nil {
				all = append(all, e.served)
			}
		}
	}
	return all, rt.draining || rt.closed
}

// Shutdown shuts the runtime down in phases: every served endpoint stops
// accepting requests (connected callers get GOAWAY) and leaves discovery;
// in-flight requests may finish until ctx ends; those still running are
// then cancelled (Shutdown does not wait for their handlers to return; Run
// does, up to its hard timeout); clients, connection pools and background
// tasks stop; discovery and the NATS connection are closed if the runtime
// opened them. It returns an error if requests had to be cancelled or a
// step failed. Calling it again returns nil at once.
func (rt *Runtime) Shutdown(ctx context.Context) error {
	rt.mu.Lock()
	if rt.closed {
		rt.mu.Unlock()
		return nil
	}
	rt.closed = true
	rt.mu.Unlock()
	err := rt.drain(ctx)
	return errors.Join(err, rt.close())
}

// Close stops the runtime now: it is Shutdown with no grace period.
// Endpoints leave discovery and the requests they are serving are
// cancelled at once, without an error for them; then everything Shutdown
// closes is closed. During a Shutdown, Close cancels the requests that
// Shutdown is waiting for, and returns nil. Calling it again returns nil
// at once.
func (rt *Runtime) Close() error {
	rt.mu.Lock()
	if rt.closed {
		rt.mu.Unlock()
		for _, e := range rt.endpoints() {
			e.cancel()
		}
		return nil
	}
	rt.closed = true
	rt.mu.Unlock()
	err := rt.drainNow()
	return errors.Join(err, rt.close())
}

// endpointsOf returns the endpoints of c.
func (rt *Runtime) endpointsOf(c *Component) []*Endpoint {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	eps := make([]*Endpoint, 0, len(c.endpoints))
	for _, ep := range c.endpoints {
		eps = append(eps, ep)
	}
	return eps
}

// endpoints returns every endpoint of the runtime's components.
func (rt *Runtime) endpoints() []*Endpoint {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	var eps []*Endpoint
	for _, c := range rt.components {
		for _, e := range c.endpoints {
			eps = append(eps, e)
		}
	}
	return eps
}

// drain stops serving: refuse new requests, unregister, GOAWAY, wait for
// in-flight requests until ctx ends, cancel the rest. It runs once; calls
// made by the program (clients) keep working, so that Run can let main
// finish its own calls before close.
func (rt *Runtime) drain(ctx context.Context) error { return rt.drainIn(ctx, false) }

// drainNow is drain with no grace period, for Close.
func (rt *Runtime) drainNow() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return rt.drainIn(ctx, true)
}

func (rt *Runtime) drainIn(ctx context.Context, now bool) error {
	rt.mu.Lock()
	if rt.draining {
		rt.mu.Unlock()
		return nil
	}
	rt.draining = true
	rt.mu.Unlock()
	eps := rt.endpoints()
	// GOAWAY goes out as the drain begins, so connected clients stop
	// sending here before discovery tells them.
	serving := make(chan error, 1)
	go func() {
		err := rt.planes.Shutdown(ctx)
		if now && errors.Is(err, context.Canceled) {
			err = nil // no grace period: closing at once is the point
		}
		serving <- err
	}()
	err := shutdownAll(ctx, eps, now)
	return errors.Join(err, <-serving)
}

// close stops everything the drain left: the context tree, clients, pools,
// background tasks, discovery and NATS.
func (rt *Runtime) close() error {
	rt.mu.Lock()
	rt.closed = true
	clients := make([]closer, 0, len(rt.clients))
	for c := range rt.clients {
		clients = append(clients, c)
	}
	rt.mu.Unlock()
	rt.cancel()
	for _, c := range clients {
		c.close()
	}
	errs := []error{rt.planes.Close(), rt.stopStatus()}
	stopCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	errs = append(errs, rt.tasks.Stop(stopCtx))
	if rt.ownDisc {
		errs = append(errs, rt.disc.Close())
	}
	rt.closeNATS()
	return errors.Join(errs...)
}

// inFlight returns how many requests the runtime's endpoints are serving.
func (rt *Runtime) inFlight() int64 {
	all, _ := rt.allServed()
	var n int64
	for _, s := range all {
		n += s.requests()
	}
	return n
}
