package main

import "github.com/spf13/cobra"

// llmCommands build the subcommands of `loom llm`; each command's file
// appends its constructor in an init function, so the serving stack's
// commands (up, frontend, worker, bench) live in files of their own.
var llmCommands []func() *cobra.Command

func newLLM() *cobra.Command {
	c := &cobra.Command{
		Use:   "llm",
		Short: "Serve LLM traffic: an OpenAI-compatible frontend, a KV-aware router and mock workers",
		Long: `Serve LLM traffic on Loom: an OpenAI-compatible HTTP frontend, a KV-aware
router fed by the workers' kv_events and load_metrics, and mock engine
workers. docs/llm.md describes the stack.`,
	}
	for _, f := range llmCommands {
		c.AddCommand(f())
	}
	return c
}
