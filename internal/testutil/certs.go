package testutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// SelfSignedCert writes a self-signed certificate for 127.0.0.1, valid
// from two hours before notAfter until notAfter, for servers and clients,
// and its EC key, as PEM files in a temporary directory.
func SelfSignedCert(t testing.TB, notAfter time.Time) (certFile, keyFile string) {
	t.Helper()
	return selfSigned(t, &x509.Certificate{
		Subject:   pkix.Name{CommonName: "loom test"},
		NotBefore: notAfter.Add(-2 * time.Hour), NotAfter: notAfter,
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	})
}

// SelfSignedCertFor writes a self-signed certificate for the DNS name
// alone (no IP address), valid for an hour either side of now, for
// servers and clients, and its EC key, as PEM files in a temporary
// directory.
func SelfSignedCertFor(t testing.TB, name string) (certFile, keyFile string) {
	t.Helper()
	now := time.Now()
	return selfSigned(t, &x509.Certificate{
		Subject:   pkix.Name{CommonName: name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		DNSNames: []string{name},
	})
}

// selfSigned completes tmpl as a CA that signs itself, and writes it and
// its EC key.
func selfSigned(t testing.TB, tmpl *x509.Certificate) (certFile, keyFile string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber, tmpl.IsCA, tmpl.BasicConstraintsValid = big.NewInt(1), true, true
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	for _, f := range []struct {
		name string
		b    *pem.Block
	}{{certFile, &pem.Block{Type: "CERTIFICATE", Bytes: der}}, {keyFile, &pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}}} {
		if err := os.WriteFile(f.name, pem.EncodeToMemory(f.b), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile
}

// PKI is a test CA with a server and a client certificate for 127.0.0.1,
// each signed by it, both as PEM files and as parsed values.
type PKI struct {
	CAFile                        string // the CA certificate
	ServerCertFile, ServerKeyFile string
	ClientCertFile, ClientKeyFile string
	Pool                          *x509.CertPool // holds the CA
	Server, Client                tls.Certificate
}

// NewPKI makes a PKI valid for an hour either side of now, its files in a
// temporary directory. name goes into the certificates' common names.
func NewPKI(t testing.TB, name string) *PKI {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	write := func(file, typ string, der []byte) string {
		path := filepath.Join(dir, file)
		must(os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600))
		return path
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name + " CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	must(err)
	ca, err := x509.ParseCertificate(caDER)
	must(err)
	p := &PKI{CAFile: write("ca.pem", "CERTIFICATE", caDER), Pool: x509.NewCertPool()}
	p.Pool.AddCert(ca)
	leaf := func(serial int64, role string, usage x509.ExtKeyUsage) (cert tls.Certificate, certFile, keyFile string) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		must(err)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name + " " + role},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		must(err)
		kder, err := x509.MarshalECPrivateKey(k)
		must(err)
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k},
			write(role+".pem", "CERTIFICATE", der), write(role+"-key.pem", "EC PRIVATE KEY", kder)
	}
	p.Server, p.ServerCertFile, p.ServerKeyFile = leaf(2, "server", x509.ExtKeyUsageServerAuth)
	p.Client, p.ClientCertFile, p.ClientKeyFile = leaf(3, "client", x509.ExtKeyUsageClientAuth)
	return p
}
