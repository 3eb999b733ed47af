package watchview

import (
	"reflect"
	"slices"
	"testing"

	"github.com/loomrt/loom/discovery"
)

func rec(c string, id uint64) discovery.Instance {
	return discovery.Instance{
		Namespace: "ns", Component: c, Endpoint: "e", ID: id,
		Transport: "tcp", Address: "10.0.0.1:7000", Codec: "msgpack",
	}
}

// events renders events as "+key", "-key" and "synced", for comparing.
func events(evs []discovery.Event) []string {
	var out []string
	for _, e := range evs {
		switch e.Kind {
		case discovery.Added:
			out = append(out, "+"+e.Instance.Component)
		case discovery.Removed:
			out = append(out, "-"+e.Instance.Component)
		default:
			out = append(out, "synced")
		}
	}
	return out
}

func put(v *View, i discovery.Instance) {
	v.Cur[i.Component] = i
	v.Mark(i.Component)
}

func drop(v *View, key string) {
	delete(v.Cur, key)
	v.Mark(key)
}

func check(t *testing.T, what string, got []discovery.Event, want ...string) {
	t.Helper()
	if g := events(got); !slices.Equal(g, want) {
		t.Errorf("%s: %q, want %q", what, g, want)
	}
}

func TestAViewTellsTheNetChangeOfEachRecordInTheOrderOfItsLastChange(t *testing.T) {
	v := New()
	put(v, rec("b", 1))
	put(v, rec("a", 1))
	if got := v.Take(); got != nil {
		t.Fatalf("before the snapshot, Take = %q", events(got))
	}
	check(t, "the snapshot", v.Sync(), "+a", "+b", "synced")

	put(v, rec("c", 1))
	drop(v, "a")
	put(v, rec("b", 1)) // a refresh: the same record
	moved := rec("b", 1)
	moved.Address = "10.0.0.2:7000"
	put(v, rec("d", 1))
	drop(v, "d") // came and went unseen
	put(v, moved)
	check(t, "the changes", v.Take(), "+c", "-a", "-b", "+b")
	check(t, "nothing more", v.Take())

	put(v, rec("a", 1))
	drop(v, "a") // back to what the reader knows: nothing to tell
	check(t, "a change undone", v.Take())
}

func TestAResyncTellsWhatChangedWhileTheViewWasBlind(t *testing.T) {
	v := New()
	put(v, rec("a", 1))
	put(v, rec("b", 1))
	v.Sync()
	// Read again: a is gone, b is the same, c is new.
	clear(v.Cur)
	v.Cur["b"], v.Cur["c"] = rec("b", 1), rec("c", 1)
	if n := v.Resync(); n != 2 {
		t.Fatalf("Resync = %d, want 2", n)
	}
	check(t, "after the resync", v.Take(), "-a", "+c")
}

func TestEventsDoNotShareMetadataWithTheView(t *testing.T) {
	v := New()
	i := rec("a", 1)
	i.Metadata = map[string]string{"k": "v"}
	put(v, i)
	evs := v.Sync()
	evs[0].Instance.Metadata["k"] = "changed by the reader"
	drop(v, "a")
	if got := v.Take(); len(got) != 1 || got[0].Instance.Metadata["k"] != "v" {
		t.Fatalf("Removed carries %v, want the record as it was", got)
	}
}

// Same must compare every field of discovery.Instance, or a watcher would
// take a changed record for a refresh.
func TestSameComparesEveryField(t *testing.T) {
	base := rec("c", 1)
	base.Metadata = map[string]string{"k": "v"}
	typ := reflect.TypeFor[discovery.Instance]()
	for i := range typ.NumField() {
		other := Clone(base)
		f := reflect.ValueOf(&other).Elem().Field(i)
		switch f.Kind() {
		case reflect.String:
			f.SetString(f.String() + "x")
		case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
			f.SetUint(f.Uint() + 1)
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
			f.SetInt(f.Int() + 1)
		case reflect.Bool:
			f.SetBool(!f.Bool())
		case reflect.Map:
			other.Metadata["k"] = "w"
		default:
			t.Fatalf("field %s has kind %v; teach this test and Same about it", typ.Field(i).Name, f.Kind())
		}
		if Same(base, other) {
			t.Errorf("same ignores a change of %s", typ.Field(i).Name)
		}
	}
	empty, none := base, base
	empty.Metadata, none.Metadata = map[string]string{}, nil
	if !Same(empty, none) {
		t.Error("same tells empty metadata from none; JSON does not")
	}
}
