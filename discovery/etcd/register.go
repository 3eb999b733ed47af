package etcd

import (
	"context"

	"github.com/loomrt/loom/discovery"
)

// The "etcd" backend reads discovery.etcd_endpoints, lease_ttl,
// dial_timeout, and etcd_username, etcd_password and etcd_tls_* (set by
// Dynamo's ETCD_AUTH_* variables).
func init() {
	discovery.RegisterBackend("etcd", func(ctx context.Context, env discovery.Env) (discovery.Discovery, error) {
		dc := env.Config
		return New(ctx, Config{
			Endpoints: dc.EtcdEndpoints, LeaseTTL: dc.LeaseTTL, DialTimeout: dc.DialTimeout, Logger: env.Logger,
			Username: dc.EtcdUsername, Password: dc.EtcdPassword,
			TLSCAFile: dc.EtcdTLSCAFile, TLSCertFile: dc.EtcdTLSCertFile, TLSKeyFile: dc.EtcdTLSKeyFile,
		})
	})
}
