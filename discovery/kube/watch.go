package kube

import (
	"context"
	"maps"
	"math/rand/v2"
	"slices"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	kwatch "k8s.io/apimachinery/pkg/watch"

	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/discovery/internal/watchview"
)

// watchBuffer is the capacity of each watch channel.
const watchBuffer = 64

// Backoff of a watch that cannot reach the API server.
const (
	minRestartWait = 100 * time.Millisecond
	maxRestartWait = 5 * time.Second
)

// watchTimeout is about how long one API watch request lasts before the
// watch resumes it from its resource version (the API server ends long
// watches itself, too); a jitter of up to a minute spreads the resumes.
const watchTimeout = 5 * time.Minute

// Watch streams the records q selects: an Added for each live one, one
// Synced, then Added and Removed as records come, go, change or expire.
// Renewals of a record send nothing; a record whose content changed under
// the same key (a new address) arrives as Removed then Added.
//
// A record expires for the watcher when its Lease is not renewed within
// its duration, timed by the local clock from when the watcher saw the
// last renewal, so a crashed owner's record goes away although nothing
// deletes its Lease (the watcher then deletes it, one TTL later). While
// the API server cannot be reached, nothing expires: owners cannot renew
// then either. When the watch is back, every record that was live when it
// went away gets a full TTL to be renewed before it expires; one that had
// expired before stays expired.
//
// After a disconnect the watch resumes from the last resource version it
// saw. When the API server answers that it is too old (410 Gone), or after
// an outage its store is behind it (lost, or restored from an older copy),
// the watch reads the records again and sends the difference from what it
// had told. The channel is closed when ctx ends or when d is closed.
//
// A reader that falls behind never blocks anything: changes wait in a
// per-watch map, one entry per record, and the reader gets each record's
// net change.
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
	w := newWatch(d, q)
	// The first read is made here so that its error reaches the caller.
	if err := w.relist(ctx); err != nil {
		return nil, err
	}
	// The watch ends with ctx or with Close, whichever comes first.
	wctx, cancel := context.WithCancel(d.tasks.Context())
	stop := context.AfterFunc(ctx, cancel)
	err := d.tasks.Go("kube watch "+selector(q), func(context.Context) error {
		defer cancel()
		defer stop()
		w.run(wctx)
		return nil
	})
	if err != nil { // closed meanwhile
		stop()
		cancel()
		return nil, discovery.ErrClosed
	}
	return w.out, nil
}

func newWatch(d *Discovery, q discovery.Query) *watch {
	return &watch{
		d:      d,
		q:      q,
		out:    make(chan discovery.Event, watchBuffer),
		leases: make(map[string]*leaseState),
		view:   watchview.New(),
	}
}

// leaseState is what a watch knows of one Lease.
type leaseState struct {
	dec      decoded
	uid      types.UID
	version  string
	deadline time.Time // local clock: the record expires then unless renewed
}

// watch is one Watch call, run by one goroutine. It mirrors the live
// records in view.Cur and sends the reader the difference from what it was
// told.
type watch struct {
	d   *Discovery
	q   discovery.Query
	out chan discovery.Event

	api      kwatch.Interface // the API watch; nil while there is none
	version  string           // resource version to resume from
	relisted bool             // the next read must be a list (410 Gone)
	outage   bool             // the last API call failed
	liveLost map[string]bool  // by Lease name: the records live when the outage began

	leases map[string]*leaseState // by Lease name: well-formed Leases q matches
	view   *watchview.View        // Cur: the live records, by key
	queue  []discovery.Event      // taken from view, not sent yet
}

// relist reads every Lease q selects and replaces what the watch knew. The
// first read becomes the Added events and Synced; a later one (after 410
// Gone) is compared with what the reader was told.
func (w *watch) relist(ctx context.Context) error {
	lctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	items, version, err := w.d.list(lctx, w.q)
	if err != nil {
		return err
	}
	now := time.Now()
	old := w.leases
	w.leases = make(map[string]*leaseState, len(items))
	for i := range items {
		if st := w.state(&items[i], old[items[i].Name], now); st != nil {
			w.leases[items[i].Name] = st
		}
	}
	w.version = version
	w.relisted = false
	w.recompute(now)
	if !w.view.Synced() {
		w.queue = append(w.queue, w.view.Sync()...)
	}
	return nil
}

// state returns what the watch knows of l, given what it knew before (nil
// if nothing), or nil if l is not a record q selects.
func (w *watch) state(l *coordinationv1.Lease, prev *leaseState, now time.Time) *leaseState {
	dec, ok := w.d.decode(l)
	if !ok || !w.q.Matches(dec.inst) {
		return nil
	}
	st := &leaseState{dec: dec, uid: l.UID, version: l.ResourceVersion}
	switch {
	case prev != nil && prev.uid == l.UID && prev.dec.renew.Equal(dec.renew):
		st.deadline = prev.deadline // not renewed: a change of another field
	case prev != nil && prev.uid == l.UID:
		// A renewal seen now: timed by this clock alone, so clocks that
		// disagree never expire a live record.
		st.deadline = now.Add(dec.ttl)
	default:
		// First sight: the owner's clock says when it last renewed; a
		// Lease left by a process that died long ago is expired at once.
		st.deadline = minTime(dec.renew.Add(dec.ttl), now.Add(dec.ttl))
	}
	return st
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// recompute rebuilds view.Cur from the Lease states and marks every key whose
// record may differ from what the reader was told.
func (w *watch) recompute(now time.Time) {
	next := make(map[string]discovery.Instance, len(w.leases))
	for name, st := range w.leases {
		if w.live(name, st, now) {
			next[st.dec.inst.Key()] = st.dec.inst
		}
	}
	keys := make(map[string]bool, len(next)+len(w.view.Cur))
	for k := range w.view.Cur {
		keys[k] = true
	}
	for k := range next {
		keys[k] = true
	}
	w.view.Cur = next
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		w.view.Mark(k)
	}
}

// apply notes one event of the API watch.
func (w *watch) apply(ev kwatch.Event, now time.Time) {
	l, ok := ev.Object.(*coordinationv1.Lease)
	if !ok {
		return
	}
	if l.ResourceVersion != "" {
		w.version = l.ResourceVersion
	}
	switch ev.Type {
	case kwatch.Added, kwatch.Modified:
		prev := w.leases[l.Name]
		st := w.state(l, prev, now)
		if st == nil {
			w.forget(l.Name)
			return
		}
		if prev != nil && prev.dec.inst.Key() != st.dec.inst.Key() {
			w.forget(l.Name) // cannot happen: the name is the key's
		}
		w.leases[l.Name] = st
		w.update(l.Name, st, now)
	case kwatch.Deleted:
		w.forget(l.Name)
	}
}

// forget drops the Lease named name.
func (w *watch) forget(name string) {
	st, ok := w.leases[name]
	if !ok {
		return
	}
	delete(w.leases, name)
	key := st.dec.inst.Key()
	delete(w.view.Cur, key)
	w.view.Mark(key)
}

// live reports whether the record of the Lease named name is live: before
// its deadline, or, while the API server cannot be reached, live when the
// outage began (nothing expires during an outage, and nothing that had
// expired comes back).
func (w *watch) live(name string, st *leaseState, now time.Time) bool {
	return now.Before(st.deadline) || w.outage && w.liveLost[name]
}

// update sets the live record of the Lease named name from st.
func (w *watch) update(name string, st *leaseState, now time.Time) {
	key := st.dec.inst.Key()
	if w.live(name, st, now) {
		w.view.Cur[key] = st.dec.inst
	} else {
		delete(w.view.Cur, key)
	}
	w.view.Mark(key)
}

// due reports whether a live record's deadline has passed, and returns the
// next deadline or reaping time (zero if none) and the Leases expired for
// longer than their TTL, which nobody renews and the watch may delete.
func (w *watch) due(now time.Time) (due bool, next time.Time, dead []*leaseState) {
	if w.outage {
		return false, time.Time{}, nil
	}
	for _, st := range w.leases {
		at := st.deadline
		if !now.Before(at) {
			if _, live := w.view.Cur[st.dec.inst.Key()]; live {
				due = true
				continue
			}
			at = st.deadline.Add(st.dec.ttl) // when it may be reaped
			if !now.Before(at) {
				dead = append(dead, st)
				continue
			}
		}
		if next.IsZero() || at.Before(next) {
			next = at
		}
	}
	return due, next, dead
}

// lose notes that the API server cannot be reached from now on, and which
// records were live then.
func (w *watch) lose() {
	w.outage = true
	w.liveLost = make(map[string]bool, len(w.view.Cur))
	for name, st := range w.leases {
		if _, live := w.view.Cur[st.dec.inst.Key()]; live {
			w.liveLost[name] = true
		}
	}
}

// graceAfterOutage gives every record that was live when the outage began
// a full TTL from now: its owner could not renew while the API server was
// unreachable. A record that had expired before stays expired: its owner
// had stopped renewing while it still could, and bringing it back would
// invent an instance.
func (w *watch) graceAfterOutage(now time.Time) {
	for name, st := range w.leases {
		if !w.liveLost[name] {
			continue
		}
		if d := now.Add(st.dec.ttl); d.After(st.deadline) {
			st.deadline = d
		}
	}
}

// connect starts the API watch from w.version, reading the records again
// first if the version is too old. It returns the error of a failed call.
func (w *watch) connect(ctx context.Context) error {
	if w.outage && !w.relisted {
		// The API server may be back on a store that lost its data or was
		// restored from an older copy: its resource versions are then
		// behind w.version, and a watch from there would wait, missing
		// every change, until the store caught up.
		behind, err := w.d.storeBehind(ctx, w.version)
		if err != nil {
			return err
		}
		w.relisted = behind
	}
	if w.relisted {
		w.d.relists.Add(1)
		w.d.log.Info("kube: watch lists the records again (its resource version was too old)", "selector", selector(w.q))
		if err := w.relist(ctx); err != nil {
			return err
		}
	}
	timeout := int64((watchTimeout + rand.N(time.Minute)) / time.Second)
	api, err := w.d.leases.Watch(ctx, metav1.ListOptions{
		LabelSelector:       selector(w.q),
		ResourceVersion:     w.version,
		AllowWatchBookmarks: true,
		TimeoutSeconds:      &timeout,
	})
	if err != nil {
		if tooOld(err) {
			w.relisted = true
			return w.connect(ctx)
		}
		return w.d.apiError("watch Leases "+selector(w.q), err)
	}
	w.api = api
	return nil
}

// tooOld reports the API server's answer to a resource version it no
// longer has.
func tooOld(err error) bool {
	return apierrors.IsResourceExpired(err) || apierrors.IsGone(err)
}

func (w *watch) stopAPI() {
	if w.api != nil {
		w.api.Stop()
		w.api = nil
	}
}

func (w *watch) run(ctx context.Context) {
	defer w.stopAPI()
	defer close(w.out) // first: the reader need not wait for the rest

	retry := time.NewTimer(0) // connect at once
	defer retry.Stop()
	expiry := time.NewTimer(0)
	defer expiry.Stop()
	wait := minRestartWait
	var connected, lost time.Time
	// ended handles the end of the API watch: until a new one is open,
	// nothing expires.
	ended := func(err error) {
		w.stopAPI()
		if ctx.Err() != nil {
			return
		}
		if !w.outage {
			w.lose()
			lost = time.Now()
		}
		if err != nil {
			w.d.log.Warn("kube: watch cannot reach the API server; records do not expire until it is back",
				"selector", selector(w.q), "err", err)
		}
		// Resume at once after a watch that lasted, else back off.
		if err == nil && time.Since(connected) >= time.Second {
			retry.Reset(0)
			return
		}
		retry.Reset(wait)
		wait = min(2*wait, maxRestartWait)
	}
	dirty := true // the expiry timer must be set again
	for {
		if dirty {
			dirty = false
			now := time.Now()
			due, next, dead := w.due(now)
			if due {
				// A record is about to expire. The watch may be stale (an
				// API server shutting down keeps it open but serves
				// nothing), so the expiry is confirmed by a fresh list:
				// a renewal the watch missed keeps the record, and a list
				// that fails is an outage, never a removal.
				if err := w.relist(ctx); err != nil {
					ended(err)
				} else {
					w.stopAPI() // resume from the list's version
					retry.Reset(0)
				}
				dirty = true
				continue
			}
			w.reap(dead)
			expiry.Stop()
			if !next.IsZero() {
				expiry.Reset(next.Sub(now))
			}
		}
		if len(w.queue) == 0 {
			w.queue = w.view.Take()
		}
		var send chan<- discovery.Event
		var next discovery.Event
		if len(w.queue) > 0 {
			send, next = w.out, w.queue[0]
		}
		var events <-chan kwatch.Event
		if w.api != nil {
			events = w.api.ResultChan()
		}
		select {
		case <-ctx.Done():
			return
		case send <- next:
			w.queue[0] = discovery.Event{}
			w.queue = w.queue[1:]
		case <-retry.C:
			if err := w.connect(ctx); err != nil {
				ended(err)
				continue
			}
			connected = time.Now()
			if w.outage {
				// Owners could not renew while the watch was away: every
				// record live when it went away gets a full TTL from now.
				// A resume without a pause needs none.
				if connected.Sub(lost) >= retryWait {
					w.graceAfterOutage(connected)
					w.d.log.Info("kube: watch reached the API server again", "selector", selector(w.q), "after", connected.Sub(lost).Round(time.Millisecond))
				}
				w.outage, w.liveLost = false, nil
				w.recompute(connected)
			}
			dirty = true
		case <-expiry.C:
			dirty = true
		case ev, ok := <-events:
			switch {
			case !ok:
				ended(nil)
			case ev.Type == kwatch.Bookmark:
				if m, err := metaOf(ev.Object); err == nil {
					w.version = m.GetResourceVersion()
				}
				wait = minRestartWait
			case ev.Type == kwatch.Error:
				err := apierrors.FromObject(ev.Object)
				if tooOld(err) {
					w.relisted = true
					ended(nil)
					retry.Reset(0)
					continue
				}
				ended(w.d.apiError("watch Leases "+selector(w.q), err))
			default:
				w.apply(ev, time.Now())
				wait = minRestartWait
				dirty = true
			}
		}
	}
}

// reap deletes Leases that expired more than a TTL ago and that nobody
// renewed since: their owner is gone and left them behind. The deletion
// holds only if the Lease is still the version the watch saw, so a late
// renewal wins.
func (w *watch) reap(dead []*leaseState) {
	for _, st := range dead {
		name := LeaseName(st.dec.inst.Key())
		id := string(st.uid) + "/" + st.version
		w.d.mu.Lock()
		busy := w.d.reaped[id]
		w.d.reaped[id] = true
		w.d.mu.Unlock()
		if busy {
			continue
		}
		uid, version := st.uid, st.version
		_ = w.d.tasks.Go("kube reap "+name, func(ctx context.Context) error {
			ctx, cancel := context.WithTimeout(ctx, apiTimeout)
			defer cancel()
			err := w.d.leases.Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{
				UID: &uid, ResourceVersion: &version,
			}})
			switch {
			case err == nil:
				w.d.reaps.Add(1)
				w.d.log.Info("kube: deleted the Lease of a record whose owner stopped renewing it", "lease", name)
			case apierrors.IsNotFound(err) || apierrors.IsConflict(err):
			default:
				w.d.log.Warn("kube: deleting an expired Lease failed; trying again at the next expiry check", "lease", name, "err", err)
			}
			// Forgotten once settled, so that a long-lived process does
			// not keep every Lease it ever reaped: that version of the
			// Lease is gone or was renewed (a new version), and a check
			// before the watch hears of it costs one NotFound.
			w.d.mu.Lock()
			delete(w.d.reaped, id)
			w.d.mu.Unlock()
			return nil
		})
	}
}

// metaOf returns the object metadata of a watch event's object.
func metaOf(obj any) (metav1.Object, error) {
	if m, ok := obj.(metav1.Object); ok {
		return m, nil
	}
	return nil, errNotObject
}
