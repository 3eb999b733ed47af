package llm

import (
	"context"
	"errors"
	"maps"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/codec"
	"github.com/loomrt/loom/discovery"
)

func TestBlockHashesChainEqualPrefixes(t *testing.T) {
	a := []uint32{1, 2, 3, 4, 5, 6, 7, 8, 9}
	b := []uint32{1, 2, 3, 4, 5, 6, 70, 8, 9}
	ha, hb := BlockHashes(a, 2), BlockHashes(b, 2)
	if len(ha) != 4 || len(hb) != 4 {
		t.Fatalf("got %d and %d hashes for 9 tokens in blocks of 2, want 4 (the partial block has none)", len(ha), len(hb))
	}
	if !slices.Equal(ha[:3], hb[:3]) {
		t.Errorf("equal prefixes gave different hashes: %x vs %x", ha[:3], hb[:3])
	}
	if ha[3] == hb[3] {
		t.Errorf("block 3 differs in its tokens but has the same hash %x", ha[3])
	}
	// A block's hash depends on its parent: the same tokens after a
	// different prefix hash differently.
	c := []uint32{9, 9, 3, 4}
	if BlockHashes(c, 2)[1] == ha[1] {
		t.Error("block [3 4] hashed the same under different parents")
	}
	if BlockHashes(a[:1], 2) != nil {
		t.Error("a prompt shorter than a block has hashes")
	}
}

func TestModelCardRoundTrip(t *testing.T) {
	in := ModelCard{Name: "mock-llama", BlockSize: 32, ContextLength: 8192, KvBlocks: 1024}
	out, err := ModelCardFrom(in.Metadata())
	if err != nil || out != in {
		t.Fatalf("ModelCardFrom(Metadata()) = %+v, %v; want %+v", out, err, in)
	}
	if _, err := ModelCardFrom(map[string]string{"x": "y"}); err == nil {
		t.Error("metadata without a model was accepted")
	}
	if _, err := ModelCardFrom(map[string]string{MetaModel: "m", MetaBlockSize: "-3"}); err == nil {
		t.Error("a negative block size was accepted")
	}
	got, err := ModelCardFrom(map[string]string{MetaModel: "m"})
	if err != nil || got.BlockSize != DefaultBlockSize {
		t.Errorf("a card without a block size = %+v, %v; want block size %d", got, err, DefaultBlockSize)
	}
}

func TestPickerRouterFiltersByModel(t *testing.T) {
	cands := []*loom.Candidate{
		{Instance: discovery.Instance{ID: 1, Metadata: map[string]string{MetaModel: "a"}}},
		{Instance: discovery.Instance{ID: 2, Metadata: map[string]string{MetaModel: "b"}}},
	}
	r := PickerRouter(loom.RoundRobin())
	for range 4 {
		ri := &RouteInfo{Model: "b"}
		c, err := r.Pick(WithRoute(context.Background(), ri), cands)
		if err != nil || c.ID != 2 || ri.Worker != 2 {
			t.Fatalf("Pick for model b = %v, %v (route worker %d); want instance 2", c, err, ri.Worker)
		}
	}
	_, err := r.Pick(WithRoute(context.Background(), &RouteInfo{Model: "zzz"}), cands)
	if !errors.Is(err, ErrNoWorker) {
		t.Errorf("Pick for an unserved model = %v, want ErrNoWorker", err)
	}
	// Filtered: the caller has chosen the workers of the model by its own
	// view, so the cards are not read again.
	ri := &RouteInfo{Model: "zzz", Filtered: true}
	if c, err := r.Pick(WithRoute(context.Background(), ri), cands[:1]); err != nil || c.ID != 1 || ri.Worker != 1 {
		t.Errorf("Pick among candidates filtered for model zzz = %v, %v (route worker %d); want instance 1", c, err, ri.Worker)
	}
}

// TestLoadMetricsKeepDynamosFieldsWithoutAKvEventID: a report that names
// no kv_event encodes exactly the seven fields of Dynamo's flat
// ForwardPassMetrics and Loom's prefill_tokens_pending, in JSON and in
// MessagePack; one that does carries kv_event_id, and both read back as
// written.
func TestLoadMetricsKeepDynamosFieldsWithoutAKvEventID(t *testing.T) {
	dynamo := []string{"request_active_slots", "request_total_slots", "num_requests_waiting", "kv_active_blocks",
		"kv_total_blocks", "gpu_cache_usage_perc", "gpu_prefix_cache_hit_rate", "prefill_tokens_pending"} // the last is Loom's
	for _, name := range []string{codec.JSONName, codec.MsgPackName} {
		cdc, err := codec.ByName(name)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range []LoadMetrics{{ActiveSlots: 3, TotalSlots: 8, CacheUsage: 0.5}, {ActiveSlots: 1, KvEventID: 42}} {
			b, err := cdc.Marshal(nil, m)
			if err != nil {
				t.Fatal(err)
			}
			var keys map[string]any
			if err := cdc.Unmarshal(b, &keys); err != nil {
				t.Fatal(err)
			}
			want := dynamo
			if m.KvEventID != 0 {
				want = append(slices.Clone(dynamo), "kv_event_id")
			}
			got := slices.Sorted(maps.Keys(keys))
			if slices.Sort(want); !slices.Equal(got, want) {
				t.Errorf("%s of %+v has keys %v, want %v", name, m, got, want)
			}
			var back LoadMetrics
			if err := cdc.Unmarshal(b, &back); err != nil || back != m {
				t.Errorf("%s: %+v read back as %+v (err %v)", name, m, back, err)
			}
		}
	}
}

// FuzzModelCardFrom: a model card comes from a worker's instance record in
// discovery, written by any process. It reads as a card with a name, a
// positive block size and no negative count, which its own metadata
// gives back, or as an error.
func FuzzModelCardFrom(f *testing.F) {
	f.Add("m", "16", "8192", "1024", uint8(15))
	f.Add("", "16", "0", "0", uint8(15))
	f.Add("m", "-1", "x", "99999999999999999999", uint8(15))
	f.Add("m", "0", "", "+5", uint8(3))
	f.Fuzz(func(t *testing.T, name, bs, ctxLen, kv string, present uint8) {
		md := map[string]string{}
		for i, kv := range [][2]string{{MetaModel, name}, {MetaBlockSize, bs}, {MetaContextLength, ctxLen}, {MetaKvBlocks, kv}} {
			if present&(1<<i) != 0 {
				md[kv[0]] = kv[1]
			}
		}
		c, err := ModelCardFrom(md)
		if err != nil {
			if err.Error() == "" {
				t.Fatalf("%v: an empty error", md)
			}
			return
		}
		if c.Name == "" || c.BlockSize <= 0 || c.ContextLength < 0 || c.KvBlocks < 0 {
			t.Fatalf("%v read as %+v", md, c)
		}
		if back, err := ModelCardFrom(c.Metadata()); err != nil || back != c {
			t.Fatalf("%v read as %+v, whose metadata reads as %+v, %v", md, c, back, err)
		}
	})
}

// TestLoadMetricsCheckNamesTheCountOutOfRange: a report's counts come
// off the network; Check names the first out of range.
func TestLoadMetricsCheckNamesTheCountOutOfRange(t *testing.T) {
	sound := LoadMetrics{ActiveSlots: 3, TotalSlots: 8, Waiting: 1, ActiveBlocks: MaxLoadCount, TotalBlocks: 8192, CacheUsage: 1.25, PrefillTokens: 10}
	if err := sound.Check(); err != nil {
		t.Fatalf("%+v: %v", sound, err)
	}
	for field, m := range map[string]LoadMetrics{
		"request_active_slots":   {ActiveSlots: -1},
		"request_total_slots":    {TotalSlots: MaxLoadCount + 1},
		"num_requests_waiting":   {Waiting: math.MaxInt},
		"kv_active_blocks":       {ActiveBlocks: math.MinInt},
		"kv_total_blocks":        {TotalBlocks: -5},
		"prefill_tokens_pending": {PrefillTokens: -1},
	} {
		if err := m.Check(); err == nil || !strings.Contains(err.Error(), field+"=") {
			t.Errorf("%+v: %v; want an error naming %s", m, err, field)
		}
	}
}

// TestKvEventCheckRefusesWhatIsNotOneChange: a kv_event off the network
// is one change with an id from 1.
func TestKvEventCheckRefusesWhatIsNotOneChange(t *testing.T) {
	for _, ev := range []KvEvent{{EventID: 1}, {EventID: 2, Stored: &KvStored{}}, {EventID: 3, Removed: &KvRemoved{}}, {EventID: 4, Cleared: true}} {
		if err := ev.Check(); err != nil {
			t.Errorf("%+v: %v", ev, err)
		}
	}
	for want, ev := range map[string]KvEvent{
		"event_id 0":                  {Cleared: true},
		"more than one":               {EventID: 5, Stored: &KvStored{}, Removed: &KvRemoved{}},
		"stored, removed and cleared": {EventID: 6, Removed: &KvRemoved{}, Cleared: true},
	} {
		if err := ev.Check(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%+v: %v; want an error saying %q", ev, err, want)
		}
	}
}
