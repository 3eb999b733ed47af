package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/spf13/cobra"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/discovery/memory"
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/llm/mocker"
	"github.com/loomrt/loom/metrics"
)

func init() { llmCommands = append(llmCommands, newLLMUp) }

type llmUpOptions struct {
	fe      frontendOptions
	worker  mocker.Config
	workers int
	prefill int
	verbose bool
	dash    string // address of the dashboard page, or "" for none (dashboard.go)
}

func newLLMUp() *cobra.Command {
	var o llmUpOptions
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run an OpenAI-compatible frontend and mock LLM workers in this process",
		Long: `Run the whole serving stack in one process with nothing to set up: an
embedded nats-server with JetStream, --workers mock engine workers (and
--prefill-workers prefill workers), the router and the OpenAI-compatible
frontend. It prints the base URL to point an OpenAI client at; Ctrl-C stops
everything.`,
		Example: `  loom llm up --workers 4
  OPENAI_BASE_URL=http://127.0.0.1:8000/v1 python3 my_openai_client.py
  curl -N http://127.0.0.1:8000/v1/chat/completions -d '{"model":"mock-model","stream":true,"messages":[{"role":"user","content":"hi"}]}'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.fe.check(); err != nil {
				return &usageError{cmd, err}
			}
			if o.workers < 1 || o.prefill < 0 {
				return &usageError{cmd, fmt.Errorf("--workers %d --prefill-workers %d: want at least 1 worker and no negative count", o.workers, o.prefill)}
			}
			ctx, stop := signalContext(context.Background(), cmd.ErrOrStderr())
			defer stop()
			return llmUp(ctx, cmd.OutOrStdout(), cmd.ErrOrStderr(), &o)
		},
	}
	f := cmd.Flags()
	o.fe.bind(f)
	bindWorkerFlags(f, &o.worker)
	f.IntVar(&o.workers, "workers", 2, "mock workers to run")
	f.IntVar(&o.prefill, "prefill-workers", 0, "prefill workers to run (for --remote-prefill)")
	f.BoolVarP(&o.verbose, "verbose", "v", false, "log at info level (migrations, workers joining and leaving)")
	f.StringVar(&o.dash, "dashboard", "", "also serve the loom dashboard page on this address (host:port)")
	return cmd
}

func llmUp(ctx context.Context, out, errOut io.Writer, o *llmUpOptions) error {
	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(errOut, &slog.HandlerOptions{Level: level}))
	nopts := embedded.NATSOptions{JetStream: true}
	if o.dash != "" {
		nopts.MonitorPort = -1 // the dashboard's NATS view reads it
	}
	ns, err := embedded.StartNATS(nopts)
	if err != nil {
		return err
	}
	defer ns.Shutdown()
	cfg := config.Default()
	cfg.NATS.URL = ns.ClientURL()
	store := memory.NewStore()
	m := metrics.New()
	disc := store.Connect()
	defer disc.Close()
	rt, err := loom.NewRuntime(ctx, loom.WithConfig(cfg), loom.WithDiscovery(disc), loom.WithLogger(log), loom.WithMetrics(m))
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = rt.Shutdown(sctx)
	}()
	o.worker.Namespace = o.fe.cfg.Namespace
	cl, err := mocker.StartCluster(ctx, mocker.ClusterConfig{
		Workers: o.workers, Prefill: o.prefill, Worker: o.worker,
		Runtime: cfg, NATS: ns, Store: store, Metrics: m, Logger: log,
	})
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = cl.Shutdown(sctx)
	}()
	fe, l, closeRouter, err := startFrontend(ctx, rt, &o.fe)
	if err != nil {
		return err
	}
	defer closeRouter()
	if err := fe.WaitSynced(ctx); err != nil {
		fe.Close()
		return err
	}
	fmt.Fprintf(out, "loom llm up: %s of model %s", count(o.workers, "mock worker"), o.worker.Card().Name)
	if o.prefill > 0 {
		fmt.Fprintf(out, " and %s", count(o.prefill, "prefill worker"))
	}
	fmt.Fprintf(out, ", router %s, embedded nats-server at %s\n", o.fe.router, ns.ClientURL())
	addr, every := dialable(l.Addr().String())
	fmt.Fprintf(out, "OpenAI API at http://%s/v1 (metrics at /metrics%s); Ctrl-C stops\n", addr, noteIf(every))
	fmt.Fprintf(out, "OPENAI_BASE_URL=http://%s/v1\n", addr)
	if o.dash != "" {
		dash, err := llmDashboard(ctx, cfg, store, ns, "http://"+addr+"/metrics", o.dash, log)
		if err != nil {
			fe.Close()
			return err
		}
		defer dash.Close()
		fmt.Fprintf(out, "dashboard at %s\n", pageNote(dash.URL(), o.dash))
	}
	return serveFrontend(ctx, fe, l, rt.Config().Shutdown.GracePeriod)
}
