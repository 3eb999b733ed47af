package etcd

import (
	"encoding/json"
	"fmt"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/loomrt/loom/discovery"
)

func rec(t *testing.T, id uint64, address string) *record {
	t.Helper()
	i := inst("ns", id)
	i.Address = address
	val, err := json.Marshal(i)
	if err != nil {
		t.Fatal(err)
	}
	return &record{key: i.Key(), val: string(val), inst: i}
}

// drain takes every event the watcher would send, applying them to set,
// and fails on one that does not follow from it.
func drain(t *testing.T, w *watcher, set map[string]discovery.Instance) {
	t.Helper()
	for {
		out, ev := w.next()
		if out == nil {
			return
		}
		w.pop()
		key := ev.Instance.Key()
		switch ev.Kind {
		case discovery.Added:
			if _, ok := set[key]; ok {
				t.Fatalf("Added %s, which the reader has", key)
			}
			set[key] = ev.Instance
		case discovery.Removed:
			if _, ok := set[key]; !ok {
				t.Fatalf("Removed %s, which the reader lacks", key)
			}
			delete(set, key)
		}
	}
}

// A reader that does not read costs one pending change per record, however
// many changes happen, and then gets the net change of each.
func TestAStalledReaderCostsOneChangePerRecord(t *testing.T) {
	w := &watcher{out: make(chan discovery.Event), told: map[string]*record{}, pending: map[string]pend{}}
	var snapshot []*record
	for id := uint64(1); id <= 200; id++ {
		snapshot = append(snapshot, rec(t, id, "a"))
	}
	w.load(snapshot, true)
	const records, rounds = 10, 1000
	for r := range rounds {
		for id := uint64(1); id <= records; id++ {
			w.change(rec(t, id, "").key, nil)
			w.change(rec(t, id, "").key, rec(t, id, fmt.Sprint(r)))
		}
		if len(w.pending) > records || len(w.order) > 2*records+watchQueue+1 {
			t.Fatalf("round %d: %d pending changes and %d order entries for %d records", r, len(w.pending), len(w.order), records)
		}
	}
	set := map[string]discovery.Instance{}
	first, ev := w.next()
	if first == nil || ev.Kind != discovery.Added {
		t.Fatalf("first event %v; want the snapshot's Added", ev.Kind)
	}
	drain(t, w, set)
	if len(set) != 200 {
		t.Fatalf("reader has %d records; want 200", len(set))
	}
	for id := uint64(1); id <= records; id++ {
		if got := set[rec(t, id, "").key].Address; got != fmt.Sprint(rounds-1) {
			t.Fatalf("record %d has address %q; want the last, %q", id, got, fmt.Sprint(rounds-1))
		}
	}
	if len(w.queue) > watchQueue || len(w.order) != 0 {
		t.Fatalf("after draining: queue %d, order %d", len(w.queue), len(w.order))
	}
}

// FuzzParse feeds records as anyone with access to etcd could leave them:
// parse must never panic, and a record it accepts is a valid instance whose
// key is the one it was read under.
func FuzzParse(f *testing.F) {
	good := `{"namespace":"ns","component":"c","endpoint":"e","instance_id":1,"transport":"tcp","address":"h:1","codec":"json"}`
	f.Add("v1/instances/ns/c/e/1", []byte(good))
	f.Add("v1/instances/ns/c/e/2", []byte(good)) // a value for another key
	f.Add("v1/instances/ns/c/e/1", []byte(`{"type":"Endpoint","namespace":"ns","component":"c","endpoint":"e","instance_id":1,"transport":{"tcp":"h:1"}}`))
	f.Add("v1/instances/ns/c/e/1", []byte(`{"namespace":"NS","component":"c","endpoint":"e","instance_id":1}`))
	f.Add("v1/instances/ns/c/e", []byte(good))
	f.Add("v1/instances/ns/c/e/1", []byte(`null`))
	d := &Discovery{log: quiet, warned: map[string]int64{}}
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		r := d.parse(&mvccpb.KeyValue{Key: []byte(key), Value: value, ModRevision: 1})
		if r == nil {
			return
		}
		if err := r.inst.Validate(); err != nil {
			t.Fatalf("parse(%q, %q) accepted an invalid instance: %v", key, value, err)
		}
		if r.key != key || r.inst.Key() != key || r.val != string(value) {
			t.Fatalf("parse(%q, %q) = %+v, whose key is %q", key, value, r, r.inst.Key())
		}
	})
}
