package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/cmd/loom/internal/demo"
)

func newDemo() *cobra.Command {
	opts := demo.DefaultOptions()
	var serve bool
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a whole Loom system in this process and report on it",
		Long: `Run a whole Loom system in one process with nothing to set up: an embedded
nats-server with JetStream, backend runtimes serving demo/backend/generate
(a handler that streams tokens for a prompt), and a frontend that sends a
batch of requests through a Client, then prints what it measured. Calls
travel over Loom's TCP request plane on loopback unless --plane says
otherwise.

With --serve it keeps serving after the batch until SIGINT or SIGTERM, then
shuts down gracefully (see shutdown.* in loom config).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if serve {
				loom.Run(func(ctx context.Context, rt *loom.Runtime) error {
					return runDemo(ctx, cmd.OutOrStdout(), opts, rt.Logger(), rt, true)
				})
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
			return runDemo(ctx, cmd.OutOrStdout(), opts, log, nil, false)
		},
	}
	f := cmd.Flags()
	f.IntVar(&opts.Instances, "instances", opts.Instances, "backend instances serving generate")
	f.IntVar(&opts.Requests, "requests", opts.Requests, "requests the frontend sends")
	f.IntVar(&opts.Concurrency, "concurrency", opts.Concurrency, "requests in flight at once")
	f.IntVar(&opts.Tokens, "tokens", opts.Tokens, "tokens streamed per request")
	f.DurationVar(&opts.TokenDelay, "token-delay", opts.TokenDelay, "simulated time to produce one token")
	f.StringVar(&opts.Router, "router", opts.Router, "round_robin, random, power_of_two or least_loaded")
	f.StringVar(&opts.Plane, "plane", opts.Plane, "how calls travel: tcp (Loom's protocol over loopback), nats, or local (the in-process fast path)")
	f.BoolVar(&serve, "serve", false, "keep serving after the batch until SIGINT / SIGTERM")
	return cmd
}

func runDemo(ctx context.Context, out io.Writer, opts demo.Options, log *slog.Logger, fe *loom.Runtime, serve bool) error {
	fmt.Fprintf(out, "loom demo: %d backend instances of demo/backend/generate, %d requests, %d at a time, %d tokens each, over %s\n",
		opts.Instances, opts.Requests, opts.Concurrency, opts.Tokens, opts.Plane)
	sys, err := demo.Start(ctx, opts, log, fe)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "  embedded nats-server with JetStream; backends %x\n", sys.Backends())
	sum := sys.Batch(ctx, out)
	sum.Print(out, sys.Backends())
	if serve {
		fmt.Fprintln(out, "\nserving demo/backend/generate; SIGINT or SIGTERM to stop")
		<-ctx.Done()
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := sys.Shutdown(sctx); err != nil {
		return err
	}
	if sum.Errors > 0 {
		return fmt.Errorf("demo: %d of %d requests failed; first: %w", sum.Errors, sum.Requests, sum.FirstFailure)
	}
	if ctx.Err() != nil && !serve {
		return exitCode(130)
	}
	return nil
}
