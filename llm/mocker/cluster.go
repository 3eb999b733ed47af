package mocker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/discovery/memory"
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/metrics"
	"github.com/loomrt/loom/natsconn"
)

// ClusterConfig describes mock workers run in one process. A Loom runtime
// serves an endpoint at most once, so each worker gets a runtime of its
// own, with its own NATS connection and discovery client, as a process
// would have; they share a metrics registry and a logger.
type ClusterConfig struct {
	// Workers is how many decode (or aggregated) workers to start, with
	// Worker's configuration; Prefill how many prefill workers, with
	// Worker's configuration and Prefill set.
	Workers, Prefill int
	Worker           Config
	// Runtime is each worker runtime's configuration; zero means
	// config.Default().
	Runtime config.Config
	// NATS, if set, is an embedded server the workers connect to in
	// process; otherwise they connect to Runtime.NATS.URL.
	NATS *embedded.NATS
	// Store, if set, is the memory discovery store the workers register
	// in, each through a client of its own; otherwise each runtime opens
	// the discovery Runtime names.
	Store *memory.Store
	// Metrics and Logger, if set, are shared by every worker runtime.
	Metrics *metrics.Metrics
	Logger  *slog.Logger
}

// Cluster is a set of mock workers in one process: start them together,
// add more, stop one gracefully or kill one as if its process crashed.
type Cluster struct {
	cc ClusterConfig

	mu      sync.Mutex
	members []*member
}

type member struct {
	w    *Worker
	nc   *nats.Conn          // the cluster's, closed when it leaves
	disc discovery.Discovery // the cluster's, if any
}

// StartCluster starts cc.Workers workers and cc.Prefill prefill workers.
func StartCluster(ctx context.Context, cc ClusterConfig) (*Cluster, error) {
	if cc.Workers < 0 || cc.Prefill < 0 {
		return nil, fmt.Errorf("mocker: cluster of %d workers and %d prefill workers: counts cannot be negative", cc.Workers, cc.Prefill)
	}
	if cc.Runtime.NATS.URL == "" && cc.Runtime.Discovery.Backend == "" {
		cc.Runtime = config.Default()
	}
	if cc.Metrics == nil {
		cc.Metrics = metrics.New()
	}
	c := &Cluster{cc: cc}
	for i := range cc.Workers + cc.Prefill {
		cfg := cc.Worker
		if i >= cc.Workers {
			cfg.Prefill, cfg.RemotePrefill = true, false
		}
		if _, err := c.Add(ctx, cfg); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// Add starts one more worker with cfg.
func (c *Cluster) Add(ctx context.Context, cfg Config) (*Worker, error) {
	var copts []natsconn.Option
	if c.cc.NATS != nil {
		copts = append(copts, natsconn.WithInProcessServer(c.cc.NATS.Server()))
	}
	if c.cc.Logger != nil {
		copts = append(copts, natsconn.WithLogger(c.cc.Logger))
	}
	nc, err := natsconn.Connect(ctx, c.cc.Runtime.NATS, copts...)
	if err != nil {
		return nil, fmt.Errorf("mocker: worker's NATS connection: %w", err)
	}
	m := &member{nc: nc}
	opts := []loom.Option{loom.WithConfig(c.cc.Runtime), loom.WithNATSConn(nc), loom.WithMetrics(c.cc.Metrics)}
	if c.cc.Logger != nil {
		opts = append(opts, loom.WithLogger(c.cc.Logger))
	}
	if c.cc.Store != nil {
		m.disc = c.cc.Store.Connect()
		opts = append(opts, loom.WithDiscovery(m.disc))
	}
	rt, err := loom.NewRuntime(ctx, opts...)
	if err != nil {
		m.close()
		return nil, err
	}
	w, err := Start(ctx, rt, cfg)
	if err != nil {
		_ = rt.Shutdown(context.Background())
		m.close()
		return nil, err
	}
	m.w = w
	c.mu.Lock()
	c.members = append(c.members, m)
	c.mu.Unlock()
	return w, nil
}

func (m *member) close() {
	m.nc.Close()
	if m.disc != nil {
		_ = m.disc.Close()
	}
}

// Workers returns the workers running now, in the order they started.
func (c *Cluster) Workers() []*Worker {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*Worker, len(c.members))
	for i, m := range c.members {
		out[i] = m.w
	}
	return out
}

// take removes the member with worker id from the cluster.
func (c *Cluster) take(id uint64) (*member, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	i := slices.IndexFunc(c.members, func(m *member) bool { return m.w.ID() == id })
	if i < 0 {
		return nil, fmt.Errorf("mocker: no worker %x in the cluster", id)
	}
	m := c.members[i]
	c.members = slices.Delete(c.members, i, i+1)
	return m, nil
}

// Stop stops worker id gracefully: it leaves discovery, refuses new
// requests, lets those in flight finish until ctx ends, and its runtime
// shuts down.
func (c *Cluster) Stop(ctx context.Context, id uint64) error {
	m, err := c.take(id)
	if err != nil {
		return err
	}
	err = errors.Join(m.w.Shutdown(ctx), m.w.rt.Shutdown(ctx))
	m.close()
	return err
}

// Kill stops worker id as a crash would, as closely as one process
// allows: its NATS connection drops first (so it publishes, acknowledges
// and answers nothing more; a prefill job in hand is redelivered after the
// queue's ack wait), then its runtime shuts down with no grace, so streams
// in flight break at once (callers get loom.ErrStreamReset) and its
// records leave discovery; then its engine stops.
func (c *Cluster) Kill(id uint64) error {
	m, err := c.take(id)
	if err != nil {
		return err
	}
	m.nc.Close()
	now, cancel := context.WithCancel(context.Background())
	cancel()
	_ = m.w.rt.Shutdown(now)
	m.w.Close()
	m.close()
	return nil
}

// Shutdown stops every worker gracefully, as Stop does, in parallel.
func (c *Cluster) Shutdown(ctx context.Context) error {
	c.mu.Lock()
	ids := make([]uint64, len(c.members))
	for i, m := range c.members {
		ids[i] = m.w.ID()
	}
	c.mu.Unlock()
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() { errs[i] = c.Stop(ctx, id) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Close stops every worker now.
func (c *Cluster) Close() {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = c.Shutdown(ctx)
}
