// Package tlsfiles loads the PEM files that Loom's TLS settings name (the
// request plane's request_plane.tls_* and the NATS connection's nats.tls_*)
// with one set of rules and errors: a file that cannot be read, or holds no
// certificate, or a certificate (with its key) that has expired, is an
// error naming the configuration key and the file. A CA file may hold
// expired CAs among current ones, as bundles do: CAPool keeps them.
//
// The files are read again, so that certificates renewed on disk are used
// without a restart: by the request plane and the etcd discovery backend
// when a file has changed (its identity, size or modification time), at
// the next TLS handshake, keeping the last files that loaded if the new
// ones do not ([Reloaded]); by the NATS connection at every reconnect. At
// start-up, files that do not load are an error.
//
// The etcd discovery backend's settings (discovery.etcd_tls_*, set by
// Dynamo's ETCD_AUTH_* variables) may hold the PEM text itself instead of
// a file name, as Dynamo reads them: [CAPoolOrPEM] and [KeyPairOrPEM] take
// either, and their errors never repeat the text.
package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
)

// ErrNoCertificate reports a CA file that holds no PEM certificate.
var ErrNoCertificate = errors.New("holds no PEM certificate")

// ErrExpired reports a certificate whose validity has ended.
var ErrExpired = errors.New("expired")

// CAPool reads the PEM certificates in file, which the configuration key
// named key set. An empty file name gives a nil pool (the system's CAs).
// A certificate block that does not parse is an error naming it.
func CAPool(key, file string) (*x509.CertPool, error) {
	if file == "" {
		return nil, nil
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", key, file, err)
	}
	return caPool(key, file, data)
}

// PEMText stands for a setting's PEM text in errors and logs.
const PEMText = "(PEM text)"

// IsPEM reports whether a setting's value is PEM text rather than the
// name of a file: whether it begins, after white space, with -----BEGIN.
func IsPEM(value string) bool {
	return strings.HasPrefix(strings.TrimSpace(value), "-----BEGIN")
}

// Shown returns value as errors and logs may show it: PEMText for PEM
// text, which may be a private key, else value.
func Shown(value string) string {
	if IsPEM(value) {
		return PEMText
	}
	return value
}

// CAPoolOrPEM is CAPool for a setting that holds either the name of a
// file or the PEM text itself (see IsPEM).
func CAPoolOrPEM(key, value string) (*x509.CertPool, error) {
	if !IsPEM(value) {
		return CAPool(key, value)
	}
	// pem.Decode finds no block after spaces that begin a line.
	return caPool(key, PEMText, []byte(strings.TrimSpace(value)))
}

// caPool reads the certificates in data, which came from name.
func caPool(key, name string, data []byte) (*x509.CertPool, error) {
	// x509.CertPool.AppendCertsFromPEM skips a block that does not
	// parse: a CA cut short in a bundle would only show as handshakes
	// failing with an unknown authority.
	pool := x509.NewCertPool()
	n := 0
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		n++
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s %s: certificate %d does not parse (%w); fix or remove it", key, name, n, err)
		}
		pool.AddCert(cert)
	}
	if n == 0 {
		return nil, fmt.Errorf("%s %s %w; give a file of -----BEGIN CERTIFICATE----- blocks", key, name, ErrNoCertificate)
	}
	return pool, nil
}

// KeyPair loads a certificate and its private key from the PEM files
// certFile and keyFile, which the configuration keys certKey and keyKey
// set. Both must be given: one without the other is an error naming the
// missing key. An expired certificate is an error wrapping ErrExpired.
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
	return current(certKey, certFile, cert)
}

// KeyPairOrPEM is KeyPair for settings that each hold either the name of
// a file or the PEM text itself (see IsPEM).
func KeyPairOrPEM(certKey, cert, keyKey, key string) (tls.Certificate, error) {
	if cert == "" || key == "" {
		return KeyPair(certKey, Shown(cert), keyKey, Shown(key)) // the error for one unset
	}
	read := func(value string) (name string, data []byte, err error) {
		if IsPEM(value) {
			return PEMText, []byte(strings.TrimSpace(value)), nil
		}
		data, err = os.ReadFile(value)
		return value, data, err
	}
	certName, certPEM, err := read(cert)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("%s %s: %w", certKey, certName, err)
	}
	keyName, keyPEM, err := read(key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("%s %s: %w", keyKey, keyName, err)
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("%s %s / %s %s: %w", certKey, certName, keyKey, keyName, err)
	}
	return current(certKey, certName, c)
}

// current returns cert unless it has expired.
func current(certKey, certName string, cert tls.Certificate) (tls.Certificate, error) {
	var err error
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return tls.Certificate{}, fmt.Errorf("%s %s: %w", certKey, certName, err)
		}
	}
	// Every peer refuses an expired certificate: say so now, not in
	// each handshake.
	if time.Now().After(leaf.NotAfter) {
		return tls.Certificate{}, fmt.Errorf("%s %s: the certificate %w on %s; renew it",
			certKey, certName, ErrExpired, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return cert, nil
}
