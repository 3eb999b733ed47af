// Package loomtest runs a Loom deployment inside a test: an embedded
// nats-server when the test needs one, a discovery store the test's
// runtimes share, and runtimes on it that shut down when the test ends.
// Each runtime gets its own handle on the store, as separate processes
// would, so what crosses between them (discovery records, the request
// plane, events, queues) is real; only the process boundary is missing.
//
// It is for Loom's own tests and for programs built on Loom, as
// net/http/httptest is for HTTP servers.
package loomtest

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/discovery/memory"
	"github.com/loomrt/loom/embedded"
)

// Options says what a System runs.
type Options struct {
	// NATS starts an embedded nats-server and points nats.url at it.
	NATS bool
	// JetStream starts it with JetStream (and implies NATS); the
	// configuration keeps queues and event streams in memory.
	JetStream bool
	// Plane is how calls between the runtimes travel: "tcp" or "nats"
	// (which implies NATS) over the network, "local" over the in-process
	// fast path, or "" for the configuration's default.
	Plane string
}

// System is a deployment in one test process. Change Config before
// starting the runtimes that should see the change.
type System struct {
	// T is the test the system belongs to.
	T testing.TB
	// Config is the configuration every runtime of the system starts with.
	Config config.Config
	// Store is the discovery store the runtimes share.
	Store *memory.Store
	// NATS is the embedded server, or nil.
	NATS *embedded.NATS
}

// Quiet is a logger that discards everything: the runtimes' logger
// unless a test gives its own (loom.WithLogger).
var Quiet = slog.New(slog.DiscardHandler)

// New starts a System, stopped when the test ends.
func New(t testing.TB, o Options) *System {
	t.Helper()
	cfg := config.Default()
	s := &System{T: t, Store: memory.NewStore()}
	if o.NATS || o.JetStream || o.Plane == "nats" {
		ns, err := embedded.StartNATS(embedded.NATSOptions{JetStream: o.JetStream})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(ns.Shutdown)
		s.NATS = ns
		cfg.NATS.URL = ns.ClientURL()
	}
	if o.JetStream {
		cfg.Queue.Storage = "memory"
		cfg.Events.JetStream.Storage = "memory"
	}
	switch o.Plane {
	case "":
	case "local":
		cfg.Client.LocalFastPath = true
	default:
		cfg.Client.LocalFastPath = false
		cfg.RequestPlane.Transport = o.Plane
	}
	s.Config = cfg
	return s
}

// Connect returns a new handle on the system's discovery store, closed
// when the test ends: what one process sees.
func (s *System) Connect() discovery.Discovery {
	d := s.Store.Connect()
	s.T.Cleanup(func() { _ = d.Close() })
	return d
}

// Runtime starts a runtime with the system's configuration on a handle
// of its own on the store, logging nowhere; opts come after those and may
// replace them. It is shut down (5 s to drain) when the test ends.
func (s *System) Runtime(opts ...loom.Option) *loom.Runtime {
	s.T.Helper()
	return s.RuntimeOn(s.Connect(), opts...)
}

// RuntimeOn is Runtime on the discovery handle d, for a test that acts on
// the handle itself (closing it, as a process that loses its discovery).
func (s *System) RuntimeOn(d discovery.Discovery, opts ...loom.Option) *loom.Runtime {
	s.T.Helper()
	opts = append([]loom.Option{loom.WithConfig(s.Config), loom.WithDiscovery(d), loom.WithLogger(Quiet)}, opts...)
	rt, err := loom.NewRuntime(context.Background(), opts...)
	if err != nil {
		s.T.Fatal(err)
	}
	s.T.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = rt.Shutdown(ctx)
	})
	return rt
}
