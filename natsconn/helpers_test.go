package natsconn_test

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
	"sync"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"

	"github.com/loomrt/loom/embedded"
)

func startNATS(t *testing.T, opts embedded.NATSOptions) *embedded.NATS {
	t.Helper()
	ns, err := embedded.StartNATS(opts)
	if err != nil {
		t.Fatalf("StartNATS: %v", err)
	}
	t.Cleanup(ns.Shutdown)
	return ns
}

func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// deadURL returns a URL on which nothing listens.
func deadURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "nats://" + addr
}

// silentURL returns a URL whose server accepts connections and never speaks.
func silentURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return "nats://" + l.Addr().String()
}

// user is an NKey user: its seed and public key.
type user struct {
	seed string
	pub  string
}

func newUser(t *testing.T) user {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := kp.Seed()
	pub, _ := kp.PublicKey()
	return user{seed: string(seed), pub: pub}
}

// operator is a decentralised-auth setup: an operator, its system account
// and one account that the server knows, and one it does not.
type operator struct {
	server  *embedded.NATSOperator
	known   nkeys.KeyPair
	unknown nkeys.KeyPair
}

func newOperator(t *testing.T) operator {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	okp, err := nkeys.CreateOperator()
	must(err)
	opub, _ := okp.PublicKey()
	account := func(name string) (nkeys.KeyPair, string) {
		kp, err := nkeys.CreateAccount()
		must(err)
		pub, _ := kp.PublicKey()
		ac := jwt.NewAccountClaims(pub)
		ac.Name = name
		tok, err := ac.Encode(okp)
		must(err)
		return kp, tok
	}
	sys, sysJWT := account("SYS")
	known, knownJWT := account("APP")
	unknown, _ := account("STRANGER")
	sysPub, _ := sys.PublicKey()

	oc := jwt.NewOperatorClaims(opub)
	oc.Name = "loom-test"
	oc.SystemAccount = sysPub
	opJWT, err := oc.Encode(okp)
	must(err)
	return operator{
		server:  &embedded.NATSOperator{JWT: opJWT, Accounts: []string{sysJWT, knownJWT}},
		known:   known,
		unknown: unknown,
	}
}

// creds writes a .creds file for a new user of account.
func creds(t *testing.T, account nkeys.KeyPair, name string) string {
	t.Helper()
	ukp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	upub, _ := ukp.PublicKey()
	uc := jwt.NewUserClaims(upub)
	uc.Name = name
	tok, err := uc.Encode(account)
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := ukp.Seed()
	data, err := jwt.FormatUserConfig(tok, seed)
	if err != nil {
		t.Fatal(err)
	}
	return writeFile(t, name+".creds", data)
}

// pki is a test CA with a server certificate for 127.0.0.1 and a client
// certificate, as PEM files.
type pki struct {
	caFile, clientCert, clientKey string
	ca                            *x509.CertPool
	server                        tls.Certificate
}

func newPKI(t *testing.T, name string) pki {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name + " CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	must(err)
	caCert, err := x509.ParseCertificate(caDER)
	must(err)

	leaf := func(serial int64, usage x509.ExtKeyUsage) ([]byte, []byte) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		must(err)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: name + " leaf"},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
			IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		must(err)
		keyDER, err := x509.MarshalECPrivateKey(key)
		must(err)
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
			pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	}
	srvCert, srvKey := leaf(2, x509.ExtKeyUsageServerAuth)
	cliCert, cliKey := leaf(3, x509.ExtKeyUsageClientAuth)
	server, err := tls.X509KeyPair(srvCert, srvKey)
	must(err)
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return pki{
		caFile:     writeFile(t, "ca.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})),
		clientCert: writeFile(t, "client.pem", cliCert),
		clientKey:  writeFile(t, "client-key.pem", cliKey),
		ca:         pool,
		server:     server,
	}
}

// serverTLS is the server side; mutual asks for a verified client certificate.
func (p pki) serverTLS(mutual bool) *tls.Config {
	c := &tls.Config{Certificates: []tls.Certificate{p.server}, MinVersion: tls.VersionTLS12}
	if mutual {
		c.ClientAuth = tls.RequireAndVerifyClientCert
		c.ClientCAs = p.ca
	}
	return c
}
