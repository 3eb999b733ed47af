package natsconn_test

import (
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"

	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/internal/testutil"
)

func startNATS(t *testing.T, opts embedded.NATSOptions) *embedded.NATS {
	t.Helper()
	ns := testutil.StartNATS(t, opts)
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

// serverTLS is the server side; mutual asks for a verified client certificate.
func serverTLS(p *testutil.PKI, mutual bool) *tls.Config {
	c := &tls.Config{Certificates: []tls.Certificate{p.Server}, MinVersion: tls.VersionTLS12}
	if mutual {
		c.ClientAuth = tls.RequireAndVerifyClientCert
		c.ClientCAs = p.Pool
	}
	return c
}
