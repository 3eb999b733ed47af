package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/llm/frontend"
	"github.com/loomrt/loom/llm/kvrouter"
)

func init() { llmCommands = append(llmCommands, newLLMFrontend) }

// frontendOptions are the flags of a frontend, shared by `loom llm
// frontend` and `loom llm up`.
type frontendOptions struct {
	host   string
	port   int
	router string
	cfg    frontend.Config
	kv     kvrouter.Config
}

func (o *frontendOptions) bind(f *pflag.FlagSet) {
	f.StringVar(&o.host, "host", "127.0.0.1", "address the HTTP server listens on")
	f.IntVar(&o.port, "port", 8000, "HTTP port of the OpenAI API (0 picks a free one)")
	f.StringVar(&o.router, "router", kvrouter.KV, "how requests pick a worker: kv, kv_approx, round_robin, random or least_loaded")
	f.StringVar(&o.cfg.Namespace, "namespace", "", "namespace the workers serve in (default llm)")
	f.IntVar(&o.cfg.MaxMigrations, "max-migrations", frontend.DefaultMaxMigrations, "times one request may move to another worker when its worker fails mid-stream (0: never)")
	f.IntVar(&o.cfg.MaxInFlightPerWorker, "max-in-flight-per-worker", 0, "requests a worker may have from this frontend before it counts as busy; all busy means 429 (0: no limit)")
	f.DurationVar(&o.cfg.DepartedIdle, "departed-idle", frontend.DefaultDepartedIdle, "how long a request on a worker that left discovery may go without a token before it moves to another worker")
	f.IntVar(&o.cfg.DefaultMaxTokens, "default-max-tokens", frontend.DefaultDefaultMaxTokens, "tokens generated when a request gives no max_tokens")
	f.Int64Var(&o.cfg.MaxBodyBytes, "max-body-bytes", frontend.DefaultMaxBodyBytes, "largest request body accepted, in bytes; a larger one gets 413")
	f.DurationVar(&o.cfg.BodyTimeout, "body-timeout", frontend.DefaultBodyTimeout, "how long a request's body may take to arrive after its headers; then 408")
	f.DurationVar(&o.cfg.IdleTimeout, "idle-timeout", frontend.DefaultIdleTimeout, "how long a kept-alive connection may wait for its next request before it is closed")
	f.DurationVar(&o.cfg.WriteTimeout, "write-timeout", frontend.DefaultWriteTimeout, "how long one write of an answer may wait for the client to read; then the client counts as gone")
	f.Float64Var(&o.kv.Temperature, "router-temperature", 0, "kv router: sample workers by cost with this temperature (0: take the cheapest)")
	f.Float64Var(&o.kv.OverlapWeight, "router-overlap-weight", 1, "kv router: weight of the prefill (uncached prompt) term against the decode term")
}

func (o *frontendOptions) check() error {
	if o.port < 0 || o.port > 65535 {
		return fmt.Errorf("--port %d: want 0-65535", o.port)
	}
	if o.cfg.MaxMigrations == 0 {
		o.cfg.MaxMigrations = -1 // the flag's 0 means never
	}
	return nil
}

func newLLMFrontend() *cobra.Command {
	var o frontendOptions
	cmd := &cobra.Command{
		Use:   "frontend",
		Short: "Serve the OpenAI API for the LLM workers found in discovery",
		Long: `Serve an OpenAI-compatible HTTP API (/v1/models, /v1/models/{model},
/v1/chat/completions, /v1/completions; /health, /live, /metrics) for the
workers of a namespace,
found in discovery as this process's configuration names it: run it with
the environment lines of ` + "`loom up`" + ` to reach workers in other processes.
It tokenizes in the frontend and routes each request with --router.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.check(); err != nil {
				return &usageError{cmd, err}
			}
			loom.Run(func(ctx context.Context, rt *loom.Runtime) error {
				if memoryDiscovery(rt) {
					fmt.Fprintln(cmd.ErrOrStderr(), "loom llm frontend: discovery.backend is memory, which sees only this process, so no worker of another; start loom up and set the lines it prints in this shell (LOOM_DISCOVERY, ETCD_ENDPOINTS, NATS_SERVER), or run loom llm up")
				}
				return runFrontend(ctx, cmd.OutOrStdout(), rt, &o)
			})
			return nil
		},
	}
	o.bind(cmd.Flags())
	return cmd
}

// startFrontend builds the router and the frontend and listens; it returns
// the frontend, its listener and a function that closes the router.
func startFrontend(ctx context.Context, rt *loom.Runtime, o *frontendOptions) (*frontend.Frontend, net.Listener, func(), error) {
	kcfg := o.kv
	kcfg.Namespace = o.cfg.Namespace
	router, err := kvrouter.New(ctx, rt, o.router, kcfg)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("--router %q: %w", o.router, err)
	}
	cfg := o.cfg
	cfg.Router = router
	fe, err := frontend.New(ctx, rt, cfg)
	if err != nil {
		_ = router.Close()
		return nil, nil, nil, err
	}
	l, err := net.Listen("tcp", net.JoinHostPort(o.host, strconv.Itoa(o.port)))
	if err != nil {
		fe.Close()
		_ = router.Close()
		return nil, nil, nil, fmt.Errorf("frontend: listening on %s:%d: %w (choose another --port)", o.host, o.port, err)
	}
	return fe, l, func() { _ = router.Close() }, nil
}

// serveFrontend serves fe on l until ctx ends, then shuts it down, letting
// the streams it answers finish for up to grace (shutdown.grace_period).
func serveFrontend(ctx context.Context, fe *frontend.Frontend, l net.Listener, grace time.Duration) error {
	errc := make(chan error, 1)
	go func() { errc <- fe.Serve(l) }()
	select {
	case err := <-errc:
		fe.Close()
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	err := fe.Shutdown(sctx)
	if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	return err
}

func runFrontend(ctx context.Context, out io.Writer, rt *loom.Runtime, o *frontendOptions) error {
	fe, l, closeRouter, err := startFrontend(ctx, rt, o)
	if err != nil {
		return err
	}
	defer closeRouter()
	addr, every := dialable(l.Addr().String())
	fmt.Fprintf(out, "loom llm frontend: router %s, OpenAI API at http://%s/v1", o.router, addr)
	if every {
		fmt.Fprintf(out, " (%s)", everyAddressNote)
	}
	fmt.Fprintf(out, "\nOPENAI_BASE_URL=http://%s/v1\n", addr)
	return serveFrontend(ctx, fe, l, rt.Config().Shutdown.GracePeriod)
}
