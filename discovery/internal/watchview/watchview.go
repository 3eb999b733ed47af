// Package watchview keeps what one discovery watch knows of the records and
// what it has told its reader, and turns the difference into events: the
// part of Watch that the natskv and kube backends share.
//
// A reader that falls behind never blocks the backend: changes wait in a
// map, one entry per record, and the reader gets each record's net change,
// a record replaced meanwhile arriving as Removed then Added.
package watchview

import (
	"cmp"
	"maps"
	"reflect"
	"slices"

	"github.com/loomrt/loom/discovery"
)

// View is one watch's state. Its owner sets Cur and calls Mark for every
// key it changes; a View is not safe for concurrent use.
type View struct {
	// Cur holds the records as the backend reports them now, by key.
	Cur map[string]discovery.Instance

	told    map[string]discovery.Instance // by key: the records as the reader will know them once the events taken are sent
	pending map[string]uint64             // keys where Cur and told may differ, with the order of their last change
	seq     uint64
	synced  bool
}

// New returns an empty View, not synced.
func New() *View {
	return &View{
		Cur:     make(map[string]discovery.Instance),
		told:    make(map[string]discovery.Instance),
		pending: make(map[string]uint64),
	}
}

// Synced reports whether the first snapshot has been taken.
func (v *View) Synced() bool { return v.synced }

// Sync takes the first snapshot: an Added for each record in Cur, in key
// order, then Synced. From then on, Mark records changes.
func (v *View) Sync() []discovery.Event {
	insts := slices.SortedFunc(maps.Values(v.Cur), func(a, b discovery.Instance) int { return cmp.Compare(a.Key(), b.Key()) })
	events := make([]discovery.Event, 0, len(insts)+1)
	for _, inst := range insts {
		events = append(events, discovery.Event{Kind: discovery.Added, Instance: Clone(inst)})
	}
	events = append(events, discovery.Event{Kind: discovery.Synced})
	maps.Copy(v.told, v.Cur)
	v.synced = true
	return events
}

// Resync compares Cur, read again after the backend lost track of changes,
// with what the reader was told, and returns how many records differ.
func (v *View) Resync() int {
	clear(v.pending)
	keys := slices.Collect(maps.Keys(v.told))
	for k := range v.Cur {
		if _, ok := v.told[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		v.Mark(k)
	}
	return len(v.pending)
}

// Mark notes that the record under key may now differ from what the reader
// was told. Before Sync it does nothing: the snapshot will tell.
func (v *View) Mark(key string) {
	if !v.synced {
		return
	}
	from, hadFrom := v.told[key]
	to, hasTo := v.Cur[key]
	if hadFrom == hasTo && (!hasTo || Same(from, to)) {
		delete(v.pending, key)
		return
	}
	v.seq++
	v.pending[key] = v.seq
}

// Take turns the marked changes into events, in the order of their last
// change, and counts them as told.
func (v *View) Take() []discovery.Event {
	if !v.synced || len(v.pending) == 0 {
		return nil
	}
	keys := slices.SortedFunc(maps.Keys(v.pending), func(a, b string) int {
		return cmp.Compare(v.pending[a], v.pending[b])
	})
	var events []discovery.Event
	for _, k := range keys {
		from, hadFrom := v.told[k]
		to, hasTo := v.Cur[k]
		if hadFrom && hasTo && Same(from, to) {
			continue
		}
		if hadFrom {
			events = append(events, discovery.Event{Kind: discovery.Removed, Instance: Clone(from)})
			delete(v.told, k)
		}
		if hasTo {
			events = append(events, discovery.Event{Kind: discovery.Added, Instance: Clone(to)})
			v.told[k] = to
		}
	}
	clear(v.pending)
	return events
}

// Same reports whether a and b are the same record. It compares every
// field, present and future, as JSON does: empty metadata equals none.
func Same(a, b discovery.Instance) bool {
	if len(a.Metadata) == 0 && len(b.Metadata) == 0 {
		a.Metadata, b.Metadata = nil, nil
	}
	return reflect.DeepEqual(a, b)
}

// Clone copies inst so that a reader changing an event's Metadata does not
// change the watch's state.
func Clone(inst discovery.Instance) discovery.Instance {
	inst.Metadata = maps.Clone(inst.Metadata)
	return inst
}
