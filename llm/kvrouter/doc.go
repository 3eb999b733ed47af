// Package kvrouter routes LLM requests to workers: the KV-aware router,
// which sends a prompt where its prefix is already cached unless that
// worker is too busy, and by name the plain policies it is compared with.
//
// A router is an llm.Router, so a loom.Picker: a frontend gives it to the
// workers' Client (loom.WithPicker), puts an llm.RouteInfo in each
// request's context (llm.WithRoute) and calls Done when the stream ends.
// New builds one by name: kv, kv_approx, round_robin, random or
// least_loaded.
//
// # The index
//
// Prompts are cut into blocks of BlockSize tokens whose hashes chain
// (llm.BlockHashes), so equal prefixes give equal hash chains. The kv
// router keeps a global index of which worker holds which blocks, from
// the workers' kv_events (stored with parent hash, removed, cleared),
// and answers "how many leading blocks of this prompt does each worker
// hold" by walking the prompt's hashes: time proportional to the prompt
// and the workers holding its first block, not to the size of the caches.
//
// Each worker numbers its events from 1 without gaps. A gap, in the event
// ids or in the event plane's own sequence (events.OnGap), makes the
// router fetch that worker's whole block set from its kv_blocks endpoint
// and replace its view; events arriving meanwhile are applied after it.
// Events lost at the end of a sequence (published while the event plane
// was down, by a worker that has been idle since) leave no gap for a
// later event to show: a worker's load_metrics name its last event
// (llm.LoadMetrics.KvEventID), and one still missing Config.LostAfter
// later, with none of the router's events waiting to be read, counts as
// a gap. An event id already applied that another event-plane publisher
// sends (a process publishing with the worker's instance id) counts as a
// gap too: only the block set can tell which of the two was the worker's.
// The router's subscription drops nothing itself: a router that falls
// behind holds events back (events.Block), on core NATS in the NATS
// client's buffer, and what that drops shows as a gap in one worker's
// sequence. A worker that leaves discovery is dropped from the index;
// one that discovery has not listed a minute after the router first
// heard of it (by its events or a pick) is dropped too. The index never
// silently drifts: Stats counts gaps, fetches and the events applied.
//
// kv_approx needs no events: it predicts that a worker holds the blocks
// of each prompt routed to it for Config.ApproxTTL.
//
// # The cost
//
// For a prompt of n blocks, each candidate worker w costs, in blocks,
//
//	prefill_w = (n - overlap_w) + pending_w + waiting_w * n
//	decode_w  = active_w + n
//	cost_w    = OverlapWeight * prefill_w + decode_w
//
// where overlap_w is the prompt's leading blocks w holds, pending_w the
// prompt blocks w has still to prefill, waiting_w the requests waiting at
// w and active_w the KV blocks of w's running requests. pending_w,
// waiting_w and active_w come from w's last load_metrics (a report with
// a count out of range, llm.LoadMetrics.Check, is ignored), plus the
// requests routed to w since that report, minus those reported Done since
// (never below zero); without load metrics (kv_approx, or none received)
// they come from the requests routed to w and not Done alone. The router
// takes the cheapest worker, ties broken at random; with a Temperature
// t > 0 it samples worker w with probability proportional to
// exp(-(cost_w - min) / (max - min) / t).
package kvrouter
