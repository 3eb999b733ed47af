package mocker

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/events"
	"github.com/loomrt/loom/llm"
)

// DefaultSnapshotChunk is the most blocks in one KvSnapshot item of the
// kv_blocks stream when the request does not say.
const DefaultSnapshotChunk = 4096

// Worker is a mock engine worker serving in one Runtime.
type Worker struct {
	rt   *loom.Runtime
	cfg  Config
	eng  *engine
	comp *loom.Component

	kvPub   *events.Publisher[llm.KvEvent]
	loadPub *events.Publisher[llm.LoadMetrics]
	kvSent  atomic.Uint64 // the last kv_event id published (or tried)
	prefill *prefillSide  // remote prefill, when configured

	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
	stats  workerStats
}

// Stats counts what a worker did.
type Stats struct {
	// Requests counts requests admitted into the batch; Running and
	// Waiting are the requests in the batch and waiting now.
	Requests         uint64
	Running, Waiting int
	// KvEvents is the id of the last kv_event recorded; KvBlocks the
	// blocks cached (announced or being computed) now.
	KvEvents uint64
	KvBlocks int
	// CachedTokens and PromptTokens sum the admitted prompts' tokens
	// found in the cache and in all.
	CachedTokens, PromptTokens uint64
	// PrefillJobs counts remote prefills a prefill worker finished;
	// PrefillsInProgress those it is working on now; RemotePrefills the
	// prefills a decode worker handed to the queue.
	PrefillJobs, PrefillsInProgress, RemotePrefills uint64
	// PrefillRedeliveries counts the finished prefill jobs that had been
	// delivered before (to a worker that died or gave up).
	PrefillRedeliveries uint64
}

type workerStats struct {
	mu                                  sync.Mutex
	prefillJobs, prefillsNow, remoteOut uint64
	redelivered                         uint64
}

// Start starts a mock worker in rt: its engine, the generate and
// kv_blocks endpoints of {Namespace}/backend with the model card in the
// instance metadata, and the kv_events and load_metrics publishers; or,
// with Config.Prefill, a prefill worker taking jobs from the prefill
// queue. It returns once the worker is registered in discovery. Stop it
// with Shutdown (graceful) or Close (now); the runtime's shutdown stops it
// too.
func Start(ctx context.Context, rt *loom.Runtime, cfg Config) (*Worker, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	w := &Worker{rt: rt, cfg: cfg, eng: newEngine(cfg, rt.ID())}
	wctx, cancel := context.WithCancel(rt.Context())
	w.cancel = cancel
	ok := false
	defer func() {
		if !ok {
			w.Close()
		}
	}()
	ns, err := rt.Namespace(cfg.Namespace)
	if err != nil {
		return nil, err
	}
	if w.comp, err = ns.Component(llm.WorkerComponent); err != nil {
		return nil, err
	}
	if cfg.Prefill {
		if err := w.startPrefillWorker(ctx, wctx); err != nil {
			return nil, err
		}
		ok = true
		return w, nil
	}
	scope := events.Scope{Namespace: cfg.Namespace, Component: llm.WorkerComponent}
	if w.kvPub, err = events.NewPublisher[llm.KvEvent](ctx, rt, scope, llm.TopicKvEvents); err != nil {
		return nil, fmt.Errorf("mocker: kv_events publisher: %w", err)
	}
	if w.loadPub, err = events.NewPublisher[llm.LoadMetrics](ctx, rt, scope, llm.TopicLoadMetrics); err != nil {
		return nil, fmt.Errorf("mocker: load_metrics publisher: %w", err)
	}
	if cfg.RemotePrefill {
		if err := w.startRemotePrefill(ctx, wctx); err != nil {
			return nil, err
		}
	}
	w.wg.Add(3)
	go func() { defer w.wg.Done(); w.eng.run(wctx) }()
	go func() { defer w.wg.Done(); w.publishKv(wctx) }()
	go func() { defer w.wg.Done(); w.publishLoad(wctx) }()

	blocks, err := w.comp.Endpoint(llm.KvBlocksEndpoint)
	if err != nil {
		return nil, err
	}
	if err := loom.Serve(ctx, blocks, loom.EngineFunc[llm.KvBlocksRequest, llm.KvSnapshot](w.kvBlocks)); err != nil {
		return nil, err
	}
	gen, err := w.comp.Endpoint(llm.GenerateEndpoint)
	if err != nil {
		return nil, err
	}
	if err := loom.Serve(ctx, gen, loom.EngineFunc[llm.Request, llm.Response](w.eng.generate), loom.WithMetadata(cfg.Card().Metadata())); err != nil {
		return nil, err
	}
	ok = true
	return w, nil
}

// Run runs a mock worker in rt until ctx ends, then shuts it down
// gracefully, letting requests in flight finish for the runtime's
// shutdown.grace_period. It is the one call a worker process needs:
//
//	loom.Run(func(ctx context.Context, rt *loom.Runtime) error { return mocker.Run(ctx, rt, cfg) })
func Run(ctx context.Context, rt *loom.Runtime, cfg Config) error {
	w, err := Start(ctx, rt, cfg)
	if err != nil {
		return err
	}
	return w.ServeUntil(ctx)
}

// ServeUntil waits until ctx ends, then shuts the worker down gracefully,
// letting requests in flight finish for its runtime's
// shutdown.grace_period.
func (w *Worker) ServeUntil(ctx context.Context) error {
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.rt.Config().Shutdown.GracePeriod)
	defer cancel()
	return w.Shutdown(sctx)
}

// ID returns the worker's instance id (its runtime's).
func (w *Worker) ID() uint64 { return w.rt.ID() }

// Runtime returns the runtime the worker serves in.
func (w *Worker) Runtime() *loom.Runtime { return w.rt }

// Config returns the worker's configuration, defaults filled in.
func (w *Worker) Config() Config { return w.cfg }

// Card returns the model card the worker registered.
func (w *Worker) Card() llm.ModelCard { return w.cfg.Card() }

// Stats returns what the worker has done so far.
func (w *Worker) Stats() Stats {
	e := w.eng
	e.mu.Lock()
	s := Stats{
		Requests: e.served, Running: len(e.running), Waiting: len(e.waiting),
		KvEvents: e.cache.lastEvent, KvBlocks: len(e.cache.blocks),
		CachedTokens: e.hitToks, PromptTokens: e.promptTk,
	}
	e.mu.Unlock()
	w.stats.mu.Lock()
	s.PrefillJobs, s.PrefillsInProgress, s.RemotePrefills = w.stats.prefillJobs, w.stats.prefillsNow, w.stats.remoteOut
	s.PrefillRedeliveries = w.stats.redelivered
	w.stats.mu.Unlock()
	return s
}

// Shutdown stops the worker gracefully: its endpoints refuse new requests
// and leave discovery, requests in flight finish until ctx ends (those
// still running then are cancelled), then the engine stops and the events
// already recorded are flushed. It does not shut the runtime down.
func (w *Worker) Shutdown(ctx context.Context) error {
	var errs []error
	if w.comp != nil {
		// Requests waiting for a remote prefill finish meanwhile: the
		// prefill notices arrive on a subscription closed only below.
		errs = append(errs, w.comp.Shutdown(ctx))
	}
	// A connection the runtime closed already has nothing left to flush.
	flushed := func(err error) error {
		if errors.Is(err, nats.ErrConnectionClosed) {
			return nil
		}
		return err
	}
	if w.prefill != nil {
		errs = append(errs, flushed(w.prefill.shutdown(ctx)))
	}
	w.stop()
	if w.kvPub != nil {
		w.flushKv(ctx)
		errs = append(errs, flushed(w.kvPub.Shutdown(ctx)))
	}
	if w.loadPub != nil {
		errs = append(errs, flushed(w.loadPub.Shutdown(ctx)))
	}
	return errors.Join(errs...)
}

// Close stops the worker now: requests in flight are killed and nothing
// more is published. The runtime is left running.
func (w *Worker) Close() {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = w.Shutdown(ctx)
}

// stop ends the worker's goroutines and waits for them.
func (w *Worker) stop() {
	w.once.Do(func() {
		w.cancel()
		w.wg.Wait()
	})
}

// kvBlocks serves the kv_blocks endpoint: the announced block set, in
// chunks, all stamped with the id of the last event recorded.
func (w *Worker) kvBlocks(ctx context.Context, req llm.KvBlocksRequest) iter.Seq2[llm.KvSnapshot, error] {
	return func(yield func(llm.KvSnapshot, error) bool) {
		chunk := req.ChunkBlocks
		if chunk <= 0 {
			chunk = DefaultSnapshotChunk
		}
		s := w.eng.snapshot()
		if len(s.Blocks) == 0 {
			yield(s, nil)
			return
		}
		for i := 0; i < len(s.Blocks); i += chunk {
			if ctx.Err() != nil {
				return
			}
			if !yield(llm.KvSnapshot{EventID: s.EventID, Blocks: s.Blocks[i:min(i+chunk, len(s.Blocks))]}, nil) {
				return
			}
		}
	}
}

// publishKv publishes the engine's kv events in order as they come.
func (w *Worker) publishKv(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.eng.kvReady:
		}
		w.flushKv(ctx)
	}
}

func (w *Worker) flushKv(ctx context.Context) {
	for _, ev := range w.eng.takeEvents() {
		if err := w.kvPub.Publish(context.WithoutCancel(ctx), ev); err != nil {
			// The event id still counts: subscribers see the gap and
			// resynchronise from kv_blocks.
			w.rt.Logger().Debug("mocker: kv event not published", "event_id", ev.EventID, "err", err)
		}
		w.kvSent.Store(ev.EventID)
	}
}

// publishLoad publishes load_metrics on change, at most once per
// MetricsMinInterval, and every MetricsInterval regardless.
func (w *Worker) publishLoad(ctx context.Context) {
	tick := time.NewTicker(w.cfg.MetricsInterval)
	defer tick.Stop()
	pause := time.NewTimer(0)
	defer pause.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.eng.changed:
		case <-tick.C:
		}
		// The report names the last kv_event sent, so that a router
		// learns of events lost at the end of the sequence.
		m := w.eng.load()
		m.KvEventID = w.kvSent.Load()
		if err := w.loadPub.Publish(ctx, m); err != nil && ctx.Err() == nil {
			w.rt.Logger().Debug("mocker: load metrics not published", "err", err)
		}
		pause.Reset(w.cfg.MetricsMinInterval)
		select {
		case <-ctx.Done():
			return
		case <-pause.C:
		}
	}
}

// ClearCache drops every cached block no request is using and publishes
// a Cleared kv_event, as an engine does when its cache is reset.
func (w *Worker) ClearCache() {
	e := w.eng
	e.mu.Lock()
	e.cache.clear()
	e.mu.Unlock()
	signal(e.kvReady)
	signal(e.changed)
}
