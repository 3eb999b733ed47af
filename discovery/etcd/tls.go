package etcd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"syscall"

	grpccredentials "google.golang.org/grpc/credentials"

	"github.com/loomrt/loom/internal/tlsfiles"
)

// The configuration keys of the TLS files, named in errors and logs.
const (
	keyCA   = "discovery.etcd_tls_ca_file"
	keyCert = "discovery.etcd_tls_cert_file"
	keyKey  = "discovery.etcd_tls_key_file"
)

// tlsFiles are the client's TLS settings, read again when a file among
// them changes on disk (tlsfiles.Reloaded): the process outlives its
// certificates, and etcd would refuse a client certificate that has
// expired. Settings that hold PEM text are read once.
type tlsFiles struct {
	files []string // the settings that name files
	creds *tlsfiles.Reloaded[grpccredentials.TransportCredentials]

	failMu  sync.Mutex
	failure error // see noteFailure
}

// newTLSFiles loads the settings, which must load.
func newTLSFiles(log *slog.Logger, ca, cert, key string) (*tlsFiles, error) {
	f := &tlsFiles{}
	for _, v := range []string{ca, cert, key} {
		if v != "" && !tlsfiles.IsPEM(v) {
			f.files = append(f.files, v)
		}
	}
	// A fresh configuration per change keeps crypto/tls's own
	// verification of etcd's certificate and name.
	load := func() (grpccredentials.TransportCredentials, error) {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		var err error
		if cfg.RootCAs, err = tlsfiles.CAPoolOrPEM(keyCA, ca); err != nil {
			return nil, err
		}
		if cert != "" || key != "" {
			c, err := tlsfiles.KeyPairOrPEM(keyCert, cert, keyKey, key)
			if err != nil {
				return nil, err
			}
			cfg.Certificates = []tls.Certificate{c}
		}
		return grpccredentials.NewTLS(cfg), nil
	}
	var err error
	if f.creds, err = tlsfiles.Watch(log, "discovery", "discovery.etcd_tls_*", load, f.files...); err != nil {
		return nil, err
	}
	return f, nil
}

// current returns the credentials of the files as they are now, or the
// last that loaded.
func (f *tlsFiles) current() grpccredentials.TransportCredentials { return f.creds.Current() }

// noteFailure keeps err, from a connection to etcd, if it tells of a TLS
// handshake that failed or a connection etcd dropped, preferring the
// first kind. The etcd client's errors do not always carry it: when it
// authenticates a user, a handshake that fails is only a timeout.
func (f *tlsFiles) noteFailure(err error) {
	if !isTLSFailure(err) && !isDropped(err) {
		return
	}
	f.failMu.Lock()
	defer f.failMu.Unlock()
	if f.failure == nil || isTLSFailure(err) || !isTLSFailure(f.failure) {
		f.failure = err
	}
}

// lastFailure returns the failure noteFailure kept, or nil.
func (f *tlsFiles) lastFailure() error {
	f.failMu.Lock()
	defer f.failMu.Unlock()
	return f.failure
}

// tlsCreds are the client's gRPC transport credentials: each connection
// to etcd is made with the TLS files as they are then. The etcd client
// makes its credentials once, from clientv3.Config.TLS, so a CA renewed
// on disk would need a restart; these replace them, given as the last of
// its dial options.
type tlsCreds struct{ files *tlsFiles }

func (c tlsCreds) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, grpccredentials.AuthInfo, error) {
	tc, info, err := c.files.current().ClientHandshake(ctx, authority, conn)
	if err != nil {
		c.files.noteFailure(err)
		return nil, nil, err
	}
	return notingConn{tc, c.files}, info, nil
}

// notingConn notes the errors of a connection's reads and writes: with
// TLS 1.3, etcd refuses a client certificate after the client's handshake
// is done, and the client reads etcd's alert, or finds the connection
// dropped, only then.
type notingConn struct {
	net.Conn
	files *tlsFiles
}

func (c notingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if err != nil {
		c.files.noteFailure(err)
	}
	return n, err
}

func (c notingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if err != nil {
		c.files.noteFailure(err)
	}
	return n, err
}

func (c tlsCreds) ServerHandshake(net.Conn) (net.Conn, grpccredentials.AuthInfo, error) {
	return nil, nil, errors.New("discovery: etcd client credentials do not serve")
}

func (c tlsCreds) Info() grpccredentials.ProtocolInfo { return c.files.current().Info() }

func (c tlsCreds) Clone() grpccredentials.TransportCredentials { return c }

// OverrideServerName is not supported: the etcd client gives each
// endpoint's name with its address.
func (c tlsCreds) OverrideServerName(string) error {
	return errors.New("discovery: etcd client credentials take the server name from the endpoint")
}

// isTLSFailure reports whether err, from a call to etcd, tells of a TLS
// handshake that failed: a certificate of etcd's that the CAs do not
// verify, or one of the client's that etcd refused. gRPC carries the
// handshake's error as text only.
func isTLSFailure(err error) bool {
	var uae x509.UnknownAuthorityError
	var cie x509.CertificateInvalidError
	var hne x509.HostnameError
	if errors.As(err, &uae) || errors.As(err, &cie) || errors.As(err, &hne) {
		return true
	}
	s := err.Error()
	for _, sign := range []string{"authentication handshake failed", "x509: ", "tls: ", "first record does not look like a TLS handshake"} {
		if strings.Contains(s, sign) {
			return true
		}
	}
	return false
}

// isDropped reports whether err, from a call to etcd, tells of a
// connection closed by etcd once made.
func isDropped(err error) bool {
	if errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) {
		return true
	}
	s := err.Error()
	for _, sign := range []string{"broken pipe", "connection reset by peer", "error reading server preface", "EOF"} {
		if strings.Contains(s, sign) {
			return true
		}
	}
	return false
}
