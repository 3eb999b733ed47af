package llm

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/loomrt/loom/codec"
)

// TestWireShapes pins what the serving stack's messages look like on
// the wire, for engines written in other languages: the exact JSON the
// codec writes, and the same keys and values in MessagePack (the event
// plane's default). A renamed field or a changed omitempty fails here.
func TestWireShapes(t *testing.T) {
	parent := uint64(7)
	for _, tc := range []struct {
		name string
		v    any
		json string
	}{
		{"kv_event stored", KvEvent{EventID: 3, Stored: &KvStored{ParentHash: &parent, BlockHashes: []uint64{8, 18446744073709551615}}},
			`{"event_id":3,"stored":{"parent_hash":7,"block_hashes":[8,18446744073709551615]}}`},
		{"kv_event stored at the start of a sequence", KvEvent{EventID: 1, Stored: &KvStored{BlockHashes: []uint64{9}}},
			`{"event_id":1,"stored":{"block_hashes":[9]}}`},
		{"kv_event removed", KvEvent{EventID: 4, Removed: &KvRemoved{BlockHashes: []uint64{8}}},
			`{"event_id":4,"removed":{"block_hashes":[8]}}`},
		{"kv_event cleared", KvEvent{EventID: 5, Cleared: true}, `{"event_id":5,"cleared":true}`},
		{"kv_blocks request", KvBlocksRequest{ChunkBlocks: 512}, `{"chunk_blocks":512}`},
		{"kv_blocks chunk", KvSnapshot{EventID: 5, Blocks: []KvBlock{{Hash: 9}, {Hash: 10, Parent: 9}}},
			`{"event_id":5,"blocks":[{"hash":9},{"hash":10,"parent":9}]}`},
		{"load_metrics", LoadMetrics{ActiveSlots: 1, TotalSlots: 32, Waiting: 2, ActiveBlocks: 40, TotalBlocks: 8192, CacheUsage: 0.5, PrefixHitRate: 0.25, PrefillTokens: 100, KvEventID: 5},
			`{"request_active_slots":1,"request_total_slots":32,"num_requests_waiting":2,"kv_active_blocks":40,"kv_total_blocks":8192,"gpu_cache_usage_perc":0.5,"gpu_prefix_cache_hit_rate":0.25,"prefill_tokens_pending":100,"kv_event_id":5}`},
		{"prefill job", RemotePrefillRequest{EngineID: "1f", RequestID: "1f-1", PromptTokenIDs: []int{1, 2}, BlockIDs: []int{0}},
			`{"engine_id":"1f","request_id":"1f-1","prompt_token_ids":[1,2],"block_ids":[0]}`},
		{"request", Request{ID: "r", Model: "m", TokenIDs: []uint32{1, 2}, Generated: 1, MaxTokens: 8, StopTokenIDs: []uint32{257}},
			`{"id":"r","model":"m","token_ids":[1,2],"generated":1,"max_tokens":8,"stop_token_ids":[257]}`},
		{"response", Response{TokenIDs: []uint32{300}, FinishReason: FinishStop, Worker: 31, CachedTokens: 16},
			`{"token_ids":[300],"finish_reason":"stop","worker":31,"cached_tokens":16}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := codec.JSON.Marshal(nil, tc.v)
			if err != nil || string(b) != tc.json {
				t.Fatalf("JSON %s (%v), want %s", b, err, tc.json)
			}
			mp, err := codec.ByName(codec.MsgPackName)
			if err != nil {
				t.Fatal(err)
			}
			m, err := mp.Marshal(nil, tc.v)
			if err != nil {
				t.Fatal(err)
			}
			// Keys and values, whatever the integer widths: through a
			// generic value into JSON with sorted keys, beside the JSON
			// read the same way.
			var fromMsgpack, fromJSON any
			if err := mp.Unmarshal(m, &fromMsgpack); err != nil {
				t.Fatal(err)
			}
			d := json.NewDecoder(strings.NewReader(tc.json))
			d.UseNumber()
			if err := d.Decode(&fromJSON); err != nil {
				t.Fatal(err)
			}
			got, _ := json.Marshal(fromMsgpack)
			want, _ := json.Marshal(fromJSON)
			if string(got) != string(want) {
				t.Errorf("MessagePack reads as %s, want %s", got, want)
			}
		})
	}
}
