package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/cmd/loom/internal/demo"
	"github.com/loomrt/loom/dashboard"
	"github.com/loomrt/loom/discovery/memory"
)

func newDemo() *cobra.Command {
	opts := demo.DefaultOptions()
	var serve, asJSON bool
	var dashAddr string
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
shuts down gracefully (see shutdown.* in loom config). With --dashboard it
also serves the live page of loom dashboard on that address.

With --json the summary is one JSON object on standard output and the other
lines go to standard error. A progress line, redrawn in place, is shown
only on a terminal.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts.Observable = dashAddr != ""
			if err := opts.Validate(); err != nil {
				return &usageError{cmd, err}
			}
			if dashAddr != "" && !serve {
				return &usageError{cmd, fmt.Errorf("--dashboard needs --serve: the page is for a demo that keeps running")}
			}
			if dashAddr != "" {
				if err := checkListenAddr(dashAddr); err != nil {
					return &usageError{cmd, fmt.Errorf("--dashboard %q: %w", dashAddr, err)}
				}
			}
			opts.Progress = !asJSON && isTerminal(cmd.OutOrStdout())
			out := demoOut{out: cmd.OutOrStdout(), info: cmd.OutOrStdout(), json: asJSON}
			if asJSON {
				out.info = cmd.ErrOrStderr()
			}
			if serve {
				// loom.Run's runtime gives the demo its lifecycle and the
				// operator's settings; its discovery is a store of its
				// own, so that it does not dial what the environment
				// names (loom up's lines may be set in this shell).
				loom.Run(func(ctx context.Context, rt *loom.Runtime) error {
					// The backends' runtimes add their own instance ids
					// to the log: give them the logger without the
					// frontend's.
					return runDemoWith(ctx, out, opts, loom.NewLogger(rt.Config().Log), rt, true, dashAddr)
				}, loom.WithDiscovery(memory.NewStore().Connect()))
			}
			ctx, stop := signalContext(context.Background(), cmd.ErrOrStderr())
			defer stop()
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
			return runDemoWith(ctx, out, opts, log, nil, false, "")
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
	f.StringVar(&dashAddr, "dashboard", "", "with --serve, also serve the dashboard page on this address (host:port)")
	f.BoolVar(&asJSON, "json", false, "print the summary as one JSON object (other lines go to standard error)")
	return cmd
}

// demoOut is where the demo writes: the summary to out (as JSON if json),
// the rest to info.
type demoOut struct {
	out, info io.Writer
	json      bool
}

func runDemo(ctx context.Context, out io.Writer, opts demo.Options, log *slog.Logger, fe *loom.Runtime, serve bool) error {
	return runDemoWith(ctx, demoOut{out: out, info: out}, opts, log, fe, serve, "")
}

// runDemoWith is runDemo that also serves the dashboard on dashAddr if it
// is not empty.
func runDemoWith(ctx context.Context, o demoOut, opts demo.Options, log *slog.Logger, fe *loom.Runtime, serve bool, dashAddr string) error {
	out := o.info
	fmt.Fprintf(out, "loom demo: %d backend instances of demo/backend/generate, %d requests, %d at a time, %d tokens each, over %s\n",
		opts.Instances, opts.Requests, opts.Concurrency, opts.Tokens, opts.Plane)
	sys, err := demo.Start(ctx, opts, log, fe)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "  embedded nats-server with JetStream; backends %x\n", sys.Backends())
	var dash *dashboard.Server
	if dashAddr != "" {
		if dash, err = demoDashboard(ctx, sys, dashAddr); err != nil {
			sys.Shutdown(context.Background())
			return err
		}
		fmt.Fprintf(out, "  dashboard on %s\n", pageNote(dash.URL(), dashAddr))
	}
	sum := sys.Batch(ctx, out)
	if o.json {
		if err := printJSON(o.out, sum.Report(sys.Backends())); err != nil {
			sys.Shutdown(context.Background())
			return err
		}
	} else {
		sum.Print(o.out, sys.Backends())
	}
	if serve {
		fmt.Fprintln(out, "\nserving demo/backend/generate; SIGINT or SIGTERM to stop")
		<-ctx.Done()
	}
	if dash != nil {
		dash.Close() // before the system it watches
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := sys.Shutdown(sctx); err != nil {
		return err
	}
	if ctx.Err() != nil && !serve {
		// The batch was cut short: the requests it cancelled did not fail.
		if ec, ok := interrupted(); ok {
			return ec
		}
		return ctx.Err()
	}
	if sum.Errors > 0 {
		return fmt.Errorf("demo: %d of %d requests failed; first: %w", sum.Errors, sum.Requests, sum.FirstFailure)
	}
	return nil
}

// demoDashboard serves the dashboard of the demo's system on addr.
func demoDashboard(ctx context.Context, sys *demo.System, addr string) (*dashboard.Server, error) {
	rt, err := sys.Observer(ctx)
	if err != nil {
		return nil, err
	}
	d, err := dashboard.New(ctx, rt, dashboard.Config{NATSMonitorURL: sys.MonitorURL()})
	if err != nil {
		return nil, err
	}
	srv, err := dashboard.Listen(d, addr)
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("%w (choose another address with --dashboard)", err)
	}
	return srv, nil
}
