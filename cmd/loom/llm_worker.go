package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/llm/mocker"
)

func init() { llmCommands = append(llmCommands, newLLMWorker) }

// bindWorkerFlags binds the flags of a mock worker, shared by `loom llm
// worker` and `loom llm up`.
func bindWorkerFlags(f *pflag.FlagSet, c *mocker.Config) {
	f.StringVar(&c.Model, "model", mocker.DefaultModel, "name of the model the worker serves")
	f.IntVar(&c.BlockSize, "block-size", 0, "tokens per KV block (default 16)")
	f.IntVar(&c.KvBlocks, "kv-blocks", 0, "KV cache size in blocks (default 8192)")
	f.IntVar(&c.ContextLength, "context-length", 0, "prompt plus output tokens a request may have (default 8192)")
	f.IntVar(&c.MaxBatch, "max-batch", 0, "requests decoded together; more wait (default 32)")
	f.DurationVar(&c.PrefillPerToken, "prefill-per-token", 0, "simulated prefill time per uncached prompt token (default 20µs)")
	f.DurationVar(&c.DecodeStep, "decode-step", 0, "simulated time of one decode step of the batch (default 5ms)")
	f.BoolVar(&c.RemotePrefill, "remote-prefill", false, "hand long prompts to prefill workers through the prefill queue")
	f.IntVar(&c.RemotePrefillMin, "remote-prefill-min", 0, "with --remote-prefill, uncached prompt tokens above which prefill is remote (default 512)")
	f.DurationVar(&c.PrefillAckWait, "prefill-ack-wait", 0, "how long a prefill job may go without progress before another prefill worker gets it (default 3s)")
}

func newLLMWorker() *cobra.Command {
	var c mocker.Config
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Run a mock LLM engine worker (or, with --prefill, a prefill worker)",
		Long: `Run a mock inference-engine worker: it simulates prefill, batched decode and
a KV cache on the CPU at the speed the flags set, serves {ns}/backend/generate
with its model card in discovery, and publishes kv_events and load_metrics.
With --prefill it is a prefill worker taking jobs from the prefill queue.
Run it with the environment lines of ` + "`loom up`" + ` so that a frontend in
another process finds it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			loom.Run(func(ctx context.Context, rt *loom.Runtime) error {
				out := cmd.OutOrStdout()
				w, err := mocker.Start(ctx, rt, c)
				if err != nil {
					return err
				}
				kind := "worker"
				if c.Prefill {
					kind = "prefill worker"
				}
				fmt.Fprintf(out, "loom llm worker: %s %x of model %s\n", kind, rt.ID(), c.Card().Name)
				if memoryDiscovery(rt) {
					fmt.Fprintln(cmd.ErrOrStderr(), "loom llm worker: discovery.backend is memory, which sees only this process, so no frontend of another finds this worker; start loom up and set the lines it prints in this shell (LOOM_DISCOVERY, ETCD_ENDPOINTS, NATS_SERVER)")
				}
				err = w.ServeUntil(ctx)
				s := w.Stats()
				if c.Prefill {
					fmt.Fprintf(out, "loom llm worker: stopped after %d prefill jobs (%d delivered before)\n", s.PrefillJobs, s.PrefillRedeliveries)
				} else {
					fmt.Fprintf(out, "loom llm worker: stopped after %d requests (%d prefills handed to prefill workers)\n", s.Requests, s.RemotePrefills)
				}
				return err
			})
			return nil
		},
	}
	bindWorkerFlags(cmd.Flags(), &c)
	cmd.Flags().StringVar(&c.Namespace, "namespace", "", "namespace the worker serves in (default llm)")
	cmd.Flags().BoolVar(&c.Prefill, "prefill", false, "be a prefill worker: take jobs from the prefill queue instead of serving generate")
	return cmd
}
