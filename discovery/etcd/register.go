package etcd

import (
	"context"

	"github.com/loomrt/loom/discovery"
)

// The "etcd" backend reads discovery.etcd_endpoints, lease_ttl and
// dial_timeout.
func init() {
	discovery.RegisterBackend("etcd", func(ctx context.Context, env discovery.Env) (discovery.Discovery, error) {
		dc := env.Config
		return New(ctx, Config{Endpoints: dc.EtcdEndpoints, LeaseTTL: dc.LeaseTTL, DialTimeout: dc.DialTimeout, Logger: env.Logger})
	})
}
