package discovery

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/config"
)

// Env is what a backend may use to open: its configuration, a logger, and
// the process's NATS connection (opened on first use, for backends that
// live on NATS).
type Env struct {
	Config config.Discovery
	Logger *slog.Logger
	NATS   func(ctx context.Context) (*nats.Conn, error)
}

// Opener opens a backend from its Env.
type Opener func(ctx context.Context, env Env) (Discovery, error)

var (
	backendsMu sync.RWMutex
	backends   = map[string]Opener{}
)

// knownBackends names the package that registers each backend Loom ships,
// so that a program that did not link one is told which import adds it.
var knownBackends = map[string]string{
	"memory":     "github.com/loomrt/loom/discovery/memory",
	"etcd":       "github.com/loomrt/loom/discovery/etcd",
	"natskv":     "github.com/loomrt/loom/discovery/natskv",
	"kubernetes": "github.com/loomrt/loom/discovery/kube",
}

// RegisterBackend makes a backend available under name (the value of the
// discovery.backend key). Backends register themselves in an init
// function, so a program links only the backends it imports, as
// database/sql drivers do; discovery/all imports every backend Loom ships.
// It panics if name is empty or already registered.
func RegisterBackend(name string, open Opener) {
	backendsMu.Lock()
	defer backendsMu.Unlock()
	if name == "" || open == nil {
		panic("discovery: RegisterBackend needs a name and an Opener")
	}
	if _, dup := backends[name]; dup {
		panic("discovery: backend " + name + " registered twice")
	}
	backends[name] = open
}

// Backends returns the names of the backends linked into this program,
// sorted.
func Backends() []string {
	backendsMu.RLock()
	defer backendsMu.RUnlock()
	names := make([]string, 0, len(backends))
	for n := range backends {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// OpenBackend opens the backend registered under name. A name that is not
// linked into the program is an error saying which import adds it.
func OpenBackend(ctx context.Context, name string, env Env) (Discovery, error) {
	backendsMu.RLock()
	open, ok := backends[name]
	backendsMu.RUnlock()
	if !ok {
		linked := strings.Join(Backends(), ", ")
		if pkg, known := knownBackends[name]; known {
			return nil, fmt.Errorf("discovery: backend %q is not linked into this program (linked: %s): add `import _ %q` (or github.com/loomrt/loom/discovery/all for every backend)", name, linked, pkg)
		}
		return nil, fmt.Errorf("discovery: unknown backend %q (linked: %s)", name, linked)
	}
	if env.Logger == nil {
		env.Logger = slog.New(slog.DiscardHandler)
	}
	return open(ctx, env)
}
