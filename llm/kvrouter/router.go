package kvrouter

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/events"
	"github.com/loomrt/loom/llm"
	"github.com/loomrt/loom/metrics"
)

// Router names accepted by New.
const (
	KV          = "kv"
	KVApprox    = "kv_approx"
	RoundRobin  = "round_robin"
	Random      = "random"
	LeastLoaded = "least_loaded"
)

// Names lists the routers New builds, in the order docs list them.
var Names = []string{KV, KVApprox, RoundRobin, Random, LeastLoaded}

// ErrUnknownRouter is wrapped by New's error for a name it does not know.
var ErrUnknownRouter = errors.New("kvrouter: unknown router")

// Config tunes a KV router. The zero value works: every field has a
// default.
type Config struct {
	// Namespace whose workers ({Namespace}/backend) are routed to;
	// default llm.DefaultNamespace.
	Namespace string
	// BlockSize is the tokens per block the prompt is cut into; 0 takes
	// it from the workers' model cards (kv_block_size).
	BlockSize int
	// OverlapWeight weighs the prefill term of the cost against the
	// decode term; 0 means 1. See the package doc for the cost.
	OverlapWeight float64
	// Temperature samples the worker from a softmax over the negated,
	// normalised costs instead of taking the cheapest; 0 takes the
	// cheapest, breaking ties at random.
	Temperature float64
	// ApproxTTL is how long kv_approx counts a routed prompt's blocks as
	// cached by the worker it went to; default 2 minutes.
	ApproxTTL time.Duration
	// RequestTTL is how long a routed request counts as load if Done is
	// never called for it; default 10 minutes.
	RequestTTL time.Duration
	// ResyncTimeout bounds fetching a worker's block set; default 5s.
	ResyncTimeout time.Duration
	// LostAfter is how long a kv_event that a worker's load_metrics say
	// it published (llm.LoadMetrics.KvEventID) may be missing, with none
	// of the router's kv_events waiting to be read, before the router
	// counts it lost and fetches the worker's block set; default 2s.
	LostAfter time.Duration
}

func (c Config) withDefaults() (Config, error) {
	if c.Namespace == "" {
		c.Namespace = llm.DefaultNamespace
	}
	if err := discovery.ValidateNamespace(c.Namespace); err != nil {
		return c, fmt.Errorf("kvrouter: namespace: %w", err)
	}
	switch {
	case c.BlockSize < 0:
		return c, fmt.Errorf("kvrouter: block size %d: use a positive number of tokens, or 0 to read it from the workers' model cards", c.BlockSize)
	case c.OverlapWeight < 0 || math.IsNaN(c.OverlapWeight) || math.IsInf(c.OverlapWeight, 0):
		return c, fmt.Errorf("kvrouter: overlap weight %v: use a finite number >= 0 (0 means 1)", c.OverlapWeight)
	case c.Temperature < 0 || math.IsNaN(c.Temperature) || math.IsInf(c.Temperature, 0):
		return c, fmt.Errorf("kvrouter: temperature %v: use a finite number >= 0 (0 takes the cheapest worker)", c.Temperature)
	}
	if c.OverlapWeight == 0 {
		c.OverlapWeight = 1
	}
	if c.ApproxTTL <= 0 {
		c.ApproxTTL = 2 * time.Minute
	}
	if c.RequestTTL <= 0 {
		c.RequestTTL = 10 * time.Minute
	}
	if c.ResyncTimeout <= 0 {
		c.ResyncTimeout = 5 * time.Second
	}
	if c.LostAfter <= 0 {
		c.LostAfter = 2 * time.Second
	}
	return c, nil
}

// Router is what New returns: an llm.Router with statistics and an owner.
type Router interface {
	llm.Router
	// Stats returns the router's counters and view now.
	Stats() Stats
	// Close stops the router's background work and waits for it.
	Close() error
}

// Stats is what a router reports for metrics and dashboards.
type Stats struct {
	// Name is the router's name (see Names).
	Name string
	// IndexBlocks counts the distinct blocks in the index; IndexEntries
	// the (block, worker) pairs.
	IndexBlocks, IndexEntries int
	// EventsReceived counts the kv_events the router's subscription
	// received; EventsDropped those its transport dropped before the
	// router could read them (on core NATS, when the NATS client's buffer
	// for the subscription was full): each leaves a gap.
	EventsReceived, EventsDropped uint64
	// EventsApplied counts kv_events applied to the index; EventsStale
	// those ignored as already applied or covered by a fetched block set
	// (their id was not new).
	EventsApplied, EventsStale uint64
	// EventsDiscarded counts events found inconsistent with the worker's
	// block set when it was fetched (their ids were beyond it although
	// they came before it), and dropped; EventsMalformed those that
	// llm.KvEvent.Check refused, dropped as if lost.
	EventsDiscarded, EventsMalformed uint64
	// Gaps counts gaps seen in workers' event ids or sequences, events
	// a worker's load report named that never came, and event ids of a
	// worker that two event-plane publishers used; Resyncs
	// the block sets fetched that replaced a worker's view, and
	// ResyncFailures the fetches that failed (retried).
	Gaps, Resyncs, ResyncFailures uint64
	// Decisions counts requests routed; PromptBlocks sums their prompts'
	// full blocks and OverlapBlocks the blocks the chosen workers were
	// expected to hold, so OverlapBlocks/PromptBlocks is the hit rate the
	// router expected.
	Decisions, PromptBlocks, OverlapBlocks uint64
	// Workers describes each worker the router knows, by id.
	Workers []WorkerStats
}

// WorkerStats is the router's view of one worker.
type WorkerStats struct {
	ID uint64
	// Blocks is the blocks the index holds for it; LastEventID the last
	// kv_event applied.
	Blocks      int
	LastEventID uint64
	// Decisions counts requests routed to it; Open those not yet Done.
	Decisions uint64
	Open      int
	// Load is its last load_metrics, if any.
	Load *llm.LoadMetrics `json:",omitempty"`
}

// New returns the router called name: kv (KV-aware, from the workers'
// kv_events), kv_approx (KV-aware without events, from its own
// decisions), or round_robin, random, least_loaded (loom's pickers,
// filtered by model). Its background work runs until Close or the
// runtime's shutdown.
func New(ctx context.Context, rt *loom.Runtime, name string, cfg Config) (Router, error) {
	switch name {
	case KV:
		return NewKV(ctx, rt, cfg)
	case KVApprox:
		return NewApprox(ctx, rt, cfg)
	case RoundRobin, Random, LeastLoaded:
		p, err := loom.PickerByName(name)
		if err != nil {
			return nil, err
		}
		return &plain{name: name, r: llm.PickerRouter(p), decisions: make(map[uint64]uint64)}, nil
	}
	return nil, fmt.Errorf("%w %q: use one of %v", ErrUnknownRouter, name, Names)
}

// plain is a picker router with decision counts.
type plain struct {
	name      string
	r         llm.Router
	mu        sync.Mutex
	decisions map[uint64]uint64
	total     uint64
}

func (p *plain) Pick(ctx context.Context, c []*loom.Candidate) (*loom.Candidate, error) {
	cand, err := p.r.Pick(ctx, c)
	if err == nil && cand != nil {
		p.mu.Lock()
		p.decisions[cand.ID]++
		p.total++
		p.mu.Unlock()
	}
	return cand, err
}

func (p *plain) Done(string) {}

func (p *plain) Close() error { return nil }

func (p *plain) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := Stats{Name: p.name, Decisions: p.total}
	for id, n := range p.decisions {
		s.Workers = append(s.Workers, WorkerStats{ID: id, Decisions: n})
	}
	slices.SortFunc(s.Workers, func(a, b WorkerStats) int { return cmpU(a.ID, b.ID) })
	return s
}

func cmpU(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// KVRouter routes each request to the worker with the lowest cost:
// prefix overlap with the worker's KV cache against its load. See the
// package doc for the cost function.
type KVRouter struct {
	cfg    Config
	rt     *loom.Runtime
	name   string
	events bool // kv: the index follows kv_events; kv_approx: own decisions
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closed atomic.Bool

	// mu guards the index, the worker set and what each worker's state
	// holds of its events and load; bk guards the requests routed and
	// each worker's account of them. A pick reads under mu, then chooses
	// under bk; where both are held, bk is taken first.
	mu      sync.RWMutex
	idx     *index
	workers map[uint64]*workerState
	gone    map[uint64]int64 // recently left discovery: late events ignored
	resyncQ map[uint64]bool
	wakeRes chan struct{}

	bk       sync.Mutex
	inflight map[string]*sent

	applied, stale, gaps, resyncs, resyncFails atomic.Uint64
	discarded, malformed                       atomic.Uint64
	malformedLogged                            atomic.Int64 // Unix nanoseconds
	decisions, promptBlocks, overlapBlocks     atomic.Uint64

	blocks     *loom.Client[llm.KvBlocksRequest, llm.KvSnapshot]
	kvEvents   *events.Subscription[llm.KvEvent]     // nil without events (kv_approx)
	loadEvents *events.Subscription[llm.LoadMetrics] // nil without events
	metrics    *metrics.KVRouterSource
}

// workerState is what the router keeps of one worker, reached from a
// pick with one lookup.
type workerState struct {
	// r.mu guards these.
	id        uint64
	inDisc    bool
	made      int64 // Unix nanoseconds
	lastEvent uint64
	resyncing bool
	retryAt   int64
	buffered  []kvEvent
	// pub is the event-plane publisher of the last event applied, 0
	// after a fetch of the block set: an event id already used that
	// comes from another publisher shows two publishers speaking for
	// the worker, and the router cannot tell whose events it applied.
	pub    uint64
	load   llm.LoadMetrics
	loadAt int64 // when the router received load, Unix nanoseconds; 0 never
	// awaited is a kv_event id a load report said was published and the
	// router had not applied, first seen at awaitedAt; 0 when none.
	awaited   uint64
	awaitedAt int64
	// loadRefused: a load report of the worker's was out of range and
	// ignored (logged once).
	loadRefused bool

	// r.bk guards these.
	acct    account
	decided uint64
}

// kvEvent is a worker's kv_event and the event-plane publisher it came
// from.
type kvEvent struct {
	llm.KvEvent
	pub uint64
}

// sent is a request the router routed and has not seen Done.
type sent struct {
	id             string
	worker         uint64
	w              *workerState // the worker's state when it was routed
	blocks, uncach int
	at             int64
}

// openSet is the requests routed to one worker and not Done, with the
// sums of their blocks over those routed after since: a pick adds what
// the worker's last load report does not count without going through
// every request open on the worker. The sums are taken again when a pick
// asks about another report.
type openSet struct {
	reqs           map[string]*sent
	since          int64
	blocks, uncach int
}

// add opens s; r.bk is held.
func (o *openSet) add(s *sent) {
	o.reqs[s.id] = s
	if s.at > o.since {
		o.blocks += s.blocks
		o.uncach += s.uncach
	}
}

// remove closes s if it is open; r.bk is held.
func (o *openSet) remove(s *sent) {
	if o.reqs[s.id] != s {
		return
	}
	delete(o.reqs, s.id)
	if s.at > o.since {
		o.blocks -= s.blocks
		o.uncach -= s.uncach
	}
}

// after returns the blocks and uncached blocks of the requests routed
// after t; r.bk is held.
func (o *openSet) after(t int64) (blocks, uncach int) {
	if t != o.since {
		o.since, o.blocks, o.uncach = t, 0, 0
		for _, s := range o.reqs {
			if s.at > t {
				o.blocks += s.blocks
				o.uncach += s.uncach
			}
		}
	}
	return o.blocks, o.uncach
}

// maxBuffered bounds the events kept for a worker while its block set is
// being fetched. Past it they are dropped: they are the latest, so the
// worker's next event, or its next load report naming its last event,
// shows them missing, and the block set is fetched again.
const maxBuffered = 65536

// NewKV returns the KV-aware router that follows the workers' kv_events
// and load_metrics in cfg.Namespace. It returns once its subscriptions
// are in place; Close stops it.
func NewKV(ctx context.Context, rt *loom.Runtime, cfg Config) (*KVRouter, error) {
	return newKV(ctx, rt, cfg, true)
}

// NewApprox returns the KV-aware router for workers that publish no
// events: it predicts each worker's cache from its own decisions (a
// routed prompt's blocks count as cached by the worker for
// Config.ApproxTTL) and its load from the requests it has routed and not
// yet seen Done.
func NewApprox(ctx context.Context, rt *loom.Runtime, cfg Config) (*KVRouter, error) {
	return newKV(ctx, rt, cfg, false)
}

func newKV(ctx context.Context, rt *loom.Runtime, cfg Config, useEvents bool) (*KVRouter, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	r := &KVRouter{
		cfg: cfg, rt: rt, name: KVApprox, events: useEvents,
		idx: newIndex(), workers: make(map[uint64]*workerState), gone: make(map[uint64]int64),
		resyncQ: make(map[uint64]bool), wakeRes: make(chan struct{}, 1),
		inflight: make(map[string]*sent),
	}
	if useEvents {
		r.name = KV
	}
	rctx, cancel := context.WithCancel(rt.Context())
	r.cancel = cancel
	ok := false
	defer func() {
		if !ok {
			_ = r.Close()
		}
	}()
	watch, err := rt.Discovery().Watch(rctx, discovery.Query{Namespace: cfg.Namespace, Component: llm.WorkerComponent, Endpoint: llm.GenerateEndpoint})
	if err != nil {
		return nil, fmt.Errorf("kvrouter: watch the workers of %s: %w", cfg.Namespace, err)
	}
	if useEvents {
		scope := events.Scope{Namespace: cfg.Namespace, Component: llm.WorkerComponent}
		// The index needs every event, and an event the subscription's
		// own buffer dropped could be any worker's: the router would
		// have to fetch every block set again. So a router that falls
		// behind holds the events back (events.Block) instead. On core
		// NATS they wait in the NATS client's buffer for the
		// subscription (65,536 messages), and what that drops leaves a
		// gap in one publisher's sequence (OnGap): one worker's set is
		// fetched.
		kv, err := events.Subscribe[llm.KvEvent](rctx, rt, scope, llm.TopicKvEvents,
			events.WithBuffer(rt.Config().Events.BufferSize, events.Block), events.OnGap(r.onGap))
		if err != nil {
			return nil, fmt.Errorf("kvrouter: subscribe to kv_events: %w", err)
		}
		load, err := events.Subscribe[llm.LoadMetrics](rctx, rt, scope, llm.TopicLoadMetrics)
		if err != nil {
			_ = kv.Close()
			return nil, fmt.Errorf("kvrouter: subscribe to load_metrics: %w", err)
		}
		defer func() {
			if !ok {
				_, _ = kv.Close(), load.Close()
			}
		}()
		ep, err := rt.Endpoint(cfg.Namespace + "/" + llm.WorkerComponent + "/" + llm.KvBlocksEndpoint)
		if err != nil {
			return nil, err
		}
		if r.blocks, err = loom.NewClient[llm.KvBlocksRequest, llm.KvSnapshot](rctx, ep, loom.WithWaitTimeout(cfg.ResyncTimeout)); err != nil {
			return nil, err
		}
		r.kvEvents, r.loadEvents = kv, load
		r.goRun(func() { defer kv.Close(); r.consumeKv(rctx, kv) })
		r.goRun(func() { defer load.Close(); r.consumeLoad(rctx, load) })
		for range resyncFetches {
			r.goRun(func() { r.resyncLoop(rctx) })
		}
	}
	// Followed once the subscriptions are in place: a worker that
	// leaves is forgotten by them too.
	r.goRun(func() { r.follow(watch) })
	r.goRun(func() { r.maintain(rctx) })
	r.metrics = rt.Metrics().KVRouter(r.name, r.counts)
	ok = true
	return r, nil
}

// counts reads the router's metrics (docs/llm.md lists them) from its
// Stats, at each scrape.
func (r *KVRouter) counts() metrics.KVRouterCounts {
	s := r.Stats()
	return metrics.KVRouterCounts{
		Decisions: s.Decisions, PromptBlocks: s.PromptBlocks, OverlapBlocks: s.OverlapBlocks,
		EventsApplied: s.EventsApplied, EventsStale: s.EventsStale, EventsDiscarded: s.EventsDiscarded, EventsDropped: s.EventsDropped,
		Gaps: s.Gaps, Resyncs: s.Resyncs, ResyncFailures: s.ResyncFailures,
		IndexBlocks: s.IndexBlocks, Workers: len(s.Workers),
	}
}

func (r *KVRouter) goRun(fn func()) {
	r.wg.Add(1)
	go func() { defer r.wg.Done(); fn() }()
}

// Close stops the router's subscriptions and watch and waits for them.
func (r *KVRouter) Close() error {
	if r.closed.Swap(true) {
		return nil
	}
	r.cancel()
	r.wg.Wait()
	if r.blocks != nil {
		r.blocks.Close()
	}
	if r.metrics != nil {
		r.metrics.Unregister()
	}
	return nil
}

// follow keeps the worker set from discovery: a new worker's block set
// is fetched, a worker that leaves is dropped from the index.
func (r *KVRouter) follow(watch <-chan discovery.Event) {
	for ev := range watch {
		id := ev.Instance.ID
		switch ev.Kind {
		case discovery.Added:
			r.mu.Lock()
			delete(r.gone, id)
			w := r.worker(id)
			w.inDisc = true
			if r.events && w.lastEvent == 0 {
				r.scheduleResync(w)
			}
			r.mu.Unlock()
		case discovery.Removed:
			r.mu.Lock()
			r.leave(id, time.Now().UnixNano())
			r.mu.Unlock()
			r.forgetPublisher(id)
		}
	}
}

// leave forgets worker id, which left at now (Unix nanoseconds), and
// remembers it as gone; r.mu is held. The caller then tells the
// subscriptions (forgetPublisher), outside the lock.
func (r *KVRouter) leave(id uint64, now int64) {
	r.idx.drop(id)
	delete(r.workers, id)
	delete(r.resyncQ, id)
	r.gone[id] = now
}

// worker returns id's state, making it; r.mu is held.
func (r *KVRouter) worker(id uint64) *workerState {
	w := r.workers[id]
	if w == nil {
		w = newWorkerState(id)
		w.made = time.Now().UnixNano()
		r.workers[id] = w
	}
	return w
}

func newWorkerState(id uint64) *workerState {
	return &workerState{id: id, acct: account{open: openSet{reqs: make(map[string]*sent)}}}
}

// scheduleResync queues w's block set for fetching; r.mu is held.
func (r *KVRouter) scheduleResync(w *workerState) {
	w.resyncing = true
	r.resyncQ[w.id] = true
	select {
	case r.wakeRes <- struct{}{}:
	default:
	}
}

// onGap hears of a gap in a publisher's sequence: the events in it are
// lost, so the worker's view is fetched again.
func (r *KVRouter) onGap(g events.Gap) {
	r.gaps.Add(1)
	if g.InstanceID == 0 {
		return
	}
	r.mu.Lock()
	if _, gone := r.gone[g.InstanceID]; !gone {
		if w := r.worker(g.InstanceID); !w.resyncing {
			r.scheduleResync(w)
		}
	}
	r.mu.Unlock()
}

func (r *KVRouter) consumeKv(ctx context.Context, sub *events.Subscription[llm.KvEvent]) {
	for ev, err := range sub.Events(ctx) {
		if err != nil {
			r.rt.Logger().Warn("kvrouter: kv_events subscription ended", "err", err)
			return
		}
		if err := ev.Value.Check(); err != nil {
			// Dropped as if lost: the worker's next event, or its next
			// load report, shows its id missing, and the block set is
			// fetched; a process speaking as the worker loses nothing.
			r.malformed.Add(1)
			if now := time.Now().UnixNano(); now-r.malformedLogged.Load() > int64(10*time.Second) {
				r.malformedLogged.Store(now)
				r.rt.Logger().Warn("kvrouter: a malformed kv_event is ignored", "worker", fmt.Sprintf("%x", ev.InstanceID), "err", err)
			}
			continue
		}
		if left := r.apply(ev.InstanceID, kvEvent{ev.Value, ev.PublisherID}); left {
			sub.Forget(ev.InstanceID) // it followed the sequence of one gone
		}
	}
}

// apply applies one kv_event of worker id, or buffers it while the
// worker's block set is being fetched; a gap in event ids starts a fetch,
// and so does an id already used that another publisher sends. It
// reports whether the worker has left (the event is ignored).
func (r *KVRouter) apply(id uint64, ev kvEvent) (left bool) {
	if id == 0 {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, gone := r.gone[id]; gone {
		return true
	}
	w := r.worker(id)
	if w.resyncing {
		if len(w.buffered) < maxBuffered {
			w.buffered = append(w.buffered, ev)
		}
		return false
	}
	switch {
	case ev.EventID <= w.lastEvent && w.pub != 0 && ev.pub != w.pub:
		// Two publishers number events for the worker (one reusing its
		// instance id): one of them was applied in the other's place,
		// and only the worker's block set can say which is its own.
		r.stale.Add(1)
		r.gaps.Add(1)
		r.scheduleResync(w)
	case ev.EventID <= w.lastEvent:
		r.stale.Add(1)
	case ev.EventID == w.lastEvent+1:
		r.applyOne(w, ev)
	default:
		r.gaps.Add(1)
		w.buffered = append(w.buffered[:0], ev)
		r.scheduleResync(w)
	}
	return false
}

// applyOne applies an event in sequence; r.mu is held.
func (r *KVRouter) applyOne(w *workerState, ev kvEvent) {
	switch {
	case ev.Cleared:
		r.idx.drop(w.id)
	case ev.Stored != nil:
		r.idx.store(w.id, ev.Stored.BlockHashes, 0)
	case ev.Removed != nil:
		r.idx.remove(w.id, ev.Removed.BlockHashes)
	}
	w.lastEvent, w.pub = ev.EventID, ev.pub
	r.applied.Add(1)
}

func (r *KVRouter) consumeLoad(ctx context.Context, sub *events.Subscription[llm.LoadMetrics]) {
	waiting := func() int { return r.kvEvents.Stats().Buffered }
	for ev, err := range sub.Events(ctx) {
		if err != nil {
			return
		}
		if ev.InstanceID == 0 {
			continue
		}
		left, refused := r.onLoad(ev.InstanceID, ev.Value, time.Now().UnixNano(), waiting)
		if left {
			sub.Forget(ev.InstanceID) // it followed the sequence of one gone
		}
		if refused != nil {
			r.rt.Logger().Warn("kvrouter: a worker's load report is out of range; its reports like it are ignored",
				"worker", fmt.Sprintf("%x", ev.InstanceID), "err", refused)
		}
	}
}

// onLoad keeps worker id's load report m, received at now, and fetches
// the worker's block set if a kv_event that its reports named has been
// missing for Config.LostAfter while no kv_events wait to be read
// (waiting returns how many do): a router that falls behind holds its
// events back, and is not missing them. It reports whether the worker
// has left (the report is ignored). A report with a count out of range
// (llm.LoadMetrics.Check) is ignored too, and the router keeps weighing
// the worker's last sound one; refused is the report's error the first
// time one of the worker's is ignored, for the log.
func (r *KVRouter) onLoad(id uint64, m llm.LoadMetrics, now int64, waiting func() int) (left bool, refused error) {
	r.mu.Lock()
	if _, gone := r.gone[id]; gone {
		r.mu.Unlock()
		return true, nil
	}
	w := r.worker(id)
	if err := m.Check(); err != nil {
		if !w.loadRefused {
			w.loadRefused, refused = true, err
		}
		r.mu.Unlock()
		return false, refused
	}
	w.load, w.loadAt = m, now
	due := w.await(m.KvEventID, now, int64(r.cfg.LostAfter))
	r.mu.Unlock()
	if !due || waiting() != 0 {
		return false, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if w := r.workers[id]; w != nil && w.await(0, now, int64(r.cfg.LostAfter)) {
		r.gaps.Add(1)
		w.awaited = 0
		r.scheduleResync(w)
	}
	return false, nil
}

// await notes that the worker's load report named published as its last
// kv_event (0: it did not say), and reports whether an event it named at
// least lostAfter ago has still not been applied: the events up to it
// were lost, and no later event of an idle worker will show the gap.
// r.mu is held.
func (w *workerState) await(published uint64, now, lostAfter int64) bool {
	if w.resyncing || w.awaited != 0 && w.lastEvent >= w.awaited {
		w.awaited = 0 // the fetch or the event came
	}
	if w.resyncing {
		return false
	}
	if w.awaited == 0 && published > w.lastEvent {
		w.awaited, w.awaitedAt = published, now
	}
	return w.awaited != 0 && now-w.awaitedAt >= lostAfter
}

// resyncFetches is how many block sets the router fetches at once: a
// worker slow to send its own (a host gone, an engine stalled) holds up
// one fetch for ResyncTimeout, not every other worker's.
const resyncFetches = 8

// resyncLoop fetches the block sets of the workers queued for it and
// replaces their views; resyncFetches of them run.
func (r *KVRouter) resyncLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.wakeRes:
		}
		for {
			r.mu.Lock()
			var id uint64
			for q := range r.resyncQ {
				id = q
				break
			}
			delete(r.resyncQ, id)
			more := len(r.resyncQ) > 0
			r.mu.Unlock()
			if id == 0 || ctx.Err() != nil {
				break
			}
			if more { // another loop, if one is idle, takes the next
				select {
				case r.wakeRes <- struct{}{}:
				default:
				}
			}
			r.resync(ctx, id)
		}
	}
}

// resync fetches worker id's block set and replaces its view with it,
// then applies the events buffered meanwhile that follow it.
func (r *KVRouter) resync(ctx context.Context, id uint64) {
	// Events buffered before the fetch starts were published before the
	// block set is taken, so the block set covers them.
	r.mu.Lock()
	before := 0
	if w := r.workers[id]; w != nil {
		before = len(w.buffered)
	}
	r.mu.Unlock()
	fctx, cancel := context.WithTimeout(ctx, r.cfg.ResyncTimeout)
	defer cancel()
	var hashes []uint64
	var at uint64
	first := true
	var err error
	for snap, e := range r.blocks.Direct(id).Generate(fctx, llm.KvBlocksRequest{}) {
		if e != nil {
			err = e
			break
		}
		if first {
			at, first = snap.EventID, false
		} else if snap.EventID != at {
			err = fmt.Errorf("kvrouter: worker %x's block set changed event id mid-stream (%d then %d)", id, at, snap.EventID)
			break
		}
		for _, b := range snap.Blocks {
			hashes = append(hashes, b.Hash)
		}
	}
	if err == nil && first {
		err = fmt.Errorf("kvrouter: worker %x sent an empty block set stream", id)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	w := r.workers[id]
	if w == nil {
		return // left meanwhile
	}
	if err != nil {
		r.resyncFails.Add(1)
		if ctx.Err() == nil {
			r.rt.Logger().Debug("kvrouter: fetch of a worker's block set failed; retrying", "worker", fmt.Sprintf("%x", id), "err", err)
		}
		w.retryAt = time.Now().Add(time.Second).UnixNano()
		return
	}
	r.replaceView(w, hashes, at, before)
}

// replaceView makes hashes, fetched as of event at, worker w's view,
// then applies the events buffered during the fetch that follow it; the
// first before of them were received before the fetch began. r.mu is
// held.
func (r *KVRouter) replaceView(w *workerState, hashes []uint64, at uint64, before int) {
	r.idx.replace(w.id, hashes)
	w.lastEvent, w.pub = at, 0
	w.resyncing, w.retryAt = false, 0
	r.resyncs.Add(1)
	buf := w.buffered
	w.buffered = nil
	kept := buf[:0]
	for i, ev := range buf {
		switch {
		case ev.EventID <= at:
			r.stale.Add(1) // covered by the block set
		case i < before:
			// Published before the block set was taken, yet beyond it:
			// not from this worker's sequence (a publisher reusing its
			// instance id). The block set is the truth.
			r.discarded.Add(1)
		default:
			kept = append(kept, ev)
		}
	}
	buf = kept
	slices.SortStableFunc(buf, func(a, b kvEvent) int { return cmpU(a.EventID, b.EventID) })
	for i, ev := range buf {
		switch {
		case ev.EventID <= w.lastEvent && w.pub != 0 && ev.pub != w.pub:
			// Two publishers sent this id, as in apply: fetch again.
			r.stale.Add(1)
			r.gaps.Add(1)
			w.buffered = append(w.buffered, buf[i+1:]...)
			r.scheduleResync(w)
			return
		case ev.EventID <= w.lastEvent:
			r.stale.Add(1)
		case ev.EventID == w.lastEvent+1:
			r.applyOne(w, ev)
		default:
			r.gaps.Add(1)
			w.buffered = append(w.buffered, buf[i:]...)
			r.scheduleResync(w)
			return
		}
	}
}

// maintain retries failed fetches, expires kv_approx's predictions and
// requests never reported Done, and forgets old tombstones and workers
// discovery never had.
func (r *KVRouter) maintain(ctx context.Context) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.tidy(time.Now().UnixNano())
	}
}

// forgetPublisher tells the subscriptions, which follow the sequences of
// each worker's events, that worker id has gone.
func (r *KVRouter) forgetPublisher(id uint64) {
	if r.kvEvents != nil {
		r.kvEvents.Forget(id)
	}
	if r.loadEvents != nil {
		r.loadEvents.Forget(id)
	}
}

// goneFor is how long a worker that left discovery is remembered, and
// how long a worker heard of otherwise waits for discovery to list it.
const goneFor = time.Minute

// tidy is one round of maintain at now, Unix nanoseconds.
func (r *KVRouter) tidy(now int64) {
	var dropped []uint64
	r.mu.Lock()
	if !r.events {
		r.idx.expire(now)
	}
	for id, w := range r.workers {
		// A worker heard of only through its events or a pick, and not
		// in discovery a minute later, is not there: it is forgotten as
		// if it had left.
		if !w.inDisc && now-w.made > int64(goneFor) {
			r.leave(id, now)
			dropped = append(dropped, id)
			continue
		}
		if w.retryAt != 0 && w.retryAt <= now {
			w.retryAt = 0
			r.scheduleResync(w)
		}
	}
	for id, at := range r.gone {
		if now-at > int64(goneFor) {
			delete(r.gone, id)
		}
	}
	r.mu.Unlock()
	for _, id := range dropped {
		r.forgetPublisher(id)
	}
	r.bk.Lock()
	for id, s := range r.inflight {
		if now-s.at > int64(r.cfg.RequestTTL) {
			r.forget(id, s)
		}
	}
	r.bk.Unlock()
}

// forget drops a routed request from the bookkeeping; r.bk is held.
func (r *KVRouter) forget(id string, s *sent) {
	delete(r.inflight, id)
	s.w.acct.open.remove(s)
}

// Done tells the router that the request it routed has ended. If the
// worker's last load report counted it, the router takes it off that
// report until the next one.
func (r *KVRouter) Done(requestID string) {
	r.bk.Lock()
	s := r.inflight[requestID]
	if s != nil {
		r.forget(requestID, s)
	}
	r.bk.Unlock()
	if s == nil {
		return
	}
	r.mu.RLock()
	loadAt := s.w.loadAt
	r.mu.RUnlock()
	if loadAt == 0 || s.at > loadAt {
		return // not in a report
	}
	r.bk.Lock()
	d := &s.w.acct.done
	if d.loadAt != loadAt {
		*d = doneSince{loadAt: loadAt}
	}
	d.blocks += s.blocks
	d.uncach += s.uncach
	r.bk.Unlock()
}

// doneSince sums the requests Done since a worker's load report that
// counted them.
type doneSince struct {
	loadAt         int64
	blocks, uncach int
}

// account is what the router keeps of the requests it routed to one
// worker: those open, and those Done since the worker's last load
// report; r.bk guards it.
type account struct {
	open openSet
	done doneSince
}

// adopt returns the state of worker id, which a pick chose before the
// router's own view of discovery had it: made, unless the worker has
// left, when the state is kept only by the requests routed to it; r.bk
// is held.
func (r *KVRouter) adopt(id uint64) *workerState {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, gone := r.gone[id]; gone {
		return newWorkerState(id)
	}
	return r.worker(id)
}

// candidate is one worker's inputs to the cost.
type candidate struct {
	c                    *loom.Candidate
	w                    *workerState // nil: not in the router's view
	overlap              int
	load                 llm.LoadMetrics
	loadAt               int64
	cost                 float64
	prefill, decode, wai int
}

// Pick chooses the worker for the request described by the RouteInfo in
// ctx (see llm.WithRoute) among the candidates serving its model (all of
// them when RouteInfo.Filtered says they do), records
// its choice in the RouteInfo and counts the request as load on that
// worker until Done.
func (r *KVRouter) Pick(ctx context.Context, all []*loom.Candidate) (*loom.Candidate, error) {
	ri := llm.RouteFrom(ctx)
	ps := pickScratches.Get().(*pickScratch)
	defer ps.release()
	var toks []uint32
	cands := all
	if ri != nil {
		toks = ri.TokenIDs
		if ri.Model != "" && !ri.Filtered {
			cands = llm.ServesModel(ps.cands[:0], all, ri.Model)
			ps.cands = cands
			if len(cands) == 0 {
				return nil, fmt.Errorf("%w: %q (%d workers, none with that model)", llm.ErrNoWorker, ri.Model, len(all))
			}
		}
	}
	bs := r.cfg.BlockSize
	if bs == 0 {
		bs = llm.DefaultBlockSize
		if v, err := strconv.Atoi(cands[0].Metadata[llm.MetaBlockSize]); err == nil && v > 0 {
			bs = v
		}
	}
	hashes := llm.BlockHashes(toks, bs)
	n := (len(toks) + bs - 1) / bs
	now := time.Now().UnixNano()

	cs := slices.Grow(ps.cs[:0], len(cands))[:len(cands)]
	ps.cs = cs
	r.mu.RLock()
	run := ps.zeros(r.idx.numSlots())
	sc := r.idx.overlaps(ps.sc[:0], run, hashes, now)
	ps.sc = sc
	for i, c := range cands {
		cs[i].c = c
		if len(sc) <= askSets {
			for _, s := range sc {
				if s.worker == c.ID {
					cs[i].overlap = s.overlap
					break
				}
			}
		} else if slot, ok := r.idx.slots[c.ID]; ok {
			cs[i].overlap = int(run[slot])
		}
		w := r.workers[c.ID]
		cs[i].w = w
		if w != nil && r.events {
			cs[i].load, cs[i].loadAt = w.load, w.loadAt
		}
	}
	for _, s := range sc {
		run[s.slot] = 0
	}
	r.mu.RUnlock()

	r.bk.Lock()
	best := r.choose(cs, n, bs)
	chosen := cs[best]
	id := chosen.c.ID
	w := chosen.w
	if w == nil {
		w = r.adopt(id)
	}
	w.decided++
	if ri != nil && ri.RequestID != "" {
		if old := r.inflight[ri.RequestID]; old != nil {
			r.forget(ri.RequestID, old) // routed again (a retry): count it once
		}
		s := &sent{id: ri.RequestID, worker: id, w: w, blocks: n, uncach: n - chosen.overlap, at: now}
		r.inflight[ri.RequestID] = s
		w.acct.open.add(s)
	}
	r.bk.Unlock()

	if !r.events && len(hashes) > 0 {
		r.mu.Lock()
		if _, left := r.gone[id]; !left { // a departed worker caches nothing
			r.idx.store(id, hashes, now+int64(r.cfg.ApproxTTL))
		}
		r.mu.Unlock()
	}
	r.decisions.Add(1)
	r.promptBlocks.Add(uint64(len(hashes)))
	r.overlapBlocks.Add(uint64(chosen.overlap))
	if ri != nil {
		ri.Worker, ri.OverlapBlocks = id, chosen.overlap
	}
	return chosen.c, nil
}

// pickScratch is a pick's working memory, kept for the next: the
// candidates serving the model and their inputs to the cost, the workers
// holding the prompt's first block, and a count for each worker the
// index knows, about 180 bytes a worker, which would otherwise be
// garbage after every request.
type pickScratch struct {
	cands []*loom.Candidate
	cs    []candidate
	sc    []scored
	run   []int32 // all zero between picks
}

// zeros returns n zero counts.
func (ps *pickScratch) zeros(n int) []int32 {
	if cap(ps.run) < n {
		ps.run = make([]int32, n+n/4)
	}
	return ps.run[:n]
}

var pickScratches = sync.Pool{New: func() any { return new(pickScratch) }}

// release zeroes what the pick used, so that the next finds zero values
// and nothing is kept alive, and gives the scratch back.
func (ps *pickScratch) release() {
	clear(ps.cands)
	clear(ps.cs)
	ps.sc = ps.sc[:0]
	pickScratches.Put(ps)
}

// choose computes each candidate's cost and picks one; r.bk is held.
//
//	prefill_w = (n - overlap_w) + pending_w + waiting_w * n
//	decode_w  = active_w + n
//	cost_w    = OverlapWeight * prefill_w + decode_w
//
// in blocks, where n is the prompt's blocks, overlap_w its leading blocks
// worker w holds, pending_w the prompt blocks w has still to prefill,
// waiting_w the requests waiting at w, and active_w the blocks w's
// running requests use. pending_w and active_w are w's last load_metrics
// plus the requests routed to w since then and not Done; without load
// metrics (kv_approx, or none yet) they are the requests routed to w and
// not Done. Requests Done since the report that counted them are taken
// off it (never below zero).
func (r *KVRouter) choose(cs []candidate, n, bs int) int {
	for i := range cs {
		c := &cs[i]
		pending, active := 0, 0
		if c.loadAt != 0 {
			pending = (c.load.PrefillTokens + bs - 1) / bs
			active = c.load.ActiveBlocks
			c.wai = c.load.Waiting
		}
		if c.w != nil {
			a := &c.w.acct
			if d := a.done; c.loadAt != 0 && d.loadAt == c.loadAt {
				pending = max(0, pending-d.uncach)
				active = max(0, active-d.blocks)
			}
			blocks, uncach := a.open.after(c.loadAt)
			pending += uncach
			active += blocks
		}
		c.prefill = n - c.overlap + pending + c.wai*n
		c.decode = active + n
		c.cost = r.cfg.OverlapWeight*float64(c.prefill) + float64(c.decode)
	}
	if r.cfg.Temperature > 0 && len(cs) > 1 {
		return sample(cs, r.cfg.Temperature)
	}
	best, ties := 0, 1
	for i := 1; i < len(cs); i++ {
		switch {
		case cs[i].cost < cs[best].cost:
			best, ties = i, 1
		case cs[i].cost == cs[best].cost:
			// Reservoir sampling: each tied candidate equally likely.
			ties++
			if rand.IntN(ties) == 0 {
				best = i
			}
		}
	}
	return best
}

// sample draws a candidate with probability proportional to
// exp(-norm_w / t), norm_w being the cost scaled to [0, 1].
func sample(cs []candidate, t float64) int {
	lo, hi := cs[0].cost, cs[0].cost
	for _, c := range cs[1:] {
		lo, hi = min(lo, c.cost), max(hi, c.cost)
	}
	span := hi - lo
	if span == 0 {
		return rand.IntN(len(cs))
	}
	weights := make([]float64, len(cs))
	sum := 0.0
	for i, c := range cs {
		weights[i] = math.Exp(-(c.cost - lo) / span / t)
		sum += weights[i]
	}
	x := rand.Float64() * sum
	for i, w := range weights {
		if x -= w; x < 0 {
			return i
		}
	}
	return len(cs) - 1
}

// Stats returns the router's counters and view now.
func (r *KVRouter) Stats() Stats {
	s := Stats{
		Name: r.name, EventsApplied: r.applied.Load(), EventsStale: r.stale.Load(), EventsDiscarded: r.discarded.Load(), EventsMalformed: r.malformed.Load(),
		Gaps: r.gaps.Load(), Resyncs: r.resyncs.Load(), ResyncFailures: r.resyncFails.Load(),
		Decisions: r.decisions.Load(), PromptBlocks: r.promptBlocks.Load(), OverlapBlocks: r.overlapBlocks.Load(),
	}
	if r.kvEvents != nil {
		es := r.kvEvents.Stats()
		s.EventsReceived, s.EventsDropped = es.Received, es.Dropped
	}
	r.mu.RLock()
	s.IndexBlocks, s.IndexEntries = len(r.idx.blocks), r.idx.entries
	states := make([]*workerState, 0, len(r.workers))
	for _, w := range r.workers {
		ws := WorkerStats{ID: w.id, Blocks: r.idx.workerBlocks(w.id), LastEventID: w.lastEvent}
		if w.loadAt != 0 {
			l := w.load
			ws.Load = &l
		}
		s.Workers = append(s.Workers, ws)
		states = append(states, w)
	}
	r.mu.RUnlock()
	r.bk.Lock()
	for i, w := range states {
		s.Workers[i].Open = len(w.acct.open.reqs)
		s.Workers[i].Decisions = w.decided
	}
	r.bk.Unlock()
	slices.SortFunc(s.Workers, func(a, b WorkerStats) int { return cmpU(a.ID, b.ID) })
	return s
}
