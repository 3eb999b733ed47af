// Package tlsfiles loads the PEM files that Loom's TLS settings name (the
// request plane's request_plane.tls_* and the NATS connection's nats.tls_*)
// with one set of rules and errors: a file that cannot be read or holds no
// certificate is an error naming the configuration key and the file.
package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// ErrNoCertificate reports a CA file that holds no PEM certificate.
var ErrNoCertificate = errors.New("holds no PEM certificate")

// CAPool reads the PEM certificates in file, which the configuration key
// named key set. An empty file name gives a nil pool (the system's CAs).
func CAPool(key, file string) (*x509.CertPool, error) {
	if file == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", key, file, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s %s %w; give a file of -----BEGIN CERTIFICATE----- blocks", key, file, ErrNoCertificate)
	}
	return pool, nil
}

// KeyPair loads a certificate and its private key from the PEM files
// certFile and keyFile, which the configuration keys certKey and keyKey
// set. Both must be given: one without the other is an error naming the
// missing key.
func KeyPair(certKey, certFile, keyKey, keyFile string) (tls.Certificate, error) {
	switch {
	case certFile == "" && keyFile == "":
		return tls.Certificate{}, fmt.Errorf("%s and %s are unset; set both", certKey, keyKey)
	case keyFile == "":
		return tls.Certificate{}, fmt.Errorf("%s %s is set without %s; a certificate needs its key", certKey, certFile, keyKey)
	case certFile == "":
		return tls.Certificate{}, fmt.Errorf("%s %s is set without %s; a key needs its certificate", keyKey, keyFile, certKey)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("%s %s / %s %s: %w", certKey, certFile, keyKey, keyFile, err)
	}
	return cert, nil
}
