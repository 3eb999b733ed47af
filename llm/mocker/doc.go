// Package mocker runs mock inference-engine workers: they simulate an
// LLM engine on the CPU at a configurable speed and speak the serving
// stack's protocol (package llm), so that a frontend, a router and a load
// generator can be built, tested and measured without GPUs.
//
// A worker admits requests into a continuously batched set of at most
// Config.MaxBatch (more wait), prefills each prompt in
// Config.PrefillPerToken per token not found in its KV cache, then decodes
// one token per Config.DecodeStep for the whole batch. Its KV cache holds
// Config.KvBlocks blocks of Config.BlockSize tokens, identified by chained
// hashes (llm.BlockHashes), shared by every request with the same prefix,
// reference-counted while in use and evicted least recently used first.
//
// On Loom's planes a worker
//   - serves {ns}/backend/generate (llm.Request in, a stream of
//     llm.Response out; the first item names the worker and the prompt
//     tokens it found cached) with its model card as instance metadata;
//   - serves {ns}/backend/kv_blocks, a stream of llm.KvSnapshot chunks of
//     its whole block set, for routers that missed events;
//   - publishes kv_events (blocks stored with their parent hash, removed,
//     cleared; event ids from 1 without gaps; blocks evicted one after
//     another before the publisher takes them leave in one removed event)
//     and load_metrics (on change, rate-limited, and periodically) in
//     scope {ns}/backend.
//
// Output is deterministic: output token k of a request is a pure function
// of its original prompt (TokenIDs without the Generated tail) and k,
// drawn from Config.OutputVocab, so a request that migrates to another
// worker with the tokens already streamed continues exactly as if it had
// not. A request asked to stop (loom.WithStop) ends at once with what it
// has and the finish reason "cancelled"; a killed one (its context
// cancelled) frees its batch slot and blocks at once.
//
// With Config.RemotePrefill, a decode worker hands prompts with more than
// Config.RemotePrefillMin uncached tokens to prefill workers
// (Config.Prefill) through the durable work queue prefill_queue; a
// prefill worker acknowledges a job only once its prefill is done and the
// decode worker has been told, so a prefill worker that dies loses
// nothing. docs/llm.md describes the protocol.
//
// Run is the one call a worker process makes; a Cluster runs many
// workers in one process, each in a runtime of its own, and can stop one
// gracefully or kill one as a crash would.
package mocker
