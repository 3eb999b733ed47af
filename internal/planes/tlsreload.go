package planes

import (
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"os"
	"sync"

	"github.com/loomrt/loom/internal/tlsfiles"
)

// tlsFiles is one value read from PEM files (a certificate and its key,
// a CA pool), read again when one of the files changes on disk. The
// request plane lives as long as the process, and cert-manager, Vault
// or a SPIFFE agent renew certificates in place: read once, a server
// served its old certificate until it expired and every caller failed,
// and a caller kept its old client certificate and CA bundle.
//
// A handshake only stats the files (identity, size, modification time);
// they are read when that changes. Files that do not load (caught half
// written, a certificate renewed before its key, expired) leave the last
// value that loaded in use, with one warning naming the key and the file
// per state of the files on disk.
type tlsFiles[T any] struct {
	key   string // the configuration key of the first file, for logs
	files []string
	load  func() (T, error)
	log   *slog.Logger

	mu   sync.Mutex
	seen []os.FileInfo // the files when last read, nil for one that could not be stat'ed
	val  T             // the last value that loaded
}

// watchTLS loads the value from files, which must load (a start-up error
// otherwise), and returns it kept current.
func watchTLS[T any](log *slog.Logger, key string, load func() (T, error), files ...string) (*tlsFiles[T], error) {
	w := &tlsFiles[T]{key: key, files: files, load: load, log: log}
	w.seen = w.stat()
	v, err := load()
	if err != nil {
		return nil, err
	}
	w.val = v
	return w, nil
}

// current returns the value the files hold now, or the last one that
// loaded if they do not load.
func (w *tlsFiles[T]) current() T {
	w.mu.Lock()
	defer w.mu.Unlock()
	// Stat before reading: a change after the stat is seen next time.
	st := w.stat()
	if sameFiles(st, w.seen) {
		return w.val
	}
	w.seen = st
	v, err := w.load()
	if err != nil {
		w.log.Warn("request plane: a TLS file changed and does not load; still using the one loaded before (it is read again when it changes)",
			"key", w.key, "files", w.files, "err", err)
		return w.val
	}
	w.val = v
	w.log.Info("request plane: loaded renewed TLS file", "key", w.key, "files", w.files)
	return v
}

func (w *tlsFiles[T]) stat() []os.FileInfo {
	st := make([]os.FileInfo, len(w.files))
	for i, f := range w.files {
		st[i], _ = os.Stat(f) // a missing file fails the load, which says why
	}
	return st
}

// sameFiles reports whether a and b are the same files, unchanged: a file
// replaced by rename (as Kubernetes updates a mounted Secret) is another
// file, one rewritten in place has another size or modification time.
func sameFiles(a, b []os.FileInfo) bool {
	for i := range a {
		x, y := a[i], b[i]
		if x == nil || y == nil {
			if x != y {
				return false
			}
			continue
		}
		if !os.SameFile(x, y) || x.Size() != y.Size() || !x.ModTime().Equal(y.ModTime()) {
			return false
		}
	}
	return true
}

// watchKeyPair keeps request_plane.tls_cert_file and tls_key_file current.
func watchKeyPair(log *slog.Logger, certFile, keyFile string) (*tlsFiles[*tls.Certificate], error) {
	return watchTLS(log, "request_plane.tls_cert_file", func() (*tls.Certificate, error) {
		c, err := tlsfiles.KeyPair("request_plane.tls_cert_file", certFile, "request_plane.tls_key_file", keyFile)
		if err != nil {
			return nil, err
		}
		return &c, nil
	}, certFile, keyFile)
}

// watchCAPool keeps request_plane.tls_ca_file current.
func watchCAPool(log *slog.Logger, caFile string) (*tlsFiles[*x509.CertPool], error) {
	return watchTLS(log, "request_plane.tls_ca_file", func() (*x509.CertPool, error) {
		return tlsfiles.CAPool("request_plane.tls_ca_file", caFile)
	}, caFile)
}

// serverClientCAs gives each handshake of a server that verifies client
// certificates a configuration with the current request_plane.tls_ca_file.
type serverClientCAs struct {
	base *tls.Config
	ca   *tlsFiles[*x509.CertPool]

	mu   sync.Mutex
	pool *x509.CertPool // that cfg holds
	cfg  *tls.Config
}

func (s *serverClientCAs) config(*tls.ClientHelloInfo) (*tls.Config, error) {
	pool := s.ca.current()
	s.mu.Lock()
	defer s.mu.Unlock()
	if pool != s.pool {
		cfg := s.base.Clone()
		cfg.ClientCAs, cfg.GetConfigForClient = pool, nil
		s.pool, s.cfg = pool, cfg
	}
	return s.cfg, nil
}

// clientFiles gives each connection a caller dials a configuration with
// the current request_plane.tls_ca_file and client certificate. A fresh
// configuration per change keeps crypto/tls's own verification of the
// server's certificate and name.
type clientFiles struct {
	ca   *tlsFiles[*x509.CertPool]
	cert *tlsFiles[*tls.Certificate] // nil: no client certificate

	mu   sync.Mutex
	pool *x509.CertPool   // that cfg holds
	leaf *tls.Certificate // that cfg holds
	cfg  *tls.Config
}

func (c *clientFiles) config() (*tls.Config, error) {
	pool := c.ca.current()
	var cert *tls.Certificate
	if c.cert != nil {
		cert = c.cert.current()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cfg == nil || pool != c.pool || cert != c.leaf {
		cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		c.pool, c.leaf, c.cfg = pool, cert, cfg
	}
	return c.cfg, nil
}
