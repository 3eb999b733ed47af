package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/dashboard"
	"github.com/loomrt/loom/discovery/memory"
	"github.com/loomrt/loom/embedded"
)

func newDashboard() *cobra.Command {
	var (
		addr string
		cfg  dashboard.Config
	)
	cmd := &cobra.Command{
		Use:   "dashboard",
		Short: "Serve a live web page of the system: topology, load, events, queues, NATS",
		Long: `Serve a web page that shows the Loom system the configuration names (see
loom config; with loom up's environment, its NATS server and discovery):
every instance by namespace, component and endpoint with its transport,
address, codec, age and state; each instance's requests/s, in flight,
errors/s and p50 / p99, read from its process's status server (run
components with LOOM_STATUS_PORT=-1, which loom up prints); the event
streams with their publishers, gaps and drops; the work queues; the NATS
server and JetStream. The page updates live. It only reads.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkDashboardFlags(cfg); err != nil {
				return &usageError{cmd, err}
			}
			if err := checkListenAddr(addr); err != nil {
				return &usageError{cmd, fmt.Errorf("--addr %q: %w", addr, err)}
			}
			ctx, stop := signalContext(cmd.Context(), cmd.ErrOrStderr())
			defer stop()
			rt, err := toolRuntime(ctx)
			if err != nil {
				return err
			}
			defer rt.Shutdown(context.Background())
			d, err := dashboard.New(ctx, rt, cfg)
			if err != nil {
				return err
			}
			srv, err := dashboard.Listen(d, addr)
			if err != nil {
				d.Close()
				return fmt.Errorf("%w (choose another address with --addr)", err)
			}
			defer srv.Close()
			_, every := dialable(addr)
			fmt.Fprintf(cmd.ErrOrStderr(), "loom dashboard: %s (%s discovery, NATS %s%s); Ctrl-C to stop\n",
				srv.URL(), rt.Config().Discovery.Backend, rt.Config().NATS.URL, noteIf(every))
			if memoryDiscovery(rt) {
				fmt.Fprintln(cmd.ErrOrStderr(), "loom dashboard: discovery.backend is memory, which sees only this process, so the page lists no instance of another; start loom up and set the lines it prints in this shell (LOOM_DISCOVERY, ETCD_ENDPOINTS, NATS_SERVER)")
			}
			<-ctx.Done()
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&addr, "addr", "127.0.0.1:8090", "address the page is served on (port 0 picks a free one)")
	f.DurationVar(&cfg.Interval, "interval", dashboard.DefaultInterval, "how often load, queues and NATS are read")
	f.StringVar(&cfg.NATSMonitorURL, "nats-monitor", "", "NATS monitoring URL (default: the NATS server's host on port 8222; off for none)")
	f.StringArrayVar(&cfg.Scrape, "scrape", nil, "another Prometheus /metrics URL to read (repeatable), e.g. an HTTP frontend's")
	f.StringSliceVar(&cfg.ServingPrefixes, "serving-prefix", dashboard.DefaultServingPrefixes, "metric name prefixes of the serving view")
	f.BoolVar(&cfg.NoEvents, "no-events", false, "do not subscribe to every event (the per-publisher view)")
	return cmd
}

// checkDashboardFlags refuses what the page would otherwise show only as a
// failed read every interval, or take silently as the default.
func checkDashboardFlags(cfg dashboard.Config) error {
	if cfg.Interval <= 0 {
		return fmt.Errorf("--interval %s: want more than 0", cfg.Interval)
	}
	if m := cfg.NATSMonitorURL; m != "" && m != "off" {
		if err := checkHTTPURL(m); err != nil {
			return fmt.Errorf("--nats-monitor %q: %w, or off for none", m, err)
		}
	}
	for _, s := range cfg.Scrape {
		if err := checkHTTPURL(s); err != nil {
			return fmt.Errorf("--scrape %q: %w", s, err)
		}
	}
	return nil
}

// checkListenAddr accepts a host:port to serve a page on, the port a
// number in 0..65535.
func checkListenAddr(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 0 || n > 65535 {
		return errors.New("want host:port with a port in 0..65535, such as 127.0.0.1:8090")
	}
	return nil
}

// checkHTTPURL accepts an absolute http or https URL with a host.
func checkHTTPURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return errors.New("want an http:// or https:// URL such as http://127.0.0.1:8222")
	}
	return nil
}

// llmDashboard serves the dashboard of `loom llm up`'s system on addr: a
// runtime of its own on the stack's NATS server and discovery store, and
// the frontend's /metrics (the workers share its registry) for the load
// and the serving view.
func llmDashboard(ctx context.Context, cfg config.Config, store *memory.Store, ns *embedded.NATS, metricsURL, addr string, log *slog.Logger) (*ownDashboard, error) {
	disc := store.Connect()
	rt, err := loom.NewRuntime(ctx, loom.WithConfig(cfg), loom.WithDiscovery(disc), loom.WithLogger(log))
	if err != nil {
		disc.Close()
		return nil, err
	}
	stop := func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = rt.Shutdown(sctx)
		_ = disc.Close()
	}
	d, err := dashboard.New(ctx, rt, dashboard.Config{NATSMonitorURL: ns.MonitorURL(), Scrape: []string{metricsURL}})
	if err != nil {
		stop()
		return nil, err
	}
	srv, err := dashboard.Listen(d, addr)
	if err != nil {
		d.Close()
		stop()
		return nil, fmt.Errorf("%w (choose another address with --dashboard)", err)
	}
	return &ownDashboard{srv, stop}, nil
}

// ownDashboard is a served dashboard with the runtime it made for itself.
type ownDashboard struct {
	*dashboard.Server
	stop func()
}

// Close stops the page, then the dashboard's runtime.
func (o *ownDashboard) Close() error {
	err := o.Server.Close()
	o.stop()
	return err
}
