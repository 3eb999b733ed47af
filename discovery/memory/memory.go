// Package memory is the in-process discovery backend: records live in a
// [Store] in memory, for a program that runs as one process and for tests.
//
// Every client of one Store sees the records of the others, as processes
// sharing an etcd cluster would. A client's records live until it is closed,
// which stands for its process dying. Runtimes in one process find each
// other through the [Default] store unless given another.
//
// # Slow watchers
//
// Watchers never block the store. Each watch has a channel with a buffer
// of 64 events, and while the reader keeps up it gets every change as it
// happens. When the buffer is full, changes wait in a per-watch map keyed
// by record key, sent on by a goroutine the watch owns, and are coalesced:
// the reader is told the net change of each record, never an intermediate
// state, and never misses a Removed for a record it was told about (a
// record replaced while the reader was behind arrives as Removed then
// Added). Memory per watch is bounded by the number of records, not by the
// number of changes. Changes to different records may then arrive in an
// order other than the one they happened in.
package memory

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/loomrt/loom/discovery"
)

// watchBuffer is the capacity of each watch channel.
const watchBuffer = 64

// Store is the shared state of a set of in-memory discovery clients. Create
// one with [NewStore]; the zero value is not usable.
type Store struct {
	mu       sync.Mutex
	records  map[string]*record // by key
	watchers map[*watcher]struct{}
}

// record is one registered instance. A new Register makes a new record, so
// pointer identity tells two registrations of one key apart.
type record struct {
	inst  discovery.Instance
	owner *client
}

// NewStore returns an empty store.
func NewStore() *Store {
	return &Store{
		records:  make(map[string]*record),
		watchers: make(map[*watcher]struct{}),
	}
}

var defaultStore = sync.OnceValue(NewStore)

// Default returns the process-wide store.
func Default() *Store { return defaultStore() }

// New returns a client of a new private store.
func New() discovery.Discovery { return NewStore().Connect() }

// Connect returns a new client of the store. Closing it removes the records
// registered through it, as if its process had died.
func (s *Store) Connect() discovery.Discovery {
	return &client{
		store:    s,
		owned:    make(map[string]struct{}),
		watchers: make(map[*watcher]struct{}),
	}
}

// client implements discovery.Discovery on a Store.
type client struct {
	store *Store
	wg    sync.WaitGroup // watch goroutines

	// Guarded by store.mu.
	closed   bool
	owned    map[string]struct{}
	watchers map[*watcher]struct{}
}

var _ discovery.Discovery = (*client)(nil)

func (c *client) Register(ctx context.Context, inst discovery.Instance) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := inst.Validate(); err != nil {
		return err
	}
	s := c.store
	key := inst.Key()
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.closed {
		return discovery.ErrClosed
	}
	if _, ok := s.records[key]; ok {
		return fmt.Errorf("%w: %s (unregister it first or use another instance id)", discovery.ErrDuplicate, key)
	}
	r := &record{inst: clone(inst), owner: c}
	s.records[key] = r
	c.owned[key] = struct{}{}
	s.changed(key, r.inst, r)
	return nil
}

func (c *client) Unregister(ctx context.Context, inst discovery.Instance) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := inst.Validate(); err != nil {
		return err
	}
	s := c.store
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.closed {
		return discovery.ErrClosed
	}
	s.remove(inst.Key())
	return nil
}

func (c *client) List(ctx context.Context, q discovery.Query) ([]discovery.Instance, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := q.Validate(); err != nil {
		return nil, err
	}
	s := c.store
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.closed {
		return nil, discovery.ErrClosed
	}
	return s.match(q), nil
}

func (c *client) Watch(ctx context.Context, q discovery.Query) (<-chan discovery.Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := q.Validate(); err != nil {
		return nil, err
	}
	s := c.store
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.closed {
		return nil, discovery.ErrClosed
	}
	ctx, cancel := context.WithCancel(ctx)
	w := &watcher{
		q:       q,
		client:  c,
		cancel:  cancel,
		out:     make(chan discovery.Event, watchBuffer),
		wake:    make(chan struct{}, 1),
		told:    make(map[string]*record),
		pending: make(map[string]change),
		busy:    true, // with the snapshot
	}
	snapshot := s.match(q)
	first := make([]discovery.Event, 0, len(snapshot)+1)
	for _, inst := range snapshot {
		key := inst.Key()
		w.told[key] = s.records[key]
		first = append(first, discovery.Event{Kind: discovery.Added, Instance: inst})
	}
	first = append(first, discovery.Event{Kind: discovery.Synced})
	s.watchers[w] = struct{}{}
	c.watchers[w] = struct{}{}
	c.wg.Add(1)
	go w.run(ctx, first)
	return w.out, nil
}

// Close removes the client's records, telling every watcher, then closes
// the client's watch channels and waits for their goroutines to end. It is
// idempotent.
func (c *client) Close() error {
	s := c.store
	s.mu.Lock()
	if c.closed {
		s.mu.Unlock()
		return nil
	}
	c.closed = true
	for _, key := range slices.Sorted(maps.Keys(c.owned)) {
		s.remove(key)
	}
	for w := range c.watchers {
		w.cancel()
	}
	s.mu.Unlock()
	c.wg.Wait()
	return nil
}

// match returns copies of the records q selects, ordered by key. s.mu is held.
func (s *Store) match(q discovery.Query) []discovery.Instance {
	var out []discovery.Instance
	for _, r := range s.records {
		if q.Matches(r.inst) {
			out = append(out, clone(r.inst))
		}
	}
	slices.SortFunc(out, func(a, b discovery.Instance) int { return cmp.Compare(a.Key(), b.Key()) })
	return out
}

// remove deletes the record under key, if any. s.mu is held.
func (s *Store) remove(key string) {
	r, ok := s.records[key]
	if !ok {
		return
	}
	delete(s.records, key)
	delete(r.owner.owned, key)
	s.changed(key, r.inst, nil)
}

// changed tells the watchers whose query matches inst that the record under
// key is now to (nil if gone). s.mu is held.
func (s *Store) changed(key string, inst discovery.Instance, to *record) {
	for w := range s.watchers {
		if w.q.Matches(inst) {
			w.note(key, to)
		}
	}
}

// watcher is one Watch call. While the reader keeps up, changes go straight
// into out; once out is full they wait in pending for the watcher's
// goroutine (run), which sends them in batches.
type watcher struct {
	q      discovery.Query
	client *client
	cancel context.CancelFunc
	out    chan discovery.Event
	wake   chan struct{} // capacity 1: changes are pending

	// Guarded by store.mu.
	told    map[string]*record // what the reader will know once the taken events are sent
	pending map[string]change  // where each changed key is now, if not what told says
	seq     uint64
	busy    bool // run holds events it has not sent yet
}

// change is a pending change of one key: the record it now holds (nil if
// none) and when it last changed, for delivery in order.
type change struct {
	to  *record
	seq uint64
}

// note records that key now holds to. s.mu is held.
func (w *watcher) note(key string, to *record) {
	if !w.busy && len(w.pending) == 0 {
		// Nothing queued, so told is the store as the reader knows it
		// and this change is one event: send it now if there is room.
		ev := discovery.Event{Kind: discovery.Added}
		from := w.told[key]
		if from != nil {
			ev = discovery.Event{Kind: discovery.Removed, Instance: clone(from.inst)}
		} else if to != nil {
			ev.Instance = clone(to.inst)
		}
		if from == nil || to == nil {
			select {
			case w.out <- ev:
				if to != nil {
					w.told[key] = to
				} else {
					delete(w.told, key)
				}
				return
			default:
			}
		}
	}
	if w.told[key] == to {
		// Back where the reader last saw it, e.g. added and removed
		// before delivery: nothing to tell.
		delete(w.pending, key)
	} else {
		w.seq++
		w.pending[key] = change{to: to, seq: w.seq}
	}
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// take turns the pending changes into events, in the order of their last
// change, and marks them told. It returns nil if nothing is pending.
func (w *watcher) take() []discovery.Event {
	s := w.client.store
	s.mu.Lock()
	defer s.mu.Unlock()
	w.busy = len(w.pending) > 0
	if !w.busy {
		return nil
	}
	keys := slices.SortedFunc(maps.Keys(w.pending), func(a, b string) int {
		return cmp.Compare(w.pending[a].seq, w.pending[b].seq)
	})
	var events []discovery.Event
	for _, key := range keys {
		from, to := w.told[key], w.pending[key].to
		if from != nil {
			events = append(events, discovery.Event{Kind: discovery.Removed, Instance: clone(from.inst)})
		}
		if to != nil {
			events = append(events, discovery.Event{Kind: discovery.Added, Instance: clone(to.inst)})
			w.told[key] = to
		} else {
			delete(w.told, key)
		}
	}
	clear(w.pending)
	return events
}

// run delivers events until ctx ends (the caller's context or Close), then
// detaches the watcher and closes out.
func (w *watcher) run(ctx context.Context, events []discovery.Event) {
	defer w.client.wg.Done()
	defer close(w.out)
	defer w.detach()
	defer w.cancel()
	for {
		for _, ev := range events {
			if ctx.Err() != nil {
				return
			}
			select {
			case w.out <- ev:
			case <-ctx.Done():
				return
			}
		}
		if events = w.take(); events != nil {
			continue
		}
		select {
		case <-w.wake:
		case <-ctx.Done():
			return
		}
	}
}

func (w *watcher) detach() {
	s := w.client.store
	s.mu.Lock()
	delete(s.watchers, w)
	delete(w.client.watchers, w)
	s.mu.Unlock()
}

// clone copies inst so that neither the caller nor the store sees the
// other's later changes to Metadata.
func clone(inst discovery.Instance) discovery.Instance {
	inst.Metadata = maps.Clone(inst.Metadata)
	return inst
}
