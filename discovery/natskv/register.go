package natskv

import (
	"context"
	"errors"
	"fmt"

	"github.com/loomrt/loom/discovery"
)

// The "natskv" backend lives on the process's NATS connection, with
// discovery.lease_ttl as the records' TTL.
func init() {
	discovery.RegisterBackend("natskv", func(ctx context.Context, env discovery.Env) (discovery.Discovery, error) {
		if env.NATS == nil {
			return nil, errors.New("discovery: backend natskv needs a NATS connection and none was given")
		}
		nc, err := env.NATS(ctx)
		if err != nil {
			return nil, fmt.Errorf("discovery.backend natskv needs NATS: %w", err)
		}
		return New(ctx, nc, Config{TTL: env.Config.LeaseTTL, Logger: env.Logger})
	})
}
