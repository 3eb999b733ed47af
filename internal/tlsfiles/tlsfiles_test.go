package tlsfiles_test

import (
	"crypto/tls"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/internal/tlsfiles"
)

// checkKeyPair checks what a loader returned: with no wantErr, the one
// certificate loaded; else an error holding each of wantErr.
func checkKeyPair(t *testing.T, loader string, c tls.Certificate, err error, wantErr []string) {
	t.Helper()
	if wantErr == nil {
		if err != nil || len(c.Certificate) != 1 {
			t.Fatalf("%s = %d certificates, %v", loader, len(c.Certificate), err)
		}
		return
	}
	if err == nil {
		t.Fatalf("%s: no error", loader)
	}
	for _, w := range wantErr {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%s: err = %q, want it to contain %q", loader, err, w)
		}
	}
}

// selfSigned writes a self-signed certificate and its key as PEM files.
func selfSigned(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	return testutil.SelfSignedCert(t, time.Now().Add(time.Hour))
}

func write(t *testing.T, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(name, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestCAPool(t *testing.T) {
	cert, _ := selfSigned(t)
	junk := filepath.Join(t.TempDir(), "junk.pem")
	write(t, junk, []byte("not a certificate"))

	t.Run("no file means the system's CAs", func(t *testing.T) {
		pool, err := tlsfiles.CAPool("x.tls_ca_file", "")
		if pool != nil || err != nil {
			t.Fatalf("CAPool(\"\") = %v, %v; want nil, nil", pool, err)
		}
	})
	t.Run("a PEM certificate loads", func(t *testing.T) {
		pool, err := tlsfiles.CAPool("x.tls_ca_file", cert)
		if err != nil || pool == nil {
			t.Fatalf("CAPool = %v, %v", pool, err)
		}
	})
	t.Run("a missing file names the key and the file", func(t *testing.T) {
		_, err := tlsfiles.CAPool("x.tls_ca_file", "/no/ca.pem")
		if err == nil || !strings.Contains(err.Error(), "x.tls_ca_file /no/ca.pem") || !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("a certificate that does not parse is named, not skipped", func(t *testing.T) {
		good, err := os.ReadFile(cert)
		if err != nil {
			t.Fatal(err)
		}
		bundle := filepath.Join(t.TempDir(), "bundle.pem")
		write(t, bundle, append(good, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("cut short")})...))
		_, err = tlsfiles.CAPool("x.tls_ca_file", bundle)
		if err == nil || !strings.Contains(err.Error(), "x.tls_ca_file "+bundle+": certificate 2 does not parse") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("an expired CA in a bundle is kept, as bundles carry old CAs", func(t *testing.T) {
		expired, _ := testutil.SelfSignedCert(t, time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC))
		old, err := os.ReadFile(expired)
		if err != nil {
			t.Fatal(err)
		}
		good, err := os.ReadFile(cert)
		if err != nil {
			t.Fatal(err)
		}
		bundle := filepath.Join(t.TempDir(), "bundle.pem")
		write(t, bundle, append(old, good...))
		if pool, err := tlsfiles.CAPool("x.tls_ca_file", bundle); err != nil || pool == nil {
			t.Fatalf("CAPool of a bundle with an expired CA = %v, %v", pool, err)
		}
	})
	t.Run("a file without a certificate is ErrNoCertificate", func(t *testing.T) {
		_, err := tlsfiles.CAPool("x.tls_ca_file", junk)
		if !errors.Is(err, tlsfiles.ErrNoCertificate) || !strings.Contains(err.Error(), "x.tls_ca_file "+junk+" holds no PEM certificate") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestKeyPair(t *testing.T) {
	cert, key := selfSigned(t)
	expiredCert, expiredKey := testutil.SelfSignedCert(t, time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC))
	if _, err := tlsfiles.KeyPair("x.cert", expiredCert, "x.key", expiredKey); !errors.Is(err, tlsfiles.ErrExpired) {
		t.Errorf("an expired certificate: %v, want ErrExpired", err)
	}
	for _, tt := range []struct {
		name      string
		cert, key string
		wantErr   []string
	}{
		{name: "a certificate and its key load", cert: cert, key: key},
		{name: "neither names both keys", wantErr: []string{"x.cert and x.key are unset"}},
		{name: "a certificate without its key names the missing key", cert: cert, wantErr: []string{"x.cert " + cert, "without x.key"}},
		{name: "a key without its certificate names the missing key", key: key, wantErr: []string{"x.key " + key, "without x.cert"}},
		{name: "a missing file names both keys and files", cert: "/no/cert.pem", key: key, wantErr: []string{"x.cert /no/cert.pem / x.key " + key}},
		{name: "the key in place of the certificate is refused", cert: key, key: key, wantErr: []string{"x.cert " + key}},
		{name: "an expired certificate is refused, with its date", cert: expiredCert, key: expiredKey,
			wantErr: []string{"x.cert " + expiredCert, "expired on 2024-03-01T12:00:00Z", "renew it"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tlsfiles.KeyPair("x.cert", tt.cert, "x.key", tt.key)
			checkKeyPair(t, "KeyPair", c, err, tt.wantErr)
		})
	}
}

func read(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestCAPoolOrPEM(t *testing.T) {
	cert, _ := selfSigned(t)
	for _, tt := range []struct {
		name, value string
		wantErr     string
	}{
		{name: "a file name loads the file", value: cert},
		{name: "PEM text loads as it is", value: read(t, cert)},
		{name: "PEM text after white space is PEM text", value: "\n  " + read(t, cert)},
		{name: "a missing file names the key and the file", value: "/no/ca.pem", wantErr: "x.ca /no/ca.pem: open /no/ca.pem"},
		{name: "PEM text without a certificate is named as PEM text", value: "-----BEGIN NOTHING-----\n",
			wantErr: "x.ca (PEM text) holds no PEM certificate"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pool, err := tlsfiles.CAPoolOrPEM("x.ca", tt.value)
			if tt.wantErr == "" {
				if err != nil || pool == nil {
					t.Fatalf("CAPoolOrPEM = %v, %v", pool, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestKeyPairOrPEM(t *testing.T) {
	cert, key := selfSigned(t)
	certPEM, keyPEM := read(t, cert), read(t, key)
	expiredCert, expiredKey := testutil.SelfSignedCert(t, time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC))
	for _, tt := range []struct {
		name      string
		cert, key string
		wantErr   []string
	}{
		{name: "files load", cert: cert, key: key},
		{name: "PEM texts load", cert: certPEM, key: keyPEM},
		{name: "a PEM certificate and a key file load", cert: certPEM, key: key},
		{name: "a PEM key without its certificate is named, never shown", key: keyPEM,
			wantErr: []string{"x.key (PEM text) is set without x.cert"}},
		{name: "a missing key file names its key", cert: certPEM, key: "/no/key.pem", wantErr: []string{"x.key /no/key.pem: open"}},
		{name: "a key that does not match names both", cert: certPEM, key: read(t, expiredKey),
			wantErr: []string{"x.cert (PEM text) / x.key (PEM text)"}},
		{name: "an expired PEM certificate is refused", cert: read(t, expiredCert), key: read(t, expiredKey),
			wantErr: []string{"x.cert (PEM text): the certificate expired"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tlsfiles.KeyPairOrPEM("x.cert", tt.cert, "x.key", tt.key)
			checkKeyPair(t, "KeyPairOrPEM", c, err, tt.wantErr)
			if err != nil && strings.Contains(err.Error(), "PRIVATE KEY") {
				t.Errorf("err shows the key: %q", err)
			}
		})
	}
}
