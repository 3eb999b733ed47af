package planes_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/internal/plane"
	"github.com/loomrt/loom/internal/planes"
	"github.com/loomrt/loom/internal/testutil"
)

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// Every request-plane setting that cannot work (TLS, the address others
// dial) is an error, when the plane starts, that names the configuration
// key and says what to do.
func TestMisconfigurationsNameTheKeyAndTheFix(t *testing.T) {
	cert, key := testutil.SelfSignedCert(t, time.Now().Add(time.Hour))
	oldCert, oldKey := testutil.SelfSignedCert(t, time.Now().Add(-time.Hour))
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	writeFile(t, garbage, []byte("not a PEM file\n"))
	missing := filepath.Join(dir, "missing.pem")

	serving := []struct {
		name string
		set  func(rc *config.RequestPlane)
		want []string
	}{
		{"client auth without a certificate", func(rc *config.RequestPlane) {
			rc.TLSClientAuth, rc.TLSCAFile = true, cert
		}, []string{"request_plane.tls_client_auth", "request_plane.tls_cert_file", "request_plane.tls_key_file", "LOOM_REQUEST_PLANE_TLS_CERT_FILE", "unset tls_client_auth"}},
		{"client auth without a CA", func(rc *config.RequestPlane) {
			rc.TLSClientAuth, rc.TLSCertFile, rc.TLSKeyFile = true, cert, key
		}, []string{"request_plane.tls_client_auth", "request_plane.tls_ca_file", "LOOM_REQUEST_PLANE_TLS_CA_FILE", "unset tls_client_auth"}},
		{"client auth with a CA file that holds no certificate", func(rc *config.RequestPlane) {
			rc.TLSClientAuth, rc.TLSCertFile, rc.TLSKeyFile, rc.TLSCAFile = true, cert, key, garbage
		}, []string{"request_plane.tls_ca_file", garbage, "BEGIN CERTIFICATE"}},
		{"client auth with a CA file that does not exist", func(rc *config.RequestPlane) {
			rc.TLSClientAuth, rc.TLSCertFile, rc.TLSKeyFile, rc.TLSCAFile = true, cert, key, missing
		}, []string{"request_plane.tls_ca_file", missing, "no such file"}},
		{"a certificate without its key", func(rc *config.RequestPlane) {
			rc.TLSCertFile = cert
		}, []string{"request_plane.tls_cert_file", "without request_plane.tls_key_file"}},
		{"a key without its certificate", func(rc *config.RequestPlane) {
			rc.TLSKeyFile = key
		}, []string{"request_plane.tls_key_file", "without request_plane.tls_cert_file"}},
		{"a certificate file that does not exist", func(rc *config.RequestPlane) {
			rc.TLSCertFile, rc.TLSKeyFile = missing, key
		}, []string{"request_plane.tls_cert_file " + missing}},
		{"a certificate file that is not PEM", func(rc *config.RequestPlane) {
			rc.TLSCertFile, rc.TLSKeyFile = garbage, key
		}, []string{"request_plane.tls_cert_file " + garbage}},
		{"a key that is not the certificate's", func(rc *config.RequestPlane) {
			rc.TLSCertFile, rc.TLSKeyFile = cert, oldKey
		}, []string{"request_plane.tls_cert_file " + cert, "request_plane.tls_key_file " + oldKey}},
		{"an expired certificate", func(rc *config.RequestPlane) {
			rc.TLSCertFile, rc.TLSKeyFile = oldCert, oldKey
		}, []string{"request_plane.tls_cert_file " + oldCert, "expired", "renew"}},
		{"listening on every address without advertise", func(rc *config.RequestPlane) {
			rc.Host = "0.0.0.0"
		}, []string{`request_plane.host "0.0.0.0"`, "request_plane.advertise", "LOOM_REQUEST_PLANE_ADVERTISE"}},
		{"listening on every IPv6 address without advertise", func(rc *config.RequestPlane) {
			rc.Host = "::"
		}, []string{`request_plane.host "::"`, "request_plane.advertise"}},
		{"an empty host without advertise", func(rc *config.RequestPlane) {
			rc.Host = ""
		}, []string{`request_plane.host ""`, "request_plane.advertise"}},
		{"an advertised address without a port", func(rc *config.RequestPlane) {
			rc.Advertise = "10.0.0.5"
		}, []string{`request_plane.advertise "10.0.0.5"`, "missing port", "LOOM_REQUEST_PLANE_ADVERTISE"}},
		{"an advertised address without a host", func(rc *config.RequestPlane) {
			rc.Advertise = ":9345"
		}, []string{`request_plane.advertise ":9345"`, "no host"}},
		{"an advertised port out of range", func(rc *config.RequestPlane) {
			rc.Host, rc.Advertise = "0.0.0.0", "pod:0"
		}, []string{`request_plane.advertise "pod:0"`, "1 to 65535"}},
		{"a transport of neither plane", func(rc *config.RequestPlane) {
			rc.Transport = "udp"
		}, []string{"request_plane.transport", `"udp"`, "use tcp or nats"}},
	}
	for _, tt := range serving {
		t.Run("serving: "+tt.name, func(t *testing.T) {
			rc := config.Default().RequestPlane
			rc.Transport, rc.Host, rc.Port = planes.TCP, "127.0.0.1", 0
			tt.set(&rc)
			p := planes.New(planes.Config{RequestPlane: rc, Logger: quiet}, upper{})
			defer p.Close()
			_, addr, _, err := p.Serve(context.Background())
			if err == nil {
				_ = p.Shutdown(context.Background())
				t.Fatalf("Serve served on %s; want an error", addr)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Serve: %v\nwant it to say %q", err, w)
				}
			}
		})
	}

	calling := []struct {
		name string
		set  func(rc *config.RequestPlane)
		want []string
	}{
		{"a CA file that does not exist", func(rc *config.RequestPlane) {
			rc.TLSCAFile = missing
		}, []string{"request_plane.tls_ca_file", missing}},
		{"a CA file that holds no certificate", func(rc *config.RequestPlane) {
			rc.TLSCAFile = garbage
		}, []string{"request_plane.tls_ca_file", garbage, "BEGIN CERTIFICATE"}},
		{"a client certificate without its key", func(rc *config.RequestPlane) {
			rc.TLSCAFile, rc.TLSCertFile = cert, cert
		}, []string{"request_plane.tls_cert_file", "without request_plane.tls_key_file"}},
		{"an expired client certificate", func(rc *config.RequestPlane) {
			rc.TLSCAFile, rc.TLSCertFile, rc.TLSKeyFile = cert, oldCert, oldKey
		}, []string{"request_plane.tls_cert_file " + oldCert, "renew"}},
	}
	for _, tt := range calling {
		t.Run("calling: "+tt.name, func(t *testing.T) {
			rc := config.Default().RequestPlane
			rc.Transport, rc.Host, rc.Port = planes.TCP, "127.0.0.1", 0
			tt.set(&rc)
			p := planes.New(planes.Config{RequestPlane: rc, Logger: quiet}, upper{})
			defer p.Close()
			s, err := p.Open(context.Background(), planes.Target{Transport: planes.TCP, Address: "127.0.0.1:1", TLS: true}, plane.Request{Path: "a/b/c"})
			if err == nil {
				s.Close()
				t.Fatal("Open called; want an error")
			}
			if !errors.Is(err, plane.ErrUnreachable) {
				t.Errorf("Open: %v, want it to wrap ErrUnreachable", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Open: %v\nwant it to say %q", err, w)
				}
			}
		})
	}
}

// Mutual TLS is the TCP plane's: a runtime asked for it that serves on
// NATS is refused at start rather than serving every caller.
func TestClientAuthOnTheNATSPlaneIsRefused(t *testing.T) {
	ns, err := embedded.StartNATS(embedded.NATSOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	cert, key := testutil.SelfSignedCert(t, time.Now().Add(time.Hour))
	rc := config.Default().RequestPlane
	rc.Transport, rc.TLSClientAuth = planes.NATS, true
	rc.TLSCertFile, rc.TLSKeyFile, rc.TLSCAFile = cert, key, cert
	p := planes.New(planes.Config{RequestPlane: rc, ID: 1, Logger: quiet, NATS: func(context.Context) (*nats.Conn, error) { return nc, nil }}, upper{})
	defer p.Close()
	_, addr, _, err := p.Serve(context.Background())
	if err == nil {
		_ = p.Shutdown(context.Background())
		t.Fatalf("Serve served on %s with request_plane.tls_client_auth set; want an error", addr)
	}
	for _, w := range []string{"request_plane.tls_client_auth", "request_plane.transport is nats", "unset tls_client_auth or serve on tcp"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("Serve: %v\nwant it to say %q", err, w)
		}
	}
}

// A caller with TLS on cannot call an instance that serves plain TCP:
// Open says so, naming the keys on both sides.
func TestATLSCallerIsToldThePlainServerItCannotCall(t *testing.T) {
	cert, _ := testutil.SelfSignedCert(t, time.Now().Add(time.Hour))
	rc := config.Default().RequestPlane
	rc.TLSCAFile = cert
	p := planes.New(planes.Config{RequestPlane: rc, Logger: quiet}, upper{})
	defer p.Close()
	_, err := p.Open(context.Background(), planes.Target{Transport: planes.TCP, Address: "127.0.0.1:1"}, plane.Request{Path: "a/b/c"})
	if !errors.Is(err, plane.ErrUnreachable) {
		t.Fatalf("Open: %v, want ErrUnreachable", err)
	}
	for _, w := range []string{"127.0.0.1:1 serves plain TCP", "request_plane.tls_ca_file is set", "request_plane.tls_cert_file", "unset tls_ca_file"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("Open: %v\nwant it to say %q", err, w)
		}
	}
}

// Listening on every address is fine once advertise says where others
// dial: Serve returns that address for discovery.
func TestEveryAddressServesWhereAdvertised(t *testing.T) {
	rc := config.Default().RequestPlane
	rc.Transport, rc.Host, rc.Port, rc.Advertise = planes.TCP, "0.0.0.0", 0, "[::1]:9345"
	p := planes.New(planes.Config{RequestPlane: rc, Logger: quiet}, upper{})
	defer p.Close()
	_, addr, _, err := p.Serve(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Shutdown(context.Background())
	if addr != rc.Advertise {
		t.Fatalf("Serve advertises %q, want %q", addr, rc.Advertise)
	}
}
