// Command kvevents is the event plane's scenario from Dynamo (seed 000):
// workers publish kv_events (the KV-cache blocks they stored and removed)
// and load_metrics; a router-side aggregator subscribes to every worker's
// events, keeps a per-worker view, and drops a worker when discovery says
// it is gone.
//
//	go run ./examples/kvevents            # three workers and a router in one process
//	go run ./examples/kvevents worker     # one worker  (with the environment loom up prints)
//	go run ./examples/kvevents router     # the router: prints its view every second
//
// In one process it starts an embedded nats-server (unless NATS_SERVER is
// set), runs three workers for a while, stops one, and prints the router's
// view before and after. The transport is events.transport
// (LOOM_EVENTS_TRANSPORT=zmq or jetstream to try the others).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/discovery"
	_ "github.com/loomrt/loom/discovery/all" // every discovery backend, chosen by discovery.backend
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/events"
)

// Namespace and names of the scenario.
const (
	namespace = "kvdemo"
	component = "worker"
	endpoint  = "generate"
)

var workerScope = events.Scope{Namespace: namespace, Component: component}

// KvEvent is what a worker publishes on kv_events: blocks of its KV cache
// it stored or removed (Dynamo's RouterEvent with KvCacheEventData).
type KvEvent struct {
	EventID uint64     `json:"event_id"`
	Stored  *KvStored  `json:"stored,omitempty"`
	Removed *KvRemoved `json:"removed,omitempty"`
}

// KvStored lists blocks stored, each chained to its parent.
type KvStored struct {
	ParentHash  *uint64  `json:"parent_hash,omitempty"`
	BlockHashes []uint64 `json:"block_hashes"`
}

// KvRemoved lists blocks evicted.
type KvRemoved struct {
	BlockHashes []uint64 `json:"block_hashes"`
}

// LoadMetrics is what a worker publishes on load_metrics.
type LoadMetrics struct {
	ActiveSlots  int     `json:"request_active_slots"`
	TotalSlots   int     `json:"request_total_slots"`
	ActiveBlocks int     `json:"kv_active_blocks"`
	TotalBlocks  int     `json:"kv_total_blocks"`
	CacheUsage   float64 `json:"gpu_cache_usage_perc"`
}

func main() {
	mode := "all"
	if len(os.Args) > 1 {
		mode = os.Args[1]
	}
	var err error
	switch mode {
	case "all":
		err = runAll(context.Background(), os.Stdout, scenario{workers: 3, rounds: 40, tick: 5 * time.Millisecond})
	case "worker":
		loom.Run(func(ctx context.Context, rt *loom.Runtime) error {
			w, err := startWorker(ctx, rt)
			if err != nil {
				return err
			}
			fmt.Printf("worker %x publishing kv_events and load_metrics; Ctrl-C to stop\n", rt.ID())
			return w.run(ctx, -1, 200*time.Millisecond)
		})
	case "router":
		loom.Run(func(ctx context.Context, rt *loom.Runtime) error {
			a := NewAggregator()
			errc := make(chan error, 1)
			go func() { errc <- a.Run(ctx, rt) }()
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case err := <-errc:
					return err
				case <-t.C:
					a.Print(os.Stdout)
				}
			}
		})
	default:
		err = fmt.Errorf("unknown mode %q: use worker, router, or nothing for all in one process", mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kvevents:", err)
		os.Exit(1)
	}
}

// WorkerView is what the router knows of one worker.
type WorkerView struct {
	InstanceID uint64
	Blocks     map[uint64]struct{}
	Load       LoadMetrics
	Events     uint64 // kv_events applied
	LastID     uint64 // event_id of the last one
	// Stale is set when events of this worker were lost: its block set
	// may be wrong until it is resynchronised.
	Stale bool
}

// Aggregator keeps a view of every worker from their events, and forgets
// a worker when it leaves discovery.
type Aggregator struct {
	mu      sync.Mutex
	workers map[uint64]*WorkerView
	gone    map[uint64]bool // left discovery: late events are ignored
	ready   chan struct{}
	once    sync.Once
}

// NewAggregator returns an empty aggregator.
func NewAggregator() *Aggregator {
	return &Aggregator{workers: make(map[uint64]*WorkerView), gone: make(map[uint64]bool), ready: make(chan struct{})}
}

// Ready is closed once the aggregator's subscriptions and watch are in
// place.
func (a *Aggregator) Ready() <-chan struct{} { return a.ready }

// Run subscribes to every worker's kv_events and load_metrics and watches
// the workers' instances in discovery, until ctx ends.
func (a *Aggregator) Run(ctx context.Context, rt *loom.Runtime) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	every := events.Scope{Namespace: namespace, Component: events.Any}
	// A gap in a worker's kv_events marks that worker stale at once (the
	// hook names its instance); loss notices in the stream report the
	// events the subscription's own buffer dropped.
	kv, err := events.Subscribe[KvEvent](ctx, rt, every, "kv_events", events.OnGap(a.gap), events.WithLossErrors())
	if err != nil {
		return err
	}
	defer kv.Close()
	load, err := events.Subscribe[LoadMetrics](ctx, rt, every, "load_metrics")
	if err != nil {
		return err
	}
	defer load.Close()
	watch, err := rt.Discovery().Watch(ctx, discovery.Query{Namespace: namespace, Component: component, Endpoint: endpoint})
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	wg.Go(func() { errc <- consume(kv.Events(ctx), a.applyKv, a.lost) })
	wg.Go(func() { errc <- consume(load.Events(ctx), a.applyLoad, nil) })
	for ev := range watch {
		switch ev.Kind {
		case discovery.Synced:
			a.once.Do(func() { close(a.ready) })
		case discovery.Added:
			a.mu.Lock()
			delete(a.gone, ev.Instance.ID)
			a.view(ev.Instance.ID)
			a.mu.Unlock()
		case discovery.Removed:
			a.mu.Lock()
			delete(a.workers, ev.Instance.ID)
			a.gone[ev.Instance.ID] = true
			a.mu.Unlock()
		}
	}
	cancel()
	kv.Close()
	load.Close()
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			return err
		}
	}
	return nil
}

// consume applies each event of a stream; loss notices go to lost.
func consume[T any](stream iter.Seq2[events.Event[T], error], apply func(events.Event[T]), lost func(*events.LossError)) error {
	for ev, err := range stream {
		var le *events.LossError
		switch {
		case errors.As(err, &le):
			if lost != nil {
				lost(le)
			}
		case err != nil:
			return err
		default:
			apply(ev)
		}
	}
	return nil
}

// view returns the worker's view, making it; a.mu is held.
func (a *Aggregator) view(id uint64) *WorkerView {
	w := a.workers[id]
	if w == nil {
		w = &WorkerView{InstanceID: id, Blocks: make(map[uint64]struct{})}
		a.workers[id] = w
	}
	return w
}

func (a *Aggregator) applyKv(ev events.Event[KvEvent]) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.gone[ev.InstanceID] {
		return
	}
	w := a.view(ev.InstanceID)
	if s := ev.Value.Stored; s != nil {
		for _, h := range s.BlockHashes {
			w.Blocks[h] = struct{}{}
		}
	}
	if r := ev.Value.Removed; r != nil {
		for _, h := range r.BlockHashes {
			delete(w.Blocks, h)
		}
	}
	w.Events++
	w.LastID = ev.Value.EventID
}

func (a *Aggregator) applyLoad(ev events.Event[LoadMetrics]) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.gone[ev.InstanceID] {
		a.view(ev.InstanceID).Load = ev.Value
	}
}

// gap marks the worker whose kv_events skipped a sequence as stale: its
// block set may be wrong until it is resynchronised (Dynamo's router asks
// the worker for its full state). It runs on the subscription's receiving
// goroutine, so it only takes the lock briefly.
func (a *Aggregator) gap(g events.Gap) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.gone[g.InstanceID] {
		a.view(g.InstanceID).Stale = true
	}
}

// lost handles the stream's loss notices. Gaps were handled by gap; events
// the buffer dropped may be anyone's, so they mark every worker.
func (a *Aggregator) lost(le *events.LossError) {
	if le.Dropped == 0 {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, w := range a.workers {
		w.Stale = true
	}
}

// Workers returns a copy of the views, ordered by instance id.
func (a *Aggregator) Workers() []WorkerView {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []WorkerView
	for _, id := range slices.Sorted(maps.Keys(a.workers)) {
		w := *a.workers[id]
		w.Blocks = maps.Clone(w.Blocks)
		out = append(out, w)
	}
	return out
}

// Print writes the views as a table.
func (a *Aggregator) Print(out io.Writer) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "worker\tkv events\tcached blocks\tactive slots\tcache usage\tstale")
	for _, w := range a.Workers() {
		fmt.Fprintf(tw, "%x\t%d\t%d\t%d/%d\t%.0f%%\t%v\n", w.InstanceID, w.Events, len(w.Blocks),
			w.Load.ActiveSlots, w.Load.TotalSlots, 100*w.Load.CacheUsage, w.Stale)
	}
	tw.Flush()
}

// worker serves an endpoint (so that discovery lists it) and publishes
// what happens to its KV cache.
type worker struct {
	rt     *loom.Runtime
	kv     *events.Publisher[KvEvent]
	load   *events.Publisher[LoadMetrics]
	rng    *rand.Rand
	blocks []uint64 // what it holds, in the order stored
	nextID uint64
}

const totalBlocks = 64

func startWorker(ctx context.Context, rt *loom.Runtime) (*worker, error) {
	ep, err := rt.Endpoint(namespace + "/" + component + "/" + endpoint)
	if err != nil {
		return nil, err
	}
	echo := loom.EngineFunc[string, string](func(ctx context.Context, s string) iter.Seq2[string, error] {
		return func(yield func(string, error) bool) { yield(s, nil) }
	})
	if err := loom.Serve(ctx, ep, echo); err != nil {
		return nil, err
	}
	w := &worker{rt: rt, rng: rand.New(rand.NewPCG(rt.ID(), 1))}
	if w.kv, err = events.NewPublisher[KvEvent](ctx, rt, workerScope, "kv_events"); err != nil {
		return nil, err
	}
	if w.load, err = events.NewPublisher[LoadMetrics](ctx, rt, workerScope, "load_metrics"); err != nil {
		return nil, err
	}
	return w, nil
}

// step stores a few blocks, evicts the oldest past the cache size, and
// publishes both events and the load.
func (w *worker) step(ctx context.Context) error {
	var parent *uint64
	if n := len(w.blocks); n > 0 {
		parent = &w.blocks[n-1]
	}
	stored := make([]uint64, 1+w.rng.IntN(4))
	for i := range stored {
		stored[i] = w.rng.Uint64()
	}
	w.blocks = append(w.blocks, stored...)
	if err := w.kv.Publish(ctx, KvEvent{EventID: w.nextID, Stored: &KvStored{ParentHash: parent, BlockHashes: stored}}); err != nil {
		return err
	}
	w.nextID++
	if over := len(w.blocks) - totalBlocks; over > 0 {
		removed := slices.Clone(w.blocks[:over])
		w.blocks = w.blocks[over:]
		if err := w.kv.Publish(ctx, KvEvent{EventID: w.nextID, Removed: &KvRemoved{BlockHashes: removed}}); err != nil {
			return err
		}
		w.nextID++
	}
	return w.load.Publish(ctx, LoadMetrics{ActiveSlots: w.rng.IntN(8), TotalSlots: 8, ActiveBlocks: len(w.blocks),
		TotalBlocks: totalBlocks, CacheUsage: float64(len(w.blocks)) / totalBlocks})
}

// run steps every tick, rounds times (forever if negative), until ctx ends.
func (w *worker) run(ctx context.Context, rounds int, tick time.Duration) error {
	t := time.NewTicker(tick)
	defer t.Stop()
	for i := 0; rounds < 0 || i < rounds; i++ {
		if err := w.step(ctx); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
	return nil
}

// scenario sizes the one-process run.
type scenario struct {
	workers int
	rounds  int
	tick    time.Duration
	cfg     *config.Config // nil: from the environment
}

// runAll is the one-process scenario: a router and workers, one of which
// stops halfway.
func runAll(ctx context.Context, out io.Writer, sc scenario) error {
	var cfg config.Config
	if sc.cfg != nil {
		cfg = *sc.cfg
	} else {
		loaded, err := config.Load()
		if err != nil {
			return err
		}
		cfg = loaded.Config
		if os.Getenv("NATS_SERVER") == "" && os.Getenv("LOOM_NATS_URL") == "" {
			ns, err := embedded.StartNATS(embedded.NATSOptions{JetStream: true})
			if err != nil {
				return err
			}
			defer ns.Shutdown()
			cfg.NATS.URL = ns.ClientURL()
		}
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	newRT := func() (*loom.Runtime, error) {
		return loom.NewRuntime(ctx, loom.WithConfig(cfg), loom.WithLogger(quiet))
	}
	routerRT, err := newRT()
	if err != nil {
		return err
	}
	defer routerRT.Shutdown(context.Background())
	agg := NewAggregator()
	actx, stopAgg := context.WithCancel(ctx)
	aggErr := make(chan error, 1)
	go func() { aggErr <- agg.Run(actx, routerRT) }()
	defer func() { stopAgg(); <-aggErr }()
	select {
	case <-agg.Ready():
	case err := <-aggErr:
		return err
	}

	var ws []runningWorker
	for range sc.workers {
		rt, err := newRT()
		if err != nil {
			return err
		}
		defer rt.Shutdown(context.Background())
		w, err := startWorker(ctx, rt)
		if err != nil {
			return err
		}
		if err := waitSubscribers(ctx, w); err != nil {
			return err
		}
		ws = append(ws, runningWorker{rt: rt, w: w, done: make(chan error, 1)})
	}
	for _, r := range ws {
		go func() { r.done <- r.w.run(ctx, sc.rounds, sc.tick) }()
	}
	for _, r := range ws {
		if err := <-r.done; err != nil {
			return err
		}
	}
	if err := agg.caughtUp(ctx, ws); err != nil {
		return err
	}
	fmt.Fprintf(out, "the router's view of %d workers:\n", len(ws))
	agg.Print(out)

	// One worker stops: it leaves discovery, the router drops it.
	gone := ws[len(ws)-1]
	if err := gone.rt.Shutdown(ctx); err != nil {
		return err
	}
	for deadline := time.Now().Add(10 * time.Second); len(agg.Workers()) != len(ws)-1; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf("the router still shows %d workers 10s after worker %x stopped", len(agg.Workers()), gone.rt.ID())
		}
	}
	fmt.Fprintf(out, "\nworker %x stopped; the router's view:\n", gone.rt.ID())
	agg.Print(out)
	return nil
}

// waitSubscribers waits for the router's subscriptions to reach a ZeroMQ
// worker's publishers (on the other transports there is nothing to wait
// for: the subscription is on the server).
func waitSubscribers(ctx context.Context, w *worker) error {
	if w.kv.Transport() != events.ZMQ {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := w.kv.WaitForSubscribers(ctx, 1); err != nil {
		return err
	}
	return w.load.WaitForSubscribers(ctx, 1)
}

// runningWorker is a worker of the one-process scenario.
type runningWorker struct {
	rt   *loom.Runtime
	w    *worker
	done chan error
}

// caughtUp waits until the aggregator has applied every worker's last
// kv event and load.
func (a *Aggregator) caughtUp(ctx context.Context, ws []runningWorker) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		views := map[uint64]WorkerView{}
		for _, v := range a.Workers() {
			views[v.InstanceID] = v
		}
		// What the router has of each worker that is behind, against
		// what the worker sent: a timeout then says which side stalled.
		var behind []string
		for _, r := range ws {
			v, ok := views[r.rt.ID()]
			switch {
			case !ok:
				behind = append(behind, fmt.Sprintf("%x not in the view", r.rt.ID()))
			case v.Events == 0 || v.LastID != r.w.nextID-1 || v.Load.ActiveBlocks != len(r.w.blocks):
				behind = append(behind, fmt.Sprintf("%x at event_id %d of %d (%d kv events applied), load of %d blocks of %d",
					r.rt.ID(), v.LastID, r.w.nextID-1, v.Events, v.Load.ActiveBlocks, len(r.w.blocks)))
			}
		}
		if len(behind) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the router is behind on %d of %d workers (%s): %w", len(behind), len(ws), strings.Join(behind, "; "), ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}
