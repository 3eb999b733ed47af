// Package bench is a load generator for OpenAI-compatible LLM servers: it
// sends streaming chat completions over HTTP, reads the Server-Sent Events
// they answer with, and reports time to first token (TTFT), inter-token
// latency (ITL), end-to-end latency, throughput, the KV cache hit rate the
// server reports in usage, and errors by kind.
//
// Workloads (Workload) are a prefix-heavy one (groups of conversations
// sharing a system prompt, multi-turn, each turn resending its history), a
// no-sharing one, and a replayed trace file. Requests arrive closed-loop
// (a fixed number in flight) or open-loop (at a rate, or at a trace's
// timestamps).
//
// Run drives any server by URL. The `loom llm bench` command builds on it,
// and can also start Loom's frontend and mock workers in its own process
// to measure the serving stack itself; docs/llm.md shows the results.
package bench
