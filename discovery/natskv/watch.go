package natskv

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/discovery/internal/watchview"
)

// watchBuffer is the capacity of each watch channel.
const watchBuffer = 64

// Backoff of a watch that cannot start its KV watcher again.
const (
	minRestartWait = 100 * time.Millisecond
	maxRestartWait = 5 * time.Second
)

// startTimeout bounds the start of a KV watcher (the consumer's creation),
// which nats.go would otherwise wait for as long as its context lives.
const startTimeout = 10 * time.Second

// Watch streams the records q selects: an Added for each, one Synced, then
// Added and Removed as records come, go or expire. Refreshes of a record
// send nothing. After the NATS connection comes back from a disconnect, the
// watch reads the records again and sends the difference from what it had
// told. The channel is closed when ctx ends, when d is closed, or when the
// NATS connection is closed for good.
//
// A reader that falls behind never blocks the writers: changes wait in a
// per-watch map, one entry per record, and the reader gets each record's
// net change (a record replaced meanwhile arrives as Removed then Added).
func (d *Discovery) Watch(ctx context.Context, q discovery.Query) (<-chan discovery.Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := q.Validate(); err != nil {
		return nil, err
	}
	if d.isClosed() {
		return nil, discovery.ErrClosed
	}
	w := &watch{
		d:      d,
		filter: filter(q),
		out:    make(chan discovery.Event, watchBuffer),
		view:   watchview.New(),
	}
	// The watch ends with ctx or with Close, whichever comes first.
	wctx, cancel := context.WithCancel(d.tasks.Context())
	stop := context.AfterFunc(ctx, cancel)
	// Listen before the first read, so no reconnect is missed.
	reconnected := d.nc.StatusChanged(nats.CONNECTED)
	w.recreated = d.recreatedCh()
	if err := w.start(wctx); err != nil {
		stop()
		cancel()
		d.nc.RemoveStatusListener(reconnected)
		return nil, err
	}
	err := d.tasks.Go("natskv watch "+w.filter, func(context.Context) error {
		defer cancel()
		defer stop()
		w.run(wctx, reconnected)
		return nil
	})
	if err != nil { // closed meanwhile
		w.stopKV()
		stop()
		cancel()
		d.nc.RemoveStatusListener(reconnected)
		return nil, discovery.ErrClosed
	}
	return w.out, nil
}

// watch is one Watch call, run by one goroutine. It mirrors the records the
// current KV watcher reports in view.Cur (by KV key) and sends the reader
// the difference from what it was told.
type watch struct {
	d      *Discovery
	filter string
	out    chan discovery.Event

	recreated <-chan struct{} // closed when the bucket is created again after kw started

	kw       jetstream.KeyWatcher // nil while there is none
	kwCancel context.CancelFunc   // ends kw's context
	loading  bool                 // kw has not finished its snapshot
	maxRev   uint64               // the latest revision kw has sent
	check    bool                 // while loading: see whether kw has caught up

	view  *watchview.View
	queue []discovery.Event // taken from view, not sent yet
}

// start opens a KV watcher that will send the latest revision of each
// record, then nil, then changes.
func (w *watch) start(ctx context.Context) error {
	// The context lives as long as the KV watcher (nats.go unsubscribes
	// when it ends), so the start is bounded by a timer instead.
	kctx, cancel := context.WithCancel(ctx)
	timer := time.AfterFunc(startTimeout, cancel)
	kw, err := w.d.kv.Watch(kctx, w.filter)
	if !timer.Stop() && ctx.Err() == nil {
		if err == nil {
			stopKeyWatcher(w.d.nc, kw, cancel)
		}
		err = fmt.Errorf("no answer from JetStream within %v", startTimeout)
	}
	if err != nil {
		cancel()
		return fmt.Errorf("natskv: watch %s in bucket %q: %w", w.filter, w.d.bucket, err)
	}
	w.kw, w.kwCancel = kw, cancel
	w.loading, w.maxRev, w.check = true, 0, true
	clear(w.view.Cur)
	return nil
}

func (w *watch) stopKV() {
	if w.kw != nil {
		stopKeyWatcher(w.d.nc, w.kw, w.kwCancel)
		w.kw, w.kwCancel = nil, nil
	}
}

func (w *watch) run(ctx context.Context, reconnected chan nats.Status) {
	defer w.d.nc.RemoveStatusListener(reconnected)
	defer w.stopKV()
	defer close(w.out) // first: the reader need not wait for the unsubscribe

	restart := time.NewTimer(0)
	restart.Stop()
	defer restart.Stop()
	wait := minRestartWait
	retry := func(err error) {
		w.stopKV()
		if ctx.Err() != nil {
			return
		}
		w.d.log.Warn("natskv: watch cannot read the bucket; trying again", "filter", w.filter, "in", wait, "err", err)
		restart.Reset(wait)
		wait = min(2*wait, maxRestartWait)
	}
	again := func() {
		if err := w.start(ctx); err != nil {
			retry(err)
		}
	}

	for {
		if w.kw != nil && w.loading && w.check {
			w.check = false
			switch done, err := w.d.caughtUp(ctx, w.filter, w.maxRev); {
			case err != nil:
				retry(err)
			case done:
				w.loaded()
				wait = minRestartWait
			}
		}
		if len(w.queue) == 0 {
			w.queue = w.take()
		}
		var send chan<- discovery.Event
		var next discovery.Event
		if len(w.queue) > 0 {
			send, next = w.out, w.queue[0]
		}
		var updates <-chan jetstream.KeyValueEntry
		if w.kw != nil {
			updates = w.kw.Updates()
		}
		select {
		case <-ctx.Done():
			return
		case send <- next:
			w.queue[0] = discovery.Event{}
			w.queue = w.queue[1:]
		case e, ok := <-updates:
			switch {
			case !ok:
				w.stopKV()
				if w.d.nc.IsClosed() {
					w.d.log.Warn("natskv: the NATS connection is closed; ending the watch", "filter", w.filter)
					return
				}
				restart.Reset(wait)
			case e == nil: // nats.go's end of the snapshot, a hint only
				w.check = w.loading
			default:
				w.maxRev = max(w.maxRev, e.Revision())
				w.apply(e)
				w.check = w.loading && len(updates) == 0
			}
		case <-reconnected:
			// Changes made while disconnected never reached the old
			// consumer, and their markers may be gone: read again.
			w.stopKV()
			restart.Stop()
			again()
		case <-w.recreated:
			w.d.log.Info("natskv: the bucket was created again; reading it again", "filter", w.filter)
			w.recreated = w.d.recreatedCh()
			w.stopKV()
			restart.Stop()
			again()
		case <-restart.C:
			again()
		}
	}
}

// apply notes one change the KV watcher reports.
func (w *watch) apply(e jetstream.KeyValueEntry) {
	key := e.Key()
	inst, live := w.d.decode(e)
	old, had := w.view.Cur[key]
	switch {
	case live && had && watchview.Same(old, inst):
		return // a refresh
	case live:
		w.view.Cur[key] = inst
	case !had:
		return
	default:
		delete(w.view.Cur, key)
	}
	if !w.loading {
		w.view.Mark(key)
	}
}

// loaded handles the end of a KV watcher's snapshot: the first one becomes
// the Added events and Synced; a later one (after a reconnect) is compared
// with what the reader was told.
func (w *watch) loaded() {
	w.loading = false
	if !w.view.Synced() {
		w.queue = append(w.queue, w.view.Sync()...)
		return
	}
	if n := w.view.Resync(); n > 0 {
		w.d.log.Info("natskv: watch re-synced; sending what changed meanwhile", "filter", w.filter, "changed", n)
	}
}

// take turns the pending changes into events, unless a KV watcher is
// still loading its snapshot.
func (w *watch) take() []discovery.Event {
	if w.loading {
		return nil
	}
	return w.view.Take()
}
