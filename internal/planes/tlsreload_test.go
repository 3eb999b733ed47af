package planes_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/internal/plane"
	"github.com/loomrt/loom/internal/planes"
	"github.com/loomrt/loom/internal/testutil"
)

// tlsFiles are a process's request-plane TLS files, in a directory of
// their own so that a test can renew them.
type tlsFiles struct{ cert, key, ca string }

// copyTLSFiles copies cert, key and ca (each may be "") into a new
// directory.
func copyTLSFiles(t *testing.T, cert, key, ca string) tlsFiles {
	t.Helper()
	dir := t.TempDir()
	cp := func(name, src string) string {
		if src == "" {
			return ""
		}
		dst := filepath.Join(dir, name)
		renew(t, dst, src)
		return dst
	}
	return tlsFiles{cert: cp("tls.crt", cert), key: cp("tls.key", key), ca: cp("ca.crt", ca)}
}

// renew replaces dst with the contents of src, as Kubernetes updates a
// mounted Secret: written beside it, then renamed over it.
func renew(t *testing.T, dst, src string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	tmp := dst + ".new"
	writeFile(t, tmp, data)
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatal(err)
	}
}

// syncBuffer is a log destination safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// tlsPlanes returns TCP planes on 127.0.0.1 with the TLS files f, stopped
// at the end of the test.
func tlsPlanes(t *testing.T, log *slog.Logger, f tlsFiles, clientAuth bool) *planes.Planes {
	t.Helper()
	rc := config.Default().RequestPlane
	rc.Transport, rc.Host, rc.Port = planes.TCP, "127.0.0.1", 0
	rc.TLSCertFile, rc.TLSKeyFile, rc.TLSCAFile, rc.TLSClientAuth = f.cert, f.key, f.ca, clientAuth
	if log == nil {
		log = quiet
	}
	p := planes.New(planes.Config{RequestPlane: rc, FailureCooldown: time.Second, ID: 0xabc, Logger: log, OnLimit: func(string) {}},
		upper{paths: map[string]context.Context{"a/b/c": context.Background()}})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := p.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		if err := p.Close(); err != nil {
			t.Error(err)
		}
	})
	return p
}

func serveTLS(t *testing.T, p *planes.Planes) string {
	t.Helper()
	tr, addr, tlsOn, err := p.Serve(context.Background())
	if err != nil || tr != planes.TCP || !tlsOn {
		t.Fatalf("Serve: %q %q TLS %v, %v", tr, addr, tlsOn, err)
	}
	return addr
}

// call calls a/b/c at addr, a TLS server, and returns the error.
func call(t *testing.T, p *planes.Planes, addr string) error {
	t.Helper()
	s, err := p.Open(context.Background(), planes.Target{Transport: planes.TCP, Address: addr, TLS: true}, plane.Request{Path: "a/b/c", Payload: []byte("hi")})
	if err != nil {
		return err
	}
	defer s.Close()
	b, err := s.Recv()
	if err != nil {
		return err
	}
	if string(b) != "HI" {
		t.Fatalf("got %q, want HI", b)
	}
	return nil
}

// servedCert connects to addr with a fresh connection and returns the
// certificate the server presented.
func servedCert(t *testing.T, addr string, roots *x509.CertPool) []byte {
	t.Helper()
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"}}
	c, err := d.DialContext(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.(*tls.Conn).ConnectionState().PeerCertificates[0].Raw
}

// bothCAs trusts the CAs of a and b.
func bothCAs(a, b *testutil.PKI) *x509.CertPool {
	pool := x509.NewCertPool()
	for _, p := range []*testutil.PKI{a, b} {
		data, _ := os.ReadFile(p.CAFile)
		pool.AppendCertsFromPEM(data)
	}
	return pool
}

// A server whose certificate is renewed on disk serves the renewed one to
// the next connection, without a restart.
func TestARenewedServerCertificateIsServedToTheNextConnection(t *testing.T) {
	old, renewed := testutil.NewPKI(t, "old"), testutil.NewPKI(t, "renewed")
	f := copyTLSFiles(t, old.ServerCertFile, old.ServerKeyFile, "")
	addr := serveTLS(t, tlsPlanes(t, nil, f, false))
	roots := bothCAs(old, renewed)
	if got := servedCert(t, addr, roots); !bytes.Equal(got, old.Server.Certificate[0]) {
		t.Fatal("the server does not serve the certificate it started with")
	}
	renew(t, f.key, renewed.ServerKeyFile)
	renew(t, f.cert, renewed.ServerCertFile)
	if got := servedCert(t, addr, roots); !bytes.Equal(got, renewed.Server.Certificate[0]) {
		t.Fatal("after the certificate was renewed on disk, a new connection still got the old one")
	}
}

// A caller whose CA file is renewed trusts the new CA at its next
// connection, and still checks that the certificate is for the address
// it dialled, a name or an IP address.
func TestACallerTrustsARenewedCAAndStillChecksTheName(t *testing.T) {
	old, renewed := testutil.NewPKI(t, "old"), testutil.NewPKI(t, "renewed")
	addr := serveTLS(t, tlsPlanes(t, nil, tlsFiles{cert: renewed.ServerCertFile, key: renewed.ServerKeyFile}, false))
	// A server whose certificate is for another name, signed by a CA
	// the caller trusts after the renewal.
	otherCert, otherKey := testutil.SelfSignedCertFor(t, "elsewhere.example")
	other := serveTLS(t, tlsPlanes(t, nil, tlsFiles{cert: otherCert, key: otherKey}, false))

	f := copyTLSFiles(t, "", "", old.CAFile)
	caller := tlsPlanes(t, nil, f, false)
	var unknown x509.UnknownAuthorityError
	if err := call(t, caller, addr); !errors.As(err, &unknown) {
		t.Fatalf("calling a server of another CA: %v, want an unknown authority", err)
	}
	bundle := filepath.Join(t.TempDir(), "bundle.pem")
	writeFile(t, bundle, append(readFile(t, renewed.CAFile), readFile(t, otherCert)...))
	renew(t, f.ca, bundle)
	if err := call(t, caller, addr); err != nil {
		t.Fatalf("after the CA file was renewed on disk: %v", err)
	}

	var hostname x509.HostnameError
	// The certificate is for 127.0.0.1: the same server dialled as
	// localhost is refused.
	_, port, _ := net.SplitHostPort(addr)
	if err := call(t, caller, net.JoinHostPort("localhost", port)); !errors.As(err, &hostname) {
		t.Fatalf("calling a certificate for 127.0.0.1 at localhost: %v, want a hostname error", err)
	}
	// A certificate for a name, dialled at an IP address (which TLS
	// does not send as the server name), is refused.
	if err := call(t, caller, other); !errors.As(err, &hostname) {
		t.Fatalf("calling a certificate for elsewhere.example at %s: %v, want a hostname error", other, err)
	}
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// A certificate file caught half written does not stop the server: it
// keeps serving the certificate it had, warns once naming the key and the
// file, and serves the renewed one once the files are whole.
func TestAHalfWrittenCertificateKeepsTheOldOneAndWarnsOnce(t *testing.T) {
	old, renewed := testutil.NewPKI(t, "old"), testutil.NewPKI(t, "renewed")
	f := copyTLSFiles(t, old.ServerCertFile, old.ServerKeyFile, "")
	var logs syncBuffer
	addr := serveTLS(t, tlsPlanes(t, slog.New(slog.NewTextHandler(&logs, nil)), f, false))
	roots := bothCAs(old, renewed)
	whole, err := os.ReadFile(renewed.ServerCertFile)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, f.cert, whole[:len(whole)/2]) // in place, cut short
	for range 3 {
		if got := servedCert(t, addr, roots); !bytes.Equal(got, old.Server.Certificate[0]) {
			t.Fatal("with the certificate file half written, the server does not serve the certificate it had")
		}
	}
	warnings := strings.Count(logs.String(), "level=WARN")
	if warnings != 1 || !strings.Contains(logs.String(), "key=request_plane.tls_cert_file") || !strings.Contains(logs.String(), f.cert) {
		t.Fatalf("%d warnings, want 1 naming request_plane.tls_cert_file and %s; logs:\n%s", warnings, f.cert, logs.String())
	}
	renew(t, f.key, renewed.ServerKeyFile)
	writeFile(t, f.cert, whole)
	if got := servedCert(t, addr, roots); !bytes.Equal(got, renewed.Server.Certificate[0]) {
		t.Fatal("once the renewed files were whole, a new connection still got the old certificate")
	}
	if n := strings.Count(logs.String(), "level=WARN"); n != 1 {
		t.Fatalf("%d warnings after the files were whole, want 1; logs:\n%s", n, logs.String())
	}
}

// Mutual TLS across a renewal: a server whose client-CA file is renewed
// accepts callers of the new CA and refuses those of the old one, and a
// caller whose client certificate is renewed presents the new one.
func TestMutualTLSWithRenewedClientCertificatesAndCAs(t *testing.T) {
	old, renewed := testutil.NewPKI(t, "old"), testutil.NewPKI(t, "renewed")
	srv := copyTLSFiles(t, old.ServerCertFile, old.ServerKeyFile, old.CAFile)
	addr := serveTLS(t, tlsPlanes(t, nil, srv, true))
	cli := copyTLSFiles(t, old.ClientCertFile, old.ClientKeyFile, old.CAFile)
	caller := tlsPlanes(t, nil, cli, false)
	if err := call(t, caller, addr); err != nil {
		t.Fatalf("before the renewal: %v", err)
	}

	// The client certificates move to the renewed CA: the server's
	// client-CA file and the caller's certificate are renewed.
	renew(t, srv.ca, renewed.CAFile)
	renew(t, cli.key, renewed.ClientKeyFile)
	renew(t, cli.cert, renewed.ClientCertFile)

	// A new server, trusting only the renewed CA, gets the caller's
	// renewed certificate on the caller's next connection.
	addr2 := serveTLS(t, tlsPlanes(t, nil, tlsFiles{cert: old.ServerCertFile, key: old.ServerKeyFile, ca: renewed.CAFile}, true))
	if err := call(t, caller, addr2); err != nil {
		t.Fatalf("a caller whose client certificate was renewed, to a server of the renewed client CA: %v", err)
	}
	// The first server takes callers of the renewed CA, and no longer
	// those of the old one.
	withRenewed := tlsPlanes(t, nil, tlsFiles{cert: renewed.ClientCertFile, key: renewed.ClientKeyFile, ca: old.CAFile}, false)
	if err := call(t, withRenewed, addr); err != nil {
		t.Fatalf("a caller of the renewed client CA, to the server whose client-CA file was renewed: %v", err)
	}
	withOld := tlsPlanes(t, nil, tlsFiles{cert: old.ClientCertFile, key: old.ClientKeyFile, ca: old.CAFile}, false)
	if err := call(t, withOld, addr); err == nil {
		t.Fatal("a caller of the old client CA got through to the server whose client-CA file was renewed")
	}
}
