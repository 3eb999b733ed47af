package loom_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/internal/testutil"
)

func TestTheRequestPlaneSpeaksTLS(t *testing.T) {
	p := testutil.NewPKI(t, "loom")
	tests := []struct {
		name       string
		clientAuth bool
		caller     func(c *cluster) // how the caller is configured
		wantErr    string
	}{
		{"TLS: a caller that trusts the CA gets through", false, func(c *cluster) {
			c.cfg.RequestPlane.TLSCAFile = p.CAFile
		}, ""},
		{"TLS: a caller without the CA is told to set it", false, func(c *cluster) {}, "serves TLS; set request_plane.tls_ca_file"},
		{"mutual TLS: a caller with a client certificate gets through", true, func(c *cluster) {
			c.cfg.RequestPlane.TLSCAFile = p.CAFile
			c.cfg.RequestPlane.TLSCertFile, c.cfg.RequestPlane.TLSKeyFile = p.ClientCertFile, p.ClientKeyFile
		}, ""},
		{"mutual TLS: a caller without a client certificate is refused", true, func(c *cluster) {
			c.cfg.RequestPlane.TLSCAFile = p.CAFile
		}, "certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newClusterOn(t, "tcp")
			c.cfg.Client.WaitTimeout = 200 * time.Millisecond
			srvCfg := c.cfg
			srvCfg.RequestPlane.TLSCertFile, srvCfg.RequestPlane.TLSKeyFile = p.ServerCertFile, p.ServerKeyFile
			srvCfg.RequestPlane.TLSCAFile, srvCfg.RequestPlane.TLSClientAuth = p.CAFile, tt.clientAuth
			server := c.runtime(loom.WithConfig(srvCfg))
			serve(t, server, "tls/secure/id", echoID(server))
			tt.caller(c)
			cl := client[int, uint64](t, c.runtime(), "tls/secure/id", loom.WithoutRetry())
			waitInstances(t, cl, 1)
			got, err := collect(cl.Generate(context.Background(), 1))
			if tt.wantErr == "" {
				if err != nil || got[0] != server.ID() {
					t.Fatalf("got %v, %v", got, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want a refusal mentioning %q", err, tt.wantErr)
			}
		})
	}
}

func TestBadTLSConfigurationIsAClearError(t *testing.T) {
	c := newClusterOn(t, "tcp")
	c.cfg.RequestPlane.TLSCertFile, c.cfg.RequestPlane.TLSKeyFile = "/nonexistent/cert.pem", "/nonexistent/key.pem"
	rt := c.runtime()
	ep := endpoint(t, rt, "tls/bad/id")
	err := loom.Serve(context.Background(), ep, loom.EngineFunc[int, uint64](echoID(rt)))
	if err == nil || !strings.Contains(err.Error(), "request_plane.tls_cert_file /nonexistent/cert.pem") {
		t.Fatalf("err = %v, want it to name the key and the file", err)
	}
}
