package natsconn_test

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"go.uber.org/goleak"

	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/natsconn"

	"github.com/loomrt/loom/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const connectTimeout = 5 * time.Second

// fast is how long a refused credential may take: well under connectTimeout.
const fast = time.Second

func natsCfg(url string) config.NATS {
	return config.NATS{URL: url, ConnectTimeout: connectTimeout, MaxReconnects: -1}
}

// roundTrip checks that the connection really works.
func roundTrip(t *testing.T, nc *nats.Conn) {
	t.Helper()
	sub, err := nc.Subscribe("ping", func(m *nats.Msg) { _ = m.Respond([]byte("pong")) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	msg, err := nc.Request("ping", nil, 2*time.Second)
	if err != nil {
		t.Fatalf("request: %v", err)
	}
	if string(msg.Data) != "pong" {
		t.Fatalf("reply %q, want pong", msg.Data)
	}
}

func TestConnectWithEachAuthMode(t *testing.T) {
	good, bad := newUser(t), newUser(t)
	goodSeedFile := writeFile(t, "good.nk", []byte(good.seed+"\n"))
	op := newOperator(t)

	servers := map[string]embedded.NATSOptions{
		"users":    {Users: map[string]string{"bob": "s3cret"}},
		"token":    {Token: "t0ken"},
		"nkeys":    {NKeys: []string{good.pub}},
		"operator": {Operator: op.server},
	}
	urls := map[string]string{}
	for name, opts := range servers {
		urls[name] = startNATS(t, opts).ClientURL()
	}

	tests := []struct {
		name   string
		server string
		set    func(*config.NATS)
		want   []string // in the error; none means success
	}{
		{name: "user and password are accepted", server: "users",
			set: func(c *config.NATS) { c.User, c.Password = "bob", "s3cret" }},
		{name: "a wrong password is refused", server: "users",
			set:  func(c *config.NATS) { c.User, c.Password = "bob", "wrong" },
			want: []string{`refused user "bob": authorization violation (check NATS_AUTH_USERNAME and NATS_AUTH_PASSWORD)`}},
		{name: "no credentials are refused", server: "users",
			set:  func(*config.NATS) {},
			want: []string{"refused a connection without credentials", "NATS_AUTH_USERNAME", "NATS_AUTH_TOKEN", "NATS_AUTH_NKEY", "NATS_AUTH_CREDENTIALS_FILE"}},
		{name: "the token is accepted", server: "token",
			set: func(c *config.NATS) { c.Token = "t0ken" }},
		{name: "a wrong token is refused", server: "token",
			set:  func(c *config.NATS) { c.Token = "nope" },
			want: []string{"refused token auth: authorization violation (check NATS_AUTH_TOKEN)"}},
		{name: "an NKey seed string is accepted", server: "nkeys",
			set: func(c *config.NATS) { c.NKey = good.seed }},
		{name: "an NKey seed file is accepted", server: "nkeys",
			set: func(c *config.NATS) { c.NKey = goodSeedFile }},
		{name: "an unknown NKey is refused", server: "nkeys",
			set:  func(c *config.NATS) { c.NKey = bad.seed },
			want: []string{"refused NKey " + bad.pub + ": authorization violation", "NATS_AUTH_NKEY"}},
		{name: "a credentials file is accepted", server: "operator",
			set: func(c *config.NATS) { c.CredentialsFile = creds(t, op.known, "alice") }},
		{name: "a user of an unknown account is refused", server: "operator",
			set:  func(c *config.NATS) { c.CredentialsFile = creds(t, op.unknown, "mallory") },
			want: []string{"refused credentials file", "(user mallory): authorization violation", "NATS_AUTH_CREDENTIALS_FILE"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := natsCfg(urls[tt.server])
			tt.set(&cfg)
			begin := time.Now()
			nc, err := natsconn.Connect(t.Context(), cfg)
			elapsed := time.Since(begin)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Connect: %v", err)
				}
				defer nc.Close()
				roundTrip(t, nc)
				return
			}
			if err == nil {
				nc.Close()
				t.Fatal("Connect succeeded; want it refused")
			}
			t.Log(err)
			if !errors.Is(err, nats.ErrAuthorization) {
				t.Errorf("errors.Is(err, nats.ErrAuthorization) = false for %v", err)
			}
			if elapsed > fast {
				t.Errorf("refusal took %s; want under %s (ConnectTimeout %s)", elapsed, fast, connectTimeout)
			}
			msg := err.Error()
			for _, w := range append(tt.want, "natsconn: "+urls[tt.server]+" refused") {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q lacks %q", msg, w)
				}
			}
			for _, secret := range []string{"wrong", "nope", bad.seed} {
				if strings.Contains(msg, secret) {
					t.Errorf("error %q leaks the secret %q", msg, secret)
				}
			}
		})
	}
}

// A URL's user info is a credential: a user and password, or with no
// password a token (so nats.go sends it). Connect uses it, names it when
// it is refused, and never shows the token or the password, in errors or
// in its logs.
func TestCredentialsInTheURLAreUsedAndNeverShown(t *testing.T) {
	tokenURL := startNATS(t, embedded.NATSOptions{Token: "t0kenInURL"}).ClientURL()
	usersURL := startNATS(t, embedded.NATSOptions{Users: map[string]string{"bob": "s3cret"}}).ClientURL()
	withUser := func(u, info string) string { return strings.Replace(u, "nats://", "nats://"+info+"@", 1) }
	secrets := []string{"t0kenInURL", "wr0ngToken", "s3cret", "wr0ngPass"}

	for _, tt := range []struct {
		name string
		url  string
		want []string // in the error; none means success
	}{
		{name: "a token in the URL is accepted", url: withUser(tokenURL, "t0kenInURL")},
		{name: "a wrong token in the URL is refused, unseen", url: withUser(tokenURL, "wr0ngToken"),
			want: []string{"refused the token from the URL: authorization violation", "NATS_SERVER"}},
		{name: "a user and password in the URL are accepted", url: withUser(usersURL, "bob:s3cret")},
		{name: "a wrong password in the URL is refused, unseen", url: withUser(usersURL, "bob:wr0ngPass"),
			want: []string{`refused user "bob" from the URL: authorization violation`, "NATS_SERVER"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var logs testutil.SyncBuffer
			logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			nc, err := natsconn.Connect(t.Context(), natsCfg(tt.url), natsconn.WithLogger(logger))
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Connect: %v", err)
				}
				roundTrip(t, nc)
				nc.Close()
				if !strings.Contains(logs.String(), "NATS connected") {
					t.Errorf("no log of the connection:\n%s", logs.String())
				}
			} else {
				if err == nil {
					nc.Close()
					t.Fatal("Connect succeeded")
				}
				t.Log(err)
				if !errors.Is(err, nats.ErrAuthorization) {
					t.Errorf("errors.Is(err, nats.ErrAuthorization) = false for %v", err)
				}
				for _, w := range tt.want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q lacks %q", err, w)
					}
				}
			}
			for _, secret := range secrets {
				if err != nil && strings.Contains(err.Error(), secret) {
					t.Errorf("error %q shows the secret %q", err, secret)
				}
				if strings.Contains(logs.String(), secret) {
					t.Errorf("the log shows the secret %q:\n%s", secret, logs.String())
				}
			}
		})
	}
}

func TestConnectRejectsBadConfigBeforeDialing(t *testing.T) {
	seed := newUser(t).seed
	mangled := seed[:len(seed)-3] + "AAA"
	notPEM := writeFile(t, "ca.pem", []byte("not a certificate"))
	noSeed := writeFile(t, "empty.nk", []byte("nothing here\n"))
	junkCreds := writeFile(t, "junk.creds", []byte("junk"))
	okp, err := nkeys.CreateOperator()
	if err != nil {
		t.Fatal(err)
	}
	operatorSeed, _ := okp.Seed()
	url := deadURL(t)

	tests := []struct {
		name   string
		set    func(*config.NATS)
		is     error
		want   []string
		secret string
	}{
		{name: "user and token together conflict",
			set:  func(c *config.NATS) { c.User, c.Password, c.Token = "bob", "pw", "tok" },
			is:   natsconn.ErrAuthConflict,
			want: []string{"more than one NATS auth mode", "NATS_AUTH_USERNAME", "NATS_AUTH_PASSWORD", "NATS_AUTH_TOKEN", "set only one"}},
		{name: "NKey and credentials file together conflict",
			set:  func(c *config.NATS) { c.NKey, c.CredentialsFile = seed, "/x.creds" },
			is:   natsconn.ErrAuthConflict,
			want: []string{"NATS_AUTH_NKEY", "NATS_AUTH_CREDENTIALS_FILE"}, secret: seed},
		{name: "credentials in the URL and in the configuration conflict",
			set: func(c *config.NATS) {
				c.URL, c.Token = strings.Replace(c.URL, "nats://", "nats://bob:pw@", 1), "tok"
			},
			is:   natsconn.ErrAuthConflict,
			want: []string{"user info in nats.url (NATS_SERVER)", "NATS_AUTH_TOKEN", "set only one"}},
		{name: "a password without a user",
			set:  func(c *config.NATS) { c.Password = "pw" },
			want: []string{"NATS_AUTH_PASSWORD", "NATS_AUTH_USERNAME"}},
		{name: "a mangled NKey seed",
			set:  func(c *config.NATS) { c.NKey = mangled },
			want: []string{"NATS_AUTH_NKEY", "not a valid NKey seed"}, secret: mangled},
		{name: "a seed in quotes, as an env file keeps them, is not shown",
			set:  func(c *config.NATS) { c.NKey = `"` + seed + `"` },
			want: []string{"NATS_AUTH_NKEY", "not a valid NKey seed", "quotes"}, secret: seed[2:]},
		{name: "a seed with a full stop after it is not shown",
			set:  func(c *config.NATS) { c.NKey = seed + "." },
			want: []string{"NATS_AUTH_NKEY", "not a valid NKey seed"}, secret: seed[2:]},
		{name: "a public key in place of the seed",
			set:  func(c *config.NATS) { c.NKey = newUser(t).pub },
			want: []string{"NATS_AUTH_NKEY", "holds a public key", "want the user's seed (SU...)"}},
		{name: "the seed of an operator, not a user",
			set:  func(c *config.NATS) { c.NKey = string(operatorSeed) },
			want: []string{"NATS_AUTH_NKEY", "non-user key", `starts with "O"`, "want a user seed"}, secret: string(operatorSeed)},
		{name: "an NKey file that does not exist",
			set:  func(c *config.NATS) { c.NKey = "/no/such/seed.nk" },
			want: []string{"NATS_AUTH_NKEY", "neither an NKey seed nor a readable file", "/no/such/seed.nk"}},
		{name: "an NKey file without a seed",
			set:  func(c *config.NATS) { c.NKey = noSeed },
			want: []string{noSeed, "holds no valid NKey seed"}},
		{name: "a credentials file that does not exist",
			set:  func(c *config.NATS) { c.CredentialsFile = "/no/such.creds" },
			want: []string{"NATS_AUTH_CREDENTIALS_FILE", "/no/such.creds"}},
		{name: "a credentials file without a JWT",
			set:  func(c *config.NATS) { c.CredentialsFile = junkCreds },
			want: []string{junkCreds, "no valid user JWT"}},
		{name: "a CA file that does not exist",
			set:  func(c *config.NATS) { c.TLSCAFile = "/no/ca.pem" },
			want: []string{"nats.tls_ca_file", "/no/ca.pem"}},
		{name: "a CA file that is not PEM",
			set:  func(c *config.NATS) { c.TLSCAFile = notPEM },
			want: []string{notPEM, "holds no PEM certificate"}},
		{name: "a client certificate without its key",
			set:  func(c *config.NATS) { c.TLSCertFile = "/c.pem" },
			want: []string{"nats.tls_cert_file", "nats.tls_key_file"}},
		{name: "a URL with an unknown scheme",
			set:  func(c *config.NATS) { c.URL = "http://127.0.0.1:4222" },
			want: []string{"NATS_SERVER", `scheme "http"`}},
		{name: "a URL list without a URL",
			set:  func(c *config.NATS) { c.URL = " , " },
			want: []string{"NATS_SERVER", "no server URL"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := natsCfg(url)
			tt.set(&cfg)
			nc, err := natsconn.Connect(t.Context(), cfg)
			if err == nil {
				nc.Close()
				t.Fatal("Connect succeeded")
			}
			t.Log(err)
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("errors.Is(err, %v) = false", tt.is)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if tt.secret != "" && strings.Contains(err.Error(), tt.secret) {
				t.Errorf("error %q leaks the secret", err)
			}
		})
	}
}

func TestConnectOverTLS(t *testing.T) {
	p, other := testutil.NewPKI(t, "loom"), testutil.NewPKI(t, "other")
	tlsURL := startNATS(t, embedded.NATSOptions{TLS: serverTLS(p, false)}).ClientURL()
	mtlsURL := startNATS(t, embedded.NATSOptions{TLS: serverTLS(p, true)}).ClientURL()
	if !strings.HasPrefix(tlsURL, "tls://") {
		t.Fatalf("ClientURL %s of a TLS server is not tls://", tlsURL)
	}

	tests := []struct {
		name string
		url  string
		set  func(*config.NATS)
		want []string
	}{
		{name: "the server is verified with the CA file", url: tlsURL,
			set: func(c *config.NATS) { c.TLSCAFile = p.CAFile }},
		{name: "a nats:// URL with a CA file uses TLS too", url: strings.Replace(tlsURL, "tls://", "nats://", 1),
			set: func(c *config.NATS) { c.TLSCAFile = p.CAFile }},
		{name: "a server signed by another CA is rejected", url: tlsURL,
			set:  func(c *config.NATS) { c.TLSCAFile = other.CAFile },
			want: []string{"TLS with " + tlsURL + " failed", "certificate", other.CAFile}},
		{name: "mutual TLS with a client certificate", url: mtlsURL,
			set: func(c *config.NATS) {
				c.TLSCAFile, c.TLSCertFile, c.TLSKeyFile = p.CAFile, p.ClientCertFile, p.ClientKeyFile
			}},
		{name: "mutual TLS without a client certificate is rejected", url: mtlsURL,
			set:  func(c *config.NATS) { c.TLSCAFile = p.CAFile },
			want: []string{"TLS with " + mtlsURL + " failed", "nats.tls_cert_file"}},
		{name: "mutual TLS with another CA's client certificate is rejected", url: mtlsURL,
			set: func(c *config.NATS) {
				c.TLSCAFile, c.TLSCertFile, c.TLSKeyFile = p.CAFile, other.ClientCertFile, other.ClientKeyFile
			},
			want: []string{"TLS with " + mtlsURL + " failed", other.ClientCertFile}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := natsCfg(tt.url)
			tt.set(&cfg)
			begin := time.Now()
			nc, err := natsconn.Connect(t.Context(), cfg)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Connect: %v", err)
				}
				defer nc.Close()
				if !nc.TLSRequired() {
					t.Error("connection is not TLS")
				}
				roundTrip(t, nc)
				return
			}
			if err == nil {
				nc.Close()
				t.Fatal("Connect succeeded")
			}
			t.Log(err)
			if d := time.Since(begin); d > fast {
				t.Errorf("failure took %s; want under %s", d, fast)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestConnectSkipsADeadFirstURL(t *testing.T) {
	live := startNATS(t, embedded.NATSOptions{}).ClientURL()
	cfg := natsCfg(deadURL(t) + " , " + live)
	nc, err := natsconn.Connect(t.Context(), cfg, natsconn.WithNATSOptions(nats.DontRandomize()))
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	defer nc.Close()
	if nc.ConnectedUrl() != live {
		t.Errorf("connected to %s, want %s", nc.ConnectedUrl(), live)
	}
	roundTrip(t, nc)
}

func TestConnectReportsARefusalHiddenBehindADeadLastURL(t *testing.T) {
	live := startNATS(t, embedded.NATSOptions{Token: "t0ken"}).ClientURL()
	cfg := natsCfg(live + "," + deadURL(t))
	cfg.Token = "wrong"
	begin := time.Now()
	_, err := natsconn.Connect(t.Context(), cfg, natsconn.WithNATSOptions(nats.DontRandomize()))
	if err == nil {
		t.Fatal("Connect succeeded")
	}
	t.Log(err)
	if !errors.Is(err, nats.ErrAuthorization) || !strings.Contains(err.Error(), live+" refused token auth") {
		t.Errorf("error %q does not report %s refusing the token", err, live)
	}
	if d := time.Since(begin); d > fast {
		t.Errorf("failure took %s; want under %s", d, fast)
	}
}

func TestConnectToNoServerNamesTheURLs(t *testing.T) {
	a, b := deadURL(t), deadURL(t)
	begin := time.Now()
	_, err := natsconn.Connect(t.Context(), natsCfg(a+","+b))
	if err == nil {
		t.Fatal("Connect succeeded")
	}
	t.Log(err)
	if d := time.Since(begin); d > fast {
		t.Errorf("failure took %s; want under %s", d, fast)
	}
	for _, w := range []string{a, b, "NATS_SERVER", "connection refused"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q lacks %q", err, w)
		}
	}
	if !errors.Is(err, nats.ErrNoServers) || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("error %q wraps neither nats.ErrNoServers nor ECONNREFUSED", err)
	}
}

// TestTheErrorNamesWhereTheURLCameFrom: an unreachable server, a silent
// one or a refused token in the URL said "check NATS_SERVER" whatever set
// the URL: an operator whose nats.url is in a file looked for a variable
// set nowhere. The error now names the source Connect is given, and both
// nats.url and NATS_SERVER when it is given none.
func TestTheErrorNamesWhereTheURLCameFrom(t *testing.T) {
	dead, silent := deadURL(t), silentURL(t)
	tokenURL := strings.Replace(startNATS(t, embedded.NATSOptions{Token: "t0ken"}).ClientURL(), "nats://", "nats://wr0ng@", 1)
	for _, tt := range []struct {
		source string
		want   string
		not    []string
	}{
		{"", "nats.url or NATS_SERVER", nil},
		{"env NATS_SERVER", "NATS_SERVER", []string{"nats.url"}},
		{"/opt/loom/etc/nats.toml", "nats.url in /opt/loom/etc/nats.toml", []string{"NATS_SERVER"}},
		{"code", "nats.url, set by the program", []string{"NATS_SERVER"}},
		{"env NATS_SERVER_URL", "NATS_SERVER_URL", []string{"nats.url"}},
		{"--url", "--url", []string{"NATS_SERVER", "nats.url"}},
	} {
		t.Run("from "+cmp.Or(tt.source, "an unknown source"), func(t *testing.T) {
			for _, c := range []struct {
				url, check string
				timeout    time.Duration
			}{
				{dead, "(check " + tt.want + ", and that the server is up)", connectTimeout},
				{silent, "(check " + tt.want + ", and that the server is up)", 200 * time.Millisecond},
				{tokenURL, "(check the token in " + tt.want + ")", connectTimeout},
			} {
				cfg := natsCfg(c.url)
				cfg.ConnectTimeout = c.timeout
				_, err := natsconn.Connect(t.Context(), cfg, natsconn.WithURLSource(tt.source), natsconn.WithLogger(slog.New(slog.DiscardHandler)))
				if err == nil {
					t.Fatalf("Connect to %s succeeded", c.url)
				}
				if !strings.Contains(err.Error(), c.check) {
					t.Errorf("error %q lacks %q", err, c.check)
				}
				for _, n := range tt.not {
					if strings.Contains(err.Error(), n) {
						t.Errorf("error %q names %s, which did not set the URL", err, n)
					}
				}
			}
		})
	}
}

func TestConnectGivesUpAfterConnectTimeout(t *testing.T) {
	url := silentURL(t)
	cfg := natsCfg(url)
	cfg.ConnectTimeout = 300 * time.Millisecond
	begin := time.Now()
	_, err := natsconn.Connect(t.Context(), cfg)
	elapsed := time.Since(begin)
	if err == nil {
		t.Fatal("Connect succeeded")
	}
	t.Log(err)
	if elapsed > cfg.ConnectTimeout+500*time.Millisecond {
		t.Errorf("gave up after %s; ConnectTimeout is %s", elapsed, cfg.ConnectTimeout)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %q is not DeadlineExceeded", err)
	}
	for _, w := range []string{url, "NATS_SERVER", "no answer"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q lacks %q", err, w)
		}
	}
}

func TestConnectHonoursContextCancellation(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(100*time.Millisecond, cancel)
	cfg := natsCfg(silentURL(t))
	cfg.ConnectTimeout = time.Minute
	begin := time.Now()
	_, err := natsconn.Connect(ctx, cfg)
	if err == nil {
		t.Fatal("Connect succeeded")
	}
	t.Log(err)
	if d := time.Since(begin); d > fast {
		t.Errorf("returned %s after the cancel", d)
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error %q is not context.Canceled", err)
	}
}

func TestConnectInProcess(t *testing.T) {
	ns := startNATS(t, embedded.NATSOptions{
		Users:     map[string]string{"bob": "s3cret"},
		Configure: func(o *server.Options) { o.DontListen = true },
	})
	t.Run("works without a socket", func(t *testing.T) {
		cfg := natsCfg("")
		cfg.User, cfg.Password = "bob", "s3cret"
		nc, err := natsconn.Connect(t.Context(), cfg, natsconn.WithInProcessServer(ns))
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		roundTrip(t, nc)
	})
	t.Run("reports a refused credential", func(t *testing.T) {
		cfg := natsCfg("")
		cfg.User, cfg.Password = "bob", "wrong"
		_, err := natsconn.Connect(t.Context(), cfg, natsconn.WithInProcessServer(ns))
		if !errors.Is(err, nats.ErrAuthorization) || !strings.Contains(err.Error(), `the in-process server refused user "bob"`) {
			t.Errorf("err = %v; want the in-process server refusing bob", err)
		}
	})
}

func TestConnectLogsDisconnectAndReconnect(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	ns := startNATS(t, embedded.NATSOptions{Port: port})

	var buf testutil.SyncBuffer
	cfg := natsCfg(ns.ClientURL())
	cfg.ReconnectWait = 20 * time.Millisecond
	cfg.Name = "logtest"
	nc, err := natsconn.Connect(t.Context(), cfg, natsconn.WithLogger(slog.New(slog.NewTextHandler(&buf, nil))))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	ns.Shutdown()
	startNATS(t, embedded.NATSOptions{Port: port})
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(buf.String(), "NATS reconnected") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	roundTrip(t, nc)
	log := buf.String()
	for _, w := range []string{"NATS disconnected", "NATS reconnected", "conn=logtest", "url=nats://127.0.0.1:" + strconv.Itoa(port)} {
		if !strings.Contains(log, w) {
			t.Errorf("log lacks %q:\n%s", w, log)
		}
	}
}

func ExampleConnect() {
	ns, err := embedded.StartNATS(embedded.NATSOptions{Users: map[string]string{"bob": "s3cret"}})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer ns.Shutdown()

	cfg := config.NATS{URL: ns.ClientURL(), User: "bob", Password: "s3cret", ConnectTimeout: 5 * time.Second}
	nc, err := natsconn.Connect(context.Background(), cfg)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer nc.Close()
	fmt.Println("connected as", cfg.User)

	cfg.Password = "wrong"
	_, err = natsconn.Connect(context.Background(), cfg)
	fmt.Println(errors.Is(err, nats.ErrAuthorization))
	// Output:
	// connected as bob
	// true
}

// logLines returns the lines of log that hold every one of parts.
func logLines(log string, parts ...string) int {
	n := 0
	for line := range strings.Lines(log) {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			n++
		}
	}
	return n
}

// TestAServerThatStaysDownIsNotLoggedAtEveryAttempt: each failed reconnect
// attempt was a warning, and a connection retries every ReconnectWait
// (1 s), forever by default: an hour's outage wrote thousands of the same
// warning per process, per server in the cluster, drowning what else went
// wrong. Now the first failure warns, then one warning per interval says
// the connection is still down, with the time and the last error, and the
// reconnect says how long it was down.
func TestAServerThatStaysDownIsNotLoggedAtEveryAttempt(t *testing.T) {
	for _, tt := range []struct {
		name  string
		every time.Duration // 0: the default, a minute
	}{
		{"the first failed attempt warns, the others are debug", 0},
		{"a warning repeats once an interval while the server stays down", 50 * time.Millisecond},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.every > 0 {
				defer natsconn.SetReconnectLogEvery(tt.every)()
			}
			port := testutil.FreePort(t)
			ns := startNATS(t, embedded.NATSOptions{Port: port})
			var buf testutil.SyncBuffer
			cfg := natsCfg(ns.ClientURL())
			cfg.ReconnectWait = 5 * time.Millisecond
			logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
			nc, err := natsconn.Connect(t.Context(), cfg, natsconn.WithLogger(logger))
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()

			ns.Shutdown()
			attempts := func() int {
				log := buf.String()
				return logLines(log, "NATS reconnect attempt failed") + logLines(log, "NATS still disconnected")
			}
			if tt.every == 0 {
				testutil.Eventually(t, 10*time.Second, "10 failed reconnect attempts", func() bool { return attempts() >= 10 })
				log := buf.String()
				if n := logLines(log, "level=WARN", "NATS reconnect attempt failed") + logLines(log, "level=WARN", "NATS still disconnected"); n != 1 {
					t.Errorf("%d failed attempts logged %d warnings; want 1:\n%s", attempts(), n, log)
				}
			} else {
				testutil.Eventually(t, 10*time.Second, "a second warning while the server stays down", func() bool {
					return logLines(buf.String(), "level=WARN", "NATS still disconnected", "failed_dials=", "connection refused") >= 1
				})
			}

			startNATS(t, embedded.NATSOptions{Port: port})
			testutil.Eventually(t, 10*time.Second, "the reconnect logged", func() bool {
				return logLines(buf.String(), "NATS reconnected", "down=") == 1
			})
			roundTrip(t, nc)
		})
	}
}

// TestRenewedTLSFilesAreReadAtTheNextReconnect: the TLS files were read
// once, at Connect. A client certificate renewed on disk, or a CA the
// server moved to, was never used by a running process, and once the
// server refused what the process held, every reconnect failed until a
// restart. The files are now read again at each reconnect.
func TestRenewedTLSFilesAreReadAtTheNextReconnect(t *testing.T) {
	p, renewed := testutil.NewPKI(t, "loom"), testutil.NewPKI(t, "renewed")
	copyTo := func(dst, src string) {
		t.Helper()
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []struct {
		name string
		// after is the server that comes back, renew what the client's
		// files then hold.
		after func() *tls.Config
		renew func(ca, cert, key string)
	}{
		{name: "a renewed client certificate",
			after: func() *tls.Config {
				c := serverTLS(p, true)
				c.ClientCAs = renewed.Pool // the old client certificate is refused
				return c
			},
			renew: func(_, cert, key string) { copyTo(cert, renewed.ClientCertFile); copyTo(key, renewed.ClientKeyFile) }},
		{name: "a renewed CA",
			after: func() *tls.Config { return serverTLS(renewed, false) },
			renew: func(ca, _, _ string) { copyTo(ca, renewed.CAFile) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			ca, cert, key := dir+"/ca.pem", dir+"/client.pem", dir+"/client-key.pem"
			copyTo(ca, p.CAFile)
			copyTo(cert, p.ClientCertFile)
			copyTo(key, p.ClientKeyFile)
			port := testutil.FreePort(t)
			ns := startNATS(t, embedded.NATSOptions{Port: port, TLS: serverTLS(p, true)})
			cfg := natsCfg(ns.ClientURL())
			cfg.ReconnectWait = 20 * time.Millisecond
			cfg.TLSCAFile, cfg.TLSCertFile, cfg.TLSKeyFile = ca, cert, key
			var buf testutil.SyncBuffer
			nc, err := natsconn.Connect(t.Context(), cfg, natsconn.WithLogger(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))))
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			defer func() {
				if t.Failed() {
					t.Log(buf.String())
				}
			}()
			roundTrip(t, nc)

			ns.Shutdown()
			tt.renew(ca, cert, key)
			startNATS(t, embedded.NATSOptions{Port: port, TLS: tt.after()})
			testutil.Eventually(t, 10*time.Second, "a reconnect with the renewed files", func() bool {
				return nc.Stats().Reconnects == 1 && nc.IsConnected()
			})
			roundTrip(t, nc)
		})
	}
}

// TestATLSFileBeingRewrittenFailsOnlyThatReconnectAttempt: a client
// certificate file caught half written fails that reconnect attempt, and
// the next attempt reads it again.
func TestATLSFileBeingRewrittenFailsOnlyThatReconnectAttempt(t *testing.T) {
	p := testutil.NewPKI(t, "loom")
	cert := t.TempDir() + "/client.pem"
	good, err := os.ReadFile(p.ClientCertFile)
	if err != nil {
		t.Fatal(err)
	}
	writeCert := func(data []byte) {
		t.Helper()
		if err := os.WriteFile(cert, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeCert(good)
	port := testutil.FreePort(t)
	ns := startNATS(t, embedded.NATSOptions{Port: port, TLS: serverTLS(p, true)})
	cfg := natsCfg(ns.ClientURL())
	cfg.ReconnectWait = 20 * time.Millisecond
	cfg.TLSCAFile, cfg.TLSCertFile, cfg.TLSKeyFile = p.CAFile, cert, p.ClientKeyFile
	nc, err := natsconn.Connect(t.Context(), cfg, natsconn.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	ns.Shutdown()
	writeCert(good[:len(good)/2])
	back := startNATS(t, embedded.NATSOptions{Port: port, TLS: serverTLS(p, true)})
	testutil.Eventually(t, 10*time.Second, "a reconnect attempt with the half-written file", func() bool {
		v, err := back.Server().Varz(nil)
		return err == nil && v.TotalConnections >= 1
	})
	if nc.IsConnected() {
		t.Fatal("reconnected with a half-written certificate file")
	}
	writeCert(good)
	// The client saw the disconnect (it tried the new server): connected
	// now is connected to it.
	testutil.Eventually(t, 10*time.Second, "a reconnect once the file is whole", nc.IsConnected)
	roundTrip(t, nc)
}

// TestAServerRefusingTheHandshakeOnReconnectIsLogged: nats.go reports a
// failed dial on reconnect, but nothing when a server it reached refuses
// the TLS handshake. A connection whose server came back with a
// certificate the client does not trust logged its disconnect and then
// nothing, forever, while every attempt failed. The connection now says
// it is still down once an interval, with the handshake's error.
func TestAServerRefusingTheHandshakeOnReconnectIsLogged(t *testing.T) {
	defer natsconn.SetReconnectLogEvery(50 * time.Millisecond)()
	p, untrusted := testutil.NewPKI(t, "loom"), testutil.NewPKI(t, "untrusted")
	port := testutil.FreePort(t)
	ns := startNATS(t, embedded.NATSOptions{Port: port, TLS: serverTLS(p, false)})
	cfg := natsCfg(ns.ClientURL())
	cfg.ReconnectWait = 20 * time.Millisecond
	cfg.TLSCAFile = p.CAFile
	var buf testutil.SyncBuffer
	nc, err := natsconn.Connect(t.Context(), cfg, natsconn.WithLogger(slog.New(slog.NewTextHandler(&buf, nil))))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	ns.Shutdown()
	startNATS(t, embedded.NATSOptions{Port: port, TLS: serverTLS(untrusted, false)})
	testutil.Eventually(t, 10*time.Second, "a warning naming the refused handshake", func() bool {
		return logLines(buf.String(), "level=WARN", "NATS still disconnected", "certificate signed by unknown authority") >= 1
	})
	if nc.IsConnected() {
		t.Fatal("connected to a server whose certificate the CA file does not vouch for")
	}
}

// TestARotatedCredentialsFileIsReadAtTheNextReconnect checks what Connect's
// doc says of the credentials file: it is read again at every reconnect,
// so credentials rotated on disk are used without a restart. The server
// comes back trusting another operator, which only the new file's user
// belongs to.
func TestARotatedCredentialsFileIsReadAtTheNextReconnect(t *testing.T) {
	before, after := newOperator(t), newOperator(t)
	file := filepath.Join(t.TempDir(), "app.creds")
	rotate := func(from string) {
		t.Helper()
		data, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	rotate(creds(t, before.known, "alice"))
	port := testutil.FreePort(t)
	ns := startNATS(t, embedded.NATSOptions{Port: port, Operator: before.server})
	cfg := natsCfg(ns.ClientURL())
	cfg.ReconnectWait = 20 * time.Millisecond
	cfg.CredentialsFile = file
	nc, err := natsconn.Connect(t.Context(), cfg, natsconn.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	roundTrip(t, nc)

	ns.Shutdown()
	rotate(creds(t, after.known, "alice-renewed"))
	startNATS(t, embedded.NATSOptions{Port: port, Operator: after.server})
	testutil.Eventually(t, 10*time.Second, "a reconnect with the rotated credentials", func() bool {
		return nc.Stats().Reconnects == 1 && nc.IsConnected()
	})
	roundTrip(t, nc)
}

// TestReplacedHandlersDoNotLeaveTheConnectionSaidToBeDown: with the
// reconnect and close handlers replaced through WithNATSOptions, as its doc
// allows, nothing told the warning that the connection was up again or
// closed, and it went on saying the connection was down, once an interval,
// for the life of the process. A second connection, whose server stays
// down, is the clock: three of its warnings are three intervals.
func TestReplacedHandlersDoNotLeaveTheConnectionSaidToBeDown(t *testing.T) {
	const every = 30 * time.Millisecond
	defer natsconn.SetReconnectLogEvery(every)()
	connect := func(url string, buf *testutil.SyncBuffer, opts ...nats.Option) *nats.Conn {
		t.Helper()
		cfg := natsCfg(url)
		cfg.ReconnectWait = 10 * time.Millisecond
		nc, err := natsconn.Connect(t.Context(), cfg, natsconn.WithLogger(slog.New(slog.NewTextHandler(buf, nil))),
			natsconn.WithNATSOptions(opts...))
		if err != nil {
			t.Fatal(err)
		}
		return nc
	}
	warnings := func(buf *testutil.SyncBuffer) int { return logLines(buf.String(), "NATS still disconnected") }

	port := testutil.FreePort(t)
	ns := startNATS(t, embedded.NATSOptions{Port: port})
	var buf, closedBuf testutil.SyncBuffer
	nc := connect(ns.ClientURL(), &buf, nats.ReconnectHandler(func(*nats.Conn) {}))
	defer nc.Close()
	closed := connect(ns.ClientURL(), &closedBuf, nats.ClosedHandler(func(*nats.Conn) {}))
	ns.Shutdown()
	testutil.Eventually(t, 10*time.Second, "the server's absence noticed", func() bool {
		return warnings(&buf) >= 1 && warnings(&closedBuf) >= 1
	})
	closed.Close()
	startNATS(t, embedded.NATSOptions{Port: port})
	testutil.Eventually(t, 10*time.Second, "the reconnect", nc.IsConnected)
	roundTrip(t, nc)
	up, shut := warnings(&buf), warnings(&closedBuf)

	var clockBuf testutil.SyncBuffer
	clockNS := startNATS(t, embedded.NATSOptions{})
	clock := connect(clockNS.ClientURL(), &clockBuf)
	defer clock.Close()
	clockNS.Shutdown()
	testutil.Eventually(t, 10*time.Second, "three intervals", func() bool { return warnings(&clockBuf) >= 3 })
	if n := warnings(&buf) - up; n > 1 {
		t.Errorf("%d warnings that a reconnected connection is down:\n%s", n, buf.String())
	}
	if n := warnings(&closedBuf) - shut; n > 1 {
		t.Errorf("%d warnings that a closed connection is down:\n%s", n, closedBuf.String())
	}
}
