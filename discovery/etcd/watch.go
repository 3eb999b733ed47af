package etcd

import (
	"context"
	"maps"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/loomrt/loom/discovery"
)

// watchQueue bounds the events a watch holds in order for a reader that
// is behind; past it, changes are coalesced per record.
const watchQueue = 64

// Watch streams the records under q's prefix: the snapshot, Synced, then
// changes. See the package documentation for what a slow reader sees.
func (d *Discovery) Watch(ctx context.Context, q discovery.Query) (<-chan discovery.Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := q.Validate(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil, discovery.ErrClosed
	}
	d.wg.Add(1)
	d.mu.Unlock()

	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(d.ctx, cancel)
	w := &watcher{
		d:       d,
		prefix:  q.Prefix(),
		out:     make(chan discovery.Event),
		told:    make(map[string]*record),
		pending: make(map[string]pend),
	}
	go func() {
		defer d.wg.Done()
		defer close(w.out)
		defer cancel()
		defer stop()
		w.run(ctx)
	}()
	return w.out, nil
}

// watcher is one Watch call, run by one goroutine. Events it has decided
// to send wait in queue, in order; told is what the reader knows once they
// are sent. Changes beyond the queue wait in pending, one per key, and are
// sent in the order of their last change.
type watcher struct {
	d      *Discovery
	prefix string
	out    chan discovery.Event

	told    map[string]*record
	queue   []discovery.Event
	head    int // queue[head:] is unsent
	pending map[string]pend
	order   []ordered // pending keys by seq, with stale entries
	seq     uint64
}

type pend struct {
	to  *record // nil: absent
	seq uint64
}

type ordered struct {
	key string
	seq uint64
}

func (w *watcher) run(ctx context.Context) {
	b := backoff{min: 100 * time.Millisecond, max: 5 * time.Second}
	for first := true; ; first = false {
		// Taken before the read, so that a reconnect during it is seen.
		reconnected := w.d.reconnected()
		rev, ok := w.resync(ctx, &b, first)
		if !ok {
			return
		}
		start := time.Now()
		if !w.follow(ctx, rev, reconnected) {
			return
		}
		if time.Since(start) > 10*time.Second {
			b = backoff{min: b.min, max: b.max}
		}
		if !w.wait(ctx, b.next()) {
			return
		}
	}
}

// resync reads the prefix, retrying until it can, and turns what it
// read into events: the snapshot and Synced the first time, the
// difference from what the reader was told later. It returns the revision
// read at.
func (w *watcher) resync(ctx context.Context, b *backoff, first bool) (int64, bool) {
	for attempt := 1; ; attempt++ {
		gctx, cancel := context.WithTimeout(ctx, w.d.cfg.DialTimeout)
		recs, rev, err := w.d.read(gctx, w.prefix)
		cancel()
		if err == nil {
			w.load(recs, first)
			return rev, true
		}
		if ctx.Err() != nil {
			return 0, false
		}
		if attempt == 1 || attempt%10 == 0 {
			w.d.log.Warn("discovery: cannot read records from etcd for a watch; retrying", "prefix", w.prefix, "attempt", attempt, "error", err)
		}
		if !w.wait(ctx, b.next()) {
			return 0, false
		}
	}
}

func (w *watcher) load(recs []*record, first bool) {
	if first {
		for _, r := range recs {
			w.told[r.key] = r
			w.queue = append(w.queue, discovery.Event{Kind: discovery.Added, Instance: clone(r.inst)})
		}
		w.queue = append(w.queue, discovery.Event{Kind: discovery.Synced})
		return
	}
	fresh := make(map[string]*record, len(recs))
	for _, r := range recs {
		fresh[r.key] = r
	}
	keys := slices.Collect(maps.Keys(fresh))
	keys = slices.AppendSeq(keys, maps.Keys(w.told))
	keys = slices.AppendSeq(keys, maps.Keys(w.pending))
	slices.Sort(keys)
	for _, key := range slices.Compact(keys) {
		w.change(key, fresh[key])
	}
}

// follow watches from rev+1 and applies changes while sending events. It
// returns false when ctx ends, true when the etcd watch ended or the
// connection to etcd came back (reconnected is closed) and the caller
// should read again.
func (w *watcher) follow(ctx context.Context, rev int64, reconnected <-chan struct{}) bool {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := w.d.cli.Watch(wctx, w.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	for {
		out, next := w.next()
		select {
		case out <- next:
			w.pop()
		case wr, ok := <-wch:
			switch {
			case !ok:
				if ctx.Err() != nil {
					return false
				}
				w.d.log.Info("discovery: etcd watch ended; reading the records again", "prefix", w.prefix)
				return true
			case wr.CompactRevision != 0:
				w.d.log.Info("discovery: etcd compacted past the watch; reading the records again", "prefix", w.prefix, "compact_revision", wr.CompactRevision)
				return true
			case wr.Canceled || wr.Err() != nil:
				w.d.log.Warn("discovery: etcd cancelled the watch; reading the records again", "prefix", w.prefix, "error", wr.Err())
				return true
			}
			for _, ev := range wr.Events {
				var to *record
				if ev.Type == mvccpb.PUT {
					to = w.d.parse(ev.Kv)
				}
				w.change(string(ev.Kv.Key), to)
			}
		case <-reconnected:
			w.d.log.Info("discovery: connection to etcd is back; reading the records again", "prefix", w.prefix)
			return true
		case <-ctx.Done():
			return false
		}
	}
}

// wait sends events for d, reporting false if ctx ended.
func (w *watcher) wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		out, next := w.next()
		select {
		case out <- next:
			w.pop()
		case <-t.C:
			return true
		case <-ctx.Done():
			return false
		}
	}
}

// next returns the out channel and the event to send, or a nil channel if
// there is nothing to send.
func (w *watcher) next() (chan<- discovery.Event, discovery.Event) {
	if w.head == len(w.queue) {
		w.queue, w.head = w.queue[:0], 0
		w.refill()
	}
	if w.head == len(w.queue) {
		return nil, discovery.Event{}
	}
	return w.out, w.queue[w.head]
}

func (w *watcher) pop() {
	w.queue[w.head] = discovery.Event{}
	w.head++
	if w.head >= watchQueue {
		n := copy(w.queue, w.queue[w.head:])
		clear(w.queue[n:])
		w.queue, w.head = w.queue[:n], 0
	}
}

// view returns the record the reader will know under key once everything
// queued and pending is sent.
func (w *watcher) view(key string) *record {
	if p, ok := w.pending[key]; ok {
		return p.to
	}
	return w.told[key]
}

// change notes that key now holds to (nil: nothing).
func (w *watcher) change(key string, to *record) {
	if same(w.view(key), to) {
		return
	}
	if len(w.pending) == 0 && len(w.queue)-w.head+2 <= watchQueue {
		w.commit(key, to)
		return
	}
	if same(w.told[key], to) {
		delete(w.pending, key) // back to what the reader knows
		return
	}
	w.seq++
	w.pending[key] = pend{to: to, seq: w.seq}
	w.order = append(w.order, ordered{key: key, seq: w.seq})
	if len(w.order) > 2*len(w.pending)+watchQueue {
		w.order = slices.DeleteFunc(w.order, w.stale)
	}
}

func (w *watcher) stale(o ordered) bool {
	p, ok := w.pending[o.key]
	return !ok || p.seq != o.seq
}

// refill moves the oldest pending changes into the queue.
func (w *watcher) refill() {
	for len(w.pending) > 0 && len(w.queue)-w.head+2 <= watchQueue {
		o := w.order[0]
		w.order = w.order[1:]
		if w.stale(o) {
			continue
		}
		to := w.pending[o.key].to
		delete(w.pending, o.key)
		w.commit(o.key, to)
	}
	if len(w.pending) == 0 {
		w.order = nil
	}
}

// commit queues the events that take the reader from told[key] to to.
func (w *watcher) commit(key string, to *record) {
	from := w.told[key]
	if same(from, to) {
		return
	}
	if from != nil {
		w.queue = append(w.queue, discovery.Event{Kind: discovery.Removed, Instance: clone(from.inst)})
		delete(w.told, key)
	}
	if to != nil {
		w.queue = append(w.queue, discovery.Event{Kind: discovery.Added, Instance: clone(to.inst)})
		w.told[key] = to
	}
}

func same(a, b *record) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.val == b.val
}
