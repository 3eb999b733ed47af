package memory

import (
	"context"

	"github.com/loomrt/loom/discovery"
)

// The "memory" backend connects to the process-wide Default store, so that
// every runtime of a process sees the others.
func init() {
	discovery.RegisterBackend("memory", func(context.Context, discovery.Env) (discovery.Discovery, error) {
		return Default().Connect(), nil
	})
}
