package natsconn

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/internal/tlsfiles"
)

// tlsFor builds the client TLS configuration, or nil when TLS is not asked
// for; nats.go still upgrades if the server requires TLS.
func tlsFor(cfg config.NATS, urls []*url.URL) (*tls.Config, error) {
	secure := cfg.TLSCAFile != "" || cfg.TLSCertFile != "" || cfg.TLSKeyFile != ""
	for _, u := range urls {
		secure = secure || u.Scheme == "tls" || u.Scheme == "wss"
	}
	if !secure {
		return nil, nil
	}
	pool, err := tlsfiles.CAPool("nats.tls_ca_file", cfg.TLSCAFile)
	if err != nil {
		return nil, fmt.Errorf("natsconn: TLS CA file: %w", err)
	}
	tc := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if cfg.TLSCertFile != "" || cfg.TLSKeyFile != "" {
		cert, err := tlsfiles.KeyPair("nats.tls_cert_file", cfg.TLSCertFile, "nats.tls_key_file", cfg.TLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("natsconn: TLS client certificate (mutual TLS): %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// tlsReload returns the nats.go option that reads the TLS files again at
// every connect and reconnect, or nil when none is set. A connection lives
// as long as the process: with the files read once, a client certificate
// renewed on disk (cert-manager, Vault, SPIFFE) was never used, and once
// the old one expired, or the server moved to a renewed CA, every
// reconnect failed until the process restarted. A file that cannot be
// read (caught half written), or an expired certificate, fails that
// attempt; the next attempt reads the files again.
func tlsReload(cfg config.NATS) nats.Option {
	var certCB nats.TLSCertHandler
	var caCB nats.RootCAsHandler
	if cfg.TLSCertFile != "" || cfg.TLSKeyFile != "" {
		certCB = func() (tls.Certificate, error) {
			cert, err := tlsfiles.KeyPair("nats.tls_cert_file", cfg.TLSCertFile, "nats.tls_key_file", cfg.TLSKeyFile)
			if err != nil {
				return tls.Certificate{}, fmt.Errorf("natsconn: TLS client certificate (mutual TLS): %w", err)
			}
			return cert, nil
		}
	}
	if cfg.TLSCAFile != "" {
		caCB = func() (*x509.CertPool, error) {
			pool, err := tlsfiles.CAPool("nats.tls_ca_file", cfg.TLSCAFile)
			if err != nil {
				return nil, fmt.Errorf("natsconn: TLS CA file: %w", err)
			}
			return pool, nil
		}
	}
	if certCB == nil && caCB == nil {
		return nil
	}
	return nats.ClientTLSConfig(certCB, caCB)
}

// isTLSError reports whether err came from the TLS handshake or a TLS
// mismatch between client and server.
func isTLSError(err error) bool {
	var (
		verify    *tls.CertificateVerificationError
		unknownCA x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		alert     tls.AlertError
		record    tls.RecordHeaderError
	)
	switch {
	case errors.As(err, &verify), errors.As(err, &unknownCA), errors.As(err, &hostname),
		errors.As(err, &invalid), errors.As(err, &alert), errors.As(err, &record),
		errors.Is(err, nats.ErrSecureConnWanted), errors.Is(err, nats.ErrSecureConnRequired),
		errors.Is(err, nats.ErrTLS):
		return true
	}
	// A refused client certificate arrives as a remote alert, which crypto/tls
	// reports as an unexported type.
	return strings.Contains(err.Error(), "remote error: tls:")
}

// tlsHint names the TLS settings and files to check.
func tlsHint(cfg config.NATS) string {
	var files []string
	if cfg.TLSCAFile != "" {
		files = append(files, "nats.tls_ca_file "+cfg.TLSCAFile)
	} else {
		files = append(files, "nats.tls_ca_file (unset: the system's CAs)")
	}
	if cfg.TLSCertFile != "" {
		files = append(files, "nats.tls_cert_file "+cfg.TLSCertFile, "nats.tls_key_file "+cfg.TLSKeyFile)
	} else {
		files = append(files, "nats.tls_cert_file (unset: no client certificate)")
	}
	return "check " + strings.Join(files, ", ")
}
