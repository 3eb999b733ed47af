package planes

import (
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"sync"

	"github.com/loomrt/loom/internal/tlsfiles"
)

// watchKeyPair keeps request_plane.tls_cert_file and tls_key_file current.
func watchKeyPair(log *slog.Logger, certFile, keyFile string) (*tlsfiles.Reloaded[*tls.Certificate], error) {
	return tlsfiles.Watch(log, "request plane", "request_plane.tls_cert_file", func() (*tls.Certificate, error) {
		c, err := tlsfiles.KeyPair("request_plane.tls_cert_file", certFile, "request_plane.tls_key_file", keyFile)
		if err != nil {
			return nil, err
		}
		return &c, nil
	}, certFile, keyFile)
}

// watchCAPool keeps request_plane.tls_ca_file current.
func watchCAPool(log *slog.Logger, caFile string) (*tlsfiles.Reloaded[*x509.CertPool], error) {
	return tlsfiles.Watch(log, "request plane", "request_plane.tls_ca_file", func() (*x509.CertPool, error) {
		return tlsfiles.CAPool("request_plane.tls_ca_file", caFile)
	}, caFile)
}

// serverClientCAs gives each handshake of a server that verifies client
// certificates a configuration with the current request_plane.tls_ca_file.
type serverClientCAs struct {
	base *tls.Config
	ca   *tlsfiles.Reloaded[*x509.CertPool]

	mu   sync.Mutex
	pool *x509.CertPool // that cfg holds
	cfg  *tls.Config
}

func (s *serverClientCAs) config(*tls.ClientHelloInfo) (*tls.Config, error) {
	pool := s.ca.Current()
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
	ca   *tlsfiles.Reloaded[*x509.CertPool]
	cert *tlsfiles.Reloaded[*tls.Certificate] // nil: no client certificate

	mu   sync.Mutex
	pool *x509.CertPool   // that cfg holds
	leaf *tls.Certificate // that cfg holds
	cfg  *tls.Config
}

func (c *clientFiles) config() (*tls.Config, error) {
	pool := c.ca.Current()
	var cert *tls.Certificate
	if c.cert != nil {
		cert = c.cert.Current()
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
