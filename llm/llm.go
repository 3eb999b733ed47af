// Package llm holds what the parts of Loom's LLM serving stack say to each
// other: the request a frontend sends a worker and the responses it streams
// back, the model card a worker registers in discovery, the kv_events and
// load_metrics a worker publishes, the prefill queue's job, the block hashes
// both workers and routers compute, and the routing contract between a
// frontend and a router.
//
// The stack itself lives in subpackages: llm/frontend (an OpenAI-compatible
// HTTP server), llm/kvrouter (the KV-aware router), llm/mocker (mock engine
// workers) and llm/tokenizer. Each speaks only these types and Loom's public
// API, so a real inference engine can stand in for the mock by serving the
// same endpoint and publishing the same events. docs/llm.md describes the
// architecture.
package llm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"

	"github.com/cespare/xxhash/v2"

	"github.com/loomrt/loom"
)

// Names of the serving stack on Loom's planes. A worker serves
// {ns}/{WorkerComponent}/{GenerateEndpoint} and {ns}/{WorkerComponent}/{KvBlocksEndpoint}
// and publishes TopicKvEvents and TopicLoadMetrics in the scope
// {ns}/{WorkerComponent}.
const (
	DefaultNamespace = "llm"
	WorkerComponent  = "backend"
	GenerateEndpoint = "generate"
	// KvBlocksEndpoint streams the worker's whole KV block set (a
	// KvSnapshot), so that a router that missed events can replace its
	// view of the worker.
	KvBlocksEndpoint = "kv_blocks"
	TopicKvEvents    = "kv_events"
	TopicLoadMetrics = "load_metrics"
	// PrefillQueue is the durable work queue that decode workers hand
	// remote prefills to (the seeds' prefill_queue).
	PrefillQueue = "prefill_queue"
	// DefaultBlockSize is the number of tokens per KV block.
	DefaultBlockSize = 16
)

// Metadata keys of a worker's instance record: its model card.
const (
	MetaModel         = "model"
	MetaBlockSize     = "kv_block_size"
	MetaContextLength = "context_length"
	MetaKvBlocks      = "kv_total_blocks"
)

// ModelCard describes the model a worker serves. Workers put it in their
// instance record's metadata (Metadata); frontends read it back
// (ModelCardFrom) to list models and check requests.
type ModelCard struct {
	Name          string `json:"model"`
	BlockSize     int    `json:"kv_block_size"`
	ContextLength int    `json:"context_length"`
	KvBlocks      int    `json:"kv_total_blocks"`
}

// Metadata returns the card as instance-record metadata.
func (m ModelCard) Metadata() map[string]string {
	return map[string]string{
		MetaModel:         m.Name,
		MetaBlockSize:     strconv.Itoa(m.BlockSize),
		MetaContextLength: strconv.Itoa(m.ContextLength),
		MetaKvBlocks:      strconv.Itoa(m.KvBlocks),
	}
}

// ModelCardFrom reads a card from instance-record metadata.
func ModelCardFrom(md map[string]string) (ModelCard, error) {
	m := ModelCard{Name: md[MetaModel]}
	if m.Name == "" {
		return m, fmt.Errorf("llm: instance metadata has no %q key: not an LLM worker", MetaModel)
	}
	for _, f := range []struct {
		key string
		dst *int
	}{{MetaBlockSize, &m.BlockSize}, {MetaContextLength, &m.ContextLength}, {MetaKvBlocks, &m.KvBlocks}} {
		v, ok := md[f.key]
		if !ok {
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return m, fmt.Errorf("llm: model %q: metadata %s=%q is not a non-negative integer", m.Name, f.key, v)
		}
		*f.dst = n
	}
	if m.BlockSize == 0 {
		m.BlockSize = DefaultBlockSize
	}
	return m, nil
}

// Request is what a frontend sends a worker's generate endpoint: a prompt
// already tokenized (Dynamo's PreprocessedRequest).
type Request struct {
	// ID identifies the request across the stack (logs, routers, queues).
	ID    string `json:"id" msgpack:"id"`
	Model string `json:"model" msgpack:"model"`
	// TokenIDs is the prompt. When a request migrates to another worker
	// after some output was streamed, the frontend resends the prompt
	// followed by that output, and sets Generated to its length.
	TokenIDs []uint32 `json:"token_ids" msgpack:"token_ids"`
	// Generated counts the trailing TokenIDs that are output already
	// streamed to the client (0 unless the request migrated). MaxTokens
	// then counts what is still to generate.
	Generated int `json:"generated,omitempty" msgpack:"generated,omitempty"`
	// MaxTokens bounds the tokens to generate; the stream then ends with
	// FinishLength.
	MaxTokens int `json:"max_tokens" msgpack:"max_tokens"`
	// StopTokenIDs end generation (FinishStop) when generated; they are
	// not streamed.
	StopTokenIDs []uint32 `json:"stop_token_ids,omitempty" msgpack:"stop_token_ids,omitempty"`
}

// Finish reasons, as OpenAI names them.
const (
	FinishStop      = "stop"
	FinishLength    = "length"
	FinishCancelled = "cancelled"
)

// Response is one item of a worker's stream: the tokens generated since
// the last item (usually one), and on the last item why it ended.
type Response struct {
	TokenIDs     []uint32 `json:"token_ids" msgpack:"token_ids"`
	FinishReason string   `json:"finish_reason,omitempty" msgpack:"finish_reason,omitempty"`
	// Worker is the serving worker's instance id; CachedTokens counts the
	// prompt tokens it found in its KV cache. Both are set on the first
	// item.
	Worker       uint64 `json:"worker,omitempty" msgpack:"worker,omitempty"`
	CachedTokens int    `json:"cached_tokens,omitempty" msgpack:"cached_tokens,omitempty"`
}

// KvEvent is what a worker publishes on TopicKvEvents: blocks of its KV
// cache it stored or removed. It plays the part of Dynamo's KvCacheEvent
// but is not its wire shape: Dynamo nests the change under "data" (a
// "stored" with each block's block_hash and tokens_hash, a "removed", or
// "cleared") and adds dp_rank, so neither router reads the other's
// events. EventID counts from 1 per worker with no gaps, so a router can
// tell it missed one. TestWireShapes pins the encoding.
type KvEvent struct {
	EventID uint64     `json:"event_id" msgpack:"event_id"`
	Stored  *KvStored  `json:"stored,omitempty" msgpack:"stored,omitempty"`
	Removed *KvRemoved `json:"removed,omitempty" msgpack:"removed,omitempty"`
	// Cleared says the worker dropped its whole cache.
	Cleared bool `json:"cleared,omitempty" msgpack:"cleared,omitempty"`
}

// Check reports what makes ev, read off the network, not one change to a
// worker's cache: an event id of 0 (ids count from 1), or more than one
// of stored, removed and cleared (the reader could not tell in which
// order they happened).
func (ev *KvEvent) Check() error {
	if ev.EventID == 0 {
		return errors.New("llm: kv_event with event_id 0: event ids count from 1")
	}
	n := 0
	for _, set := range []bool{ev.Stored != nil, ev.Removed != nil, ev.Cleared} {
		if set {
			n++
		}
	}
	if n > 1 {
		return fmt.Errorf("llm: kv_event %d has more than one of stored, removed and cleared: publish one change an event", ev.EventID)
	}
	return nil
}

// KvStored lists blocks stored in order, the first chained to ParentHash
// (nil for a block at the start of a sequence).
type KvStored struct {
	ParentHash  *uint64  `json:"parent_hash,omitempty" msgpack:"parent_hash,omitempty"`
	BlockHashes []uint64 `json:"block_hashes" msgpack:"block_hashes"`
}

// KvRemoved lists blocks evicted.
type KvRemoved struct {
	BlockHashes []uint64 `json:"block_hashes" msgpack:"block_hashes"`
}

// KvBlock is one block of a snapshot with the block it chains to (0 for
// the first block of a sequence).
type KvBlock struct {
	Hash   uint64 `json:"hash" msgpack:"hash"`
	Parent uint64 `json:"parent,omitempty" msgpack:"parent,omitempty"`
}

// KvSnapshot is a worker's whole block set as of EventID (the last
// kv_event it published), streamed in chunks by KvBlocksEndpoint.
type KvSnapshot struct {
	EventID uint64    `json:"event_id" msgpack:"event_id"`
	Blocks  []KvBlock `json:"blocks" msgpack:"blocks"`
}

// LoadMetrics is what a worker publishes on TopicLoadMetrics: the seven
// fields of Dynamo's ForwardPassMetrics, under its names and flat, as
// its first releases sent them (later ones nest them in worker_stats and
// kv_stats), and Loom's prefill_tokens_pending and kv_event_id.
type LoadMetrics struct {
	ActiveSlots   int     `json:"request_active_slots" msgpack:"request_active_slots"`
	TotalSlots    int     `json:"request_total_slots" msgpack:"request_total_slots"`
	Waiting       int     `json:"num_requests_waiting" msgpack:"num_requests_waiting"`
	ActiveBlocks  int     `json:"kv_active_blocks" msgpack:"kv_active_blocks"`
	TotalBlocks   int     `json:"kv_total_blocks" msgpack:"kv_total_blocks"`
	CacheUsage    float64 `json:"gpu_cache_usage_perc" msgpack:"gpu_cache_usage_perc"`
	PrefixHitRate float64 `json:"gpu_prefix_cache_hit_rate" msgpack:"gpu_prefix_cache_hit_rate"`
	// PrefillTokens counts prompt tokens admitted but not yet prefilled.
	PrefillTokens int `json:"prefill_tokens_pending" msgpack:"prefill_tokens_pending"`
	// KvEventID is the id of the last kv_event the worker published
	// before this report; 0 (left out of the encoding) when it does not
	// say. A router that has not received that event a while later, with
	// none of its kv_events waiting, counts the events up to it as lost
	// and fetches the worker's block set: the report is how a router
	// learns of events lost at the end of a worker's sequence, which no
	// later event reveals while the worker is idle.
	KvEventID uint64 `json:"kv_event_id,omitempty" msgpack:"kv_event_id,omitempty"`
}

// MaxLoadCount bounds each count of a LoadMetrics report (LoadMetrics.Check):
// far beyond any engine's slots, blocks or tokens, and small enough that a
// router's cost of a prompt of millions of blocks cannot overflow.
const MaxLoadCount = 1 << 40

// Check reports the first count of m, read off the network, that no
// engine could report: below 0 or above MaxLoadCount. A router weighing
// such a report would send the worker every request (a negative load,
// or one so large that the cost overflows) or none. The fractions are
// not checked: they are for people, and a mock engine's cache usage may
// pass 1.
func (m *LoadMetrics) Check() error {
	for _, f := range []struct {
		name string
		v    int
	}{
		{"request_active_slots", m.ActiveSlots}, {"request_total_slots", m.TotalSlots},
		{"num_requests_waiting", m.Waiting}, {"kv_active_blocks", m.ActiveBlocks},
		{"kv_total_blocks", m.TotalBlocks}, {"prefill_tokens_pending", m.PrefillTokens},
	} {
		if f.v < 0 || f.v > MaxLoadCount {
			return fmt.Errorf("llm: load_metrics %s=%d: want a count from 0 to %d", f.name, f.v, MaxLoadCount)
		}
	}
	return nil
}

// RemotePrefillRequest is the prefill queue's job, with the fields of
// Dynamo's RemotePrefillRequest that a mock prefill needs (not its
// sampling_params or computed_block_ids); JSON, so that workers in other
// languages can read the queue.
type RemotePrefillRequest struct {
	EngineID       string `json:"engine_id"`
	RequestID      string `json:"request_id"`
	PromptTokenIDs []int  `json:"prompt_token_ids"`
	BlockIDs       []int  `json:"block_ids"`
}

// BlockHashes cuts tokens into full blocks of blockSize and returns each
// block's hash, chained: block i's hash covers its parent's hash and its
// own tokens, so equal prefixes give equal hash chains. A trailing partial
// block has no hash. Workers and routers in any process compute the same
// values (xxhash64, seed 0, over the parent hash and the tokens, little
// endian).
func BlockHashes(tokens []uint32, blockSize int) []uint64 {
	if blockSize <= 0 {
		blockSize = DefaultBlockSize
	}
	n := len(tokens) / blockSize
	if n == 0 {
		return nil
	}
	out := make([]uint64, n)
	buf := make([]byte, 8+4*blockSize)
	var parent uint64
	for i := range n {
		binary.LittleEndian.PutUint64(buf, parent)
		for j, t := range tokens[i*blockSize : (i+1)*blockSize] {
			binary.LittleEndian.PutUint32(buf[8+4*j:], t)
		}
		parent = xxhash.Sum64(buf)
		out[i] = parent
	}
	return out
}

// RouteInfo tells a Router what it routes: the frontend puts it in the
// request's context (WithRoute) before calling the workers' Client, and
// the router, a loom.Picker, reads it back (RouteFrom) and records its
// decision in it.
type RouteInfo struct {
	RequestID string
	Model     string
	TokenIDs  []uint32
	// Filtered, set by the caller, says that every candidate the router
	// is given already serves Model, so the router need not read each
	// worker's model card again. The frontend sets it: its picker passes
	// the router only the workers its own view of discovery has serving
	// the model.
	Filtered bool
	// Set by the router: the worker it chose and how many leading blocks
	// of the prompt it expected that worker to hold.
	Worker        uint64
	OverlapBlocks int
}

type routeKey struct{}

// WithRoute returns ctx carrying ri.
func WithRoute(ctx context.Context, ri *RouteInfo) context.Context {
	return context.WithValue(ctx, routeKey{}, ri)
}

// RouteFrom returns the RouteInfo in ctx, or nil.
func RouteFrom(ctx context.Context) *RouteInfo {
	ri, _ := ctx.Value(routeKey{}).(*RouteInfo)
	return ri
}

// Router chooses the worker for each request. It is a loom.Picker, given
// the candidates of the workers' Client; it must pick only workers whose
// model card serves RouteInfo.Model (see ServesModel), which it may take
// as given when RouteInfo.Filtered is set. Done tells it that
// a request it routed has ended, so that its own bookkeeping of the load
// it sent releases the request.
type Router interface {
	loom.Picker
	Done(requestID string)
}

// ErrNoWorker says no worker serves the requested model.
var ErrNoWorker = errors.New("llm: no worker serves the model")

// ServesModel returns the candidates whose model card names model, reusing
// dst's storage.
func ServesModel(dst, candidates []*loom.Candidate, model string) []*loom.Candidate {
	dst = dst[:0]
	for _, c := range candidates {
		if c.Metadata[MetaModel] == model {
			dst = append(dst, c)
		}
	}
	return dst
}

// PickerRouter makes a Router of a plain picker (round_robin, random,
// least_loaded): it filters the candidates by model and keeps no
// bookkeeping.
func PickerRouter(p loom.Picker) Router { return pickerRouter{p} }

type pickerRouter struct{ p loom.Picker }

func (r pickerRouter) Pick(ctx context.Context, candidates []*loom.Candidate) (*loom.Candidate, error) {
	ri := RouteFrom(ctx)
	if ri == nil || ri.Model == "" || ri.Filtered {
		c, err := r.p.Pick(ctx, candidates)
		if ri != nil && err == nil && c != nil {
			ri.Worker = c.ID
		}
		return c, err
	}
	matching := ServesModel(nil, candidates, ri.Model)
	if len(matching) == 0 {
		return nil, fmt.Errorf("%w: %q (%d workers, none with that model)", ErrNoWorker, ri.Model, len(candidates))
	}
	c, err := r.p.Pick(ctx, matching)
	if err == nil && c != nil {
		ri.Worker = c.ID
	}
	return c, err
}

func (pickerRouter) Done(string) {}
