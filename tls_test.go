package loom_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/loomrt/loom"
)

// pki writes a CA and two leaf certificates for 127.0.0.1 signed by it.
type pki struct{ ca, serverCert, serverKey, clientCert, clientKey string }

func newPKI(t *testing.T) pki {
	dir := t.TempDir()
	write := func(name, typ string, der []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "loom test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	leaf := func(name string, serial int64, usage x509.ExtKeyUsage) (string, string) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			KeyUsage: x509.KeyUsageDigitalSignature,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, _ := x509.MarshalECPrivateKey(key)
		return write(name+".pem", "CERTIFICATE", der), write(name+"-key.pem", "EC PRIVATE KEY", kder)
	}
	p := pki{ca: write("ca.pem", "CERTIFICATE", caDER)}
	p.serverCert, p.serverKey = leaf("server", 2, x509.ExtKeyUsageServerAuth)
	p.clientCert, p.clientKey = leaf("client", 3, x509.ExtKeyUsageClientAuth)
	return p
}

func TestTheRequestPlaneSpeaksTLS(t *testing.T) {
	p := newPKI(t)
	tests := []struct {
		name       string
		clientAuth bool
		caller     func(c *cluster) // how the caller is configured
		wantErr    string
	}{
		{"TLS: a caller that trusts the CA gets through", false, func(c *cluster) {
			c.cfg.RequestPlane.TLSCAFile = p.ca
		}, ""},
		{"TLS: a caller without the CA is told to set it", false, func(c *cluster) {}, "serves TLS; set request_plane.tls_ca_file"},
		{"mutual TLS: a caller with a client certificate gets through", true, func(c *cluster) {
			c.cfg.RequestPlane.TLSCAFile = p.ca
			c.cfg.RequestPlane.TLSCertFile, c.cfg.RequestPlane.TLSKeyFile = p.clientCert, p.clientKey
		}, ""},
		{"mutual TLS: a caller without a client certificate is refused", true, func(c *cluster) {
			c.cfg.RequestPlane.TLSCAFile = p.ca
		}, "certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newClusterOn(t, "tcp")
			c.cfg.Client.WaitTimeout = 200 * time.Millisecond
			srvCfg := c.cfg
			srvCfg.RequestPlane.TLSCertFile, srvCfg.RequestPlane.TLSKeyFile = p.serverCert, p.serverKey
			srvCfg.RequestPlane.TLSCAFile, srvCfg.RequestPlane.TLSClientAuth = p.ca, tt.clientAuth
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
