package etcd

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/embedded/etcdserver"
	"github.com/loomrt/loom/internal/testutil"
)

// serveTLS has opts start an etcd that serves clients over TLS with the
// server certificate of pki; clientCA, if set, is the CA etcd verifies
// client certificates with, which it then requires.
func serveTLS(opts etcdserver.Options, pki *testutil.PKI, clientCA string) etcdserver.Options {
	return also(opts, func(c *embed.Config) {
		for i := range c.ListenClientUrls {
			c.ListenClientUrls[i].Scheme = "https"
		}
		for i := range c.AdvertiseClientUrls {
			c.AdvertiseClientUrls[i].Scheme = "https"
		}
		c.ClientTLSInfo = transport.TLSInfo{CertFile: pki.ServerCertFile, KeyFile: pki.ServerKeyFile}
		if clientCA != "" {
			c.ClientTLSInfo.TrustedCAFile, c.ClientTLSInfo.ClientCertAuth = clientCA, true
		}
	})
}

// also has opts start etcd with configure applied, after what it applied.
func also(opts etcdserver.Options, configure func(*embed.Config)) etcdserver.Options {
	before := opts.Configure
	opts.Configure = func(c *embed.Config) {
		if before != nil {
			before(c)
		}
		configure(c)
	}
	return opts
}

// cheapAuth has opts start etcd hashing passwords at bcrypt's least cost:
// at its default, under the race detector on a busy machine, checking a
// password can take longer than the clients' dial timeout.
func cheapAuth(opts etcdserver.Options) etcdserver.Options {
	return also(opts, func(c *embed.Config) { c.BcryptCost = 4 }) // bcrypt.MinCost
}

// httpsURL is the client URL of an etcd that serves TLS.
func httpsURL(srv *etcdserver.Server) string {
	return "https://" + strings.TrimPrefix(srv.ClientURL(), "http://")
}

// enableAuth creates the users root and loom, loom with a role that may
// read and write instance records, and turns authentication on.
func enableAuth(t *testing.T, cli *clientv3.Client) {
	t.Helper()
	ctx := t.Context()
	for _, step := range []func() error{
		func() error { _, err := cli.UserAdd(ctx, "root", "rootpw"); return err },
		func() error { _, err := cli.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := cli.RoleAdd(ctx, "loom"); return err },
		func() error {
			_, err := cli.RoleGrantPermission(ctx, "loom", discovery.KeyPrefix, clientv3.GetPrefixRangeEnd(discovery.KeyPrefix), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := cli.UserAdd(ctx, "loom", "s3cret"); return err },
		func() error { _, err := cli.UserGrantRole(ctx, "loom", "loom"); return err },
		func() error { _, err := cli.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatalf("enabling etcd auth: %v", err)
		}
	}
}

// rawTLS is a plain etcd client of pki's client certificate.
func rawTLS(t *testing.T, endpoint string, pki *testutil.PKI) *clientv3.Client {
	t.Helper()
	tlsCfg, err := (&transport.TLSInfo{CertFile: pki.ClientCertFile, KeyFile: pki.ClientKeyFile, TrustedCAFile: pki.CAFile}).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, TLS: tlsCfg, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// registerAndList registers an instance of namespace ns on d and lists it.
func registerAndList(t *testing.T, d discovery.Discovery, id uint64, ns string) {
	t.Helper()
	i := inst(ns, id)
	register(t, d, i)
	got, err := d.List(t.Context(), discovery.Query{Namespace: ns})
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if !slices.ContainsFunc(got, func(g discovery.Instance) bool { return g.Key() == i.Key() }) {
		t.Fatalf("List = %v, want %s in it", got, i.Key())
	}
}

func TestTLS(t *testing.T) {
	pki := testutil.NewPKI(t, "etcd")
	t.Run("with the CA it is given, the client verifies etcd", func(t *testing.T) {
		srv := startEtcd(t, serveTLS(fast, pki, ""))
		d := connect(t, httpsURL(srv), 5*time.Second, func(c *Config) { c.TLSCAFile = pki.CAFile })
		registerAndList(t, d, d.ID(), "tls")
	})
	t.Run("with a client certificate, etcd that requires one lets it in", func(t *testing.T) {
		srv := startEtcd(t, serveTLS(fast, pki, pki.CAFile))
		d := connect(t, httpsURL(srv), 5*time.Second, func(c *Config) {
			c.TLSCAFile, c.TLSCertFile, c.TLSKeyFile = pki.CAFile, pki.ClientCertFile, pki.ClientKeyFile
		})
		registerAndList(t, d, d.ID(), "mtls")
	})
	t.Run("a TLS configuration set by Configure is used", func(t *testing.T) {
		srv := startEtcd(t, serveTLS(fast, pki, ""))
		d := connect(t, httpsURL(srv), 5*time.Second, func(c *Config) {
			c.Configure = func(cc *clientv3.Config) { cc.TLS = &tls.Config{RootCAs: pki.Pool, MinVersion: tls.VersionTLS12} }
		})
		registerAndList(t, d, d.ID(), "configure")
	})
	t.Run("PEM text works as files do", func(t *testing.T) {
		srv := startEtcd(t, serveTLS(fast, pki, pki.CAFile))
		d := connect(t, httpsURL(srv), 5*time.Second, func(c *Config) {
			c.TLSCAFile, c.TLSCertFile, c.TLSKeyFile = readFile(t, pki.CAFile), readFile(t, pki.ClientCertFile), readFile(t, pki.ClientKeyFile)
		})
		registerAndList(t, d, d.ID(), "pem")
	})
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestUserPasswordAuth(t *testing.T) {
	srv := startEtcd(t, cheapAuth(fast))
	enableAuth(t, raw(t, srv.ClientURL()))
	d := connect(t, srv.ClientURL(), 5*time.Second, func(c *Config) { c.Username, c.Password = "loom", "s3cret" })
	registerAndList(t, d, d.ID(), "auth")
}

// TestTLSAndAuthTogether: etcd with TLS, client certificates and
// authentication; the user comes from the password, not the certificate.
func TestTLSAndAuthTogether(t *testing.T) {
	pki := testutil.NewPKI(t, "etcd")
	srv := startEtcd(t, cheapAuth(serveTLS(fast, pki, pki.CAFile)))
	enableAuth(t, rawTLS(t, httpsURL(srv), pki))
	d := connect(t, httpsURL(srv), 5*time.Second, func(c *Config) {
		c.TLSCAFile, c.TLSCertFile, c.TLSKeyFile = pki.CAFile, pki.ClientCertFile, pki.ClientKeyFile
		c.Username, c.Password = "loom", "s3cret"
	})
	registerAndList(t, d, d.ID(), "both")
}

// TestAuthAndTLSFailuresSayWhatToCheck: a refused password, an etcd that
// requires authentication, a CA that does not verify etcd and a client
// certificate etcd does not trust each fail New with an error naming the
// keys to check, in DialTimeout.
func TestAuthAndTLSFailuresSayWhatToCheck(t *testing.T) {
	pki, other := testutil.NewPKI(t, "etcd"), testutil.NewPKI(t, "other")
	authSrv := startEtcd(t, cheapAuth(fast))
	enableAuth(t, raw(t, authSrv.ClientURL()))
	tlsSrv := startEtcd(t, serveTLS(fast, pki, ""))
	mtlsSrv := startEtcd(t, serveTLS(fast, pki, pki.CAFile))

	const dial = 2 * time.Second
	for _, tt := range []struct {
		name     string
		endpoint string
		cfg      func(*Config)
		is       error    // errors.Is, if set
		want     string   // in the message
		also     []string // in the message
		tls      bool     // a TLS failure, an *UnreachableError naming the TLS keys
	}{
		{name: "a wrong password names the user and password keys", endpoint: authSrv.ClientURL(),
			cfg: func(c *Config) { c.Username, c.Password = "loom", "wrong" }, is: rpctypes.ErrAuthFailed,
			want: `refused user "loom": etcdserver: authentication failed, invalid user ID or password (check discovery.etcd_username and discovery.etcd_password, or ETCD_AUTH_USERNAME and ETCD_AUTH_PASSWORD)`},
		{name: "no credentials for an etcd that requires them says to set them", endpoint: authSrv.ClientURL(),
			cfg:  func(c *Config) {},
			want: "requires authentication: ",
			also: []string{"etcdserver: user name is empty (set discovery.etcd_username and discovery.etcd_password, or ETCD_AUTH_USERNAME and ETCD_AUTH_PASSWORD"}},
		{name: "a CA that did not sign etcd's certificate names the TLS keys", endpoint: httpsURL(tlsSrv),
			cfg:  func(c *Config) { c.TLSCAFile = other.CAFile },
			want: "the TLS handshake failed (grant lease", also: []string{"x509: certificate signed by unknown authority"}, tls: true},
		{name: "with a user too, a CA that did not sign etcd's certificate names the TLS keys", endpoint: httpsURL(tlsSrv),
			cfg:  func(c *Config) { c.TLSCAFile, c.Username, c.Password = other.CAFile, "loom", "s3cret" },
			want: "the TLS handshake failed (", also: []string{"x509: certificate signed by unknown authority"}, tls: true},
		{name: "no CA, so the system's, names the TLS keys", endpoint: httpsURL(tlsSrv),
			cfg:  func(c *Config) {},
			want: "the TLS handshake failed (grant lease", also: []string{"x509: certificate signed by unknown authority"}, tls: true},
		// With TLS 1.3 the client may see the connection dropped, not the
		// alert (certificate required, unknown CA) etcd sends.
		{name: "a client certificate etcd does not trust names the TLS keys", endpoint: httpsURL(mtlsSrv),
			cfg: func(c *Config) {
				c.TLSCAFile, c.TLSCertFile, c.TLSKeyFile = pki.CAFile, other.ClientCertFile, other.ClientKeyFile
			},
			want: "unreachable after 2s: ", tls: true},
		{name: "with a user too, a client certificate etcd does not trust names the TLS keys", endpoint: httpsURL(mtlsSrv),
			cfg: func(c *Config) {
				c.TLSCAFile, c.TLSCertFile, c.TLSKeyFile = pki.CAFile, other.ClientCertFile, other.ClientKeyFile
				c.Username, c.Password = "loom", "s3cret"
			},
			want: "unreachable after 2s: ", tls: true},
		{name: "no client certificate for etcd that requires one names the TLS keys", endpoint: httpsURL(mtlsSrv),
			cfg:  func(c *Config) { c.TLSCAFile = pki.CAFile },
			want: "unreachable after 2s: ", tls: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{Endpoints: []string{tt.endpoint}, DialTimeout: dial, Logger: quiet}
			tt.cfg(&cfg)
			start := time.Now()
			d, err := New(t.Context(), cfg)
			if err == nil {
				d.Close()
				t.Fatal("New connected")
			}
			if took := time.Since(start); took > dial+time.Second {
				t.Errorf("New took %v, want at most the dial timeout %v and a second", took, dial)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("err = %v, want it to be %v", err, tt.is)
			}
			for _, w := range append([]string{tt.want}, tt.also...) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("err = %q, want it to contain %q", err, w)
				}
			}
			if tt.tls {
				var ue *UnreachableError
				if !errors.As(err, &ue) {
					t.Errorf("err = %v, want an *UnreachableError", err)
				}
				for _, key := range []string{"discovery.etcd_tls_ca_file (ETCD_AUTH_CA)", "discovery.etcd_tls_cert_file and etcd_tls_key_file (ETCD_AUTH_CLIENT_CERT, ETCD_AUTH_CLIENT_KEY)"} {
					if !strings.Contains(err.Error(), key) {
						t.Errorf("err = %q, want it to name %s", err, key)
					}
				}
			}
			if strings.Contains(err.Error(), "wrong") {
				t.Errorf("err = %q shows the password", err)
			}
		})
	}
}

func TestSettingsTheClientWouldIgnoreAreRefused(t *testing.T) {
	pki := testutil.NewPKI(t, "etcd")
	for _, tt := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"a password without a user", Config{Password: "pw"}, "set discovery.etcd_username (ETCD_AUTH_USERNAME) too"},
		{"a user without a password", Config{Username: "loom"}, `etcd user "loom" set without a password; set discovery.etcd_password (ETCD_AUTH_PASSWORD) too`},
		{"TLS with http:// endpoints", Config{TLSCAFile: pki.CAFile}, "etcd TLS files set with http:// endpoints http://127.0.0.1:1; write them https://"},
		{"a certificate without its key", Config{Endpoints: []string{"https://127.0.0.1:1"}, TLSCertFile: pki.ClientCertFile},
			"discovery.etcd_tls_cert_file " + pki.ClientCertFile + " is set without discovery.etcd_tls_key_file"},
		{"a CA file that does not exist", Config{Endpoints: []string{"https://127.0.0.1:1"}, TLSCAFile: "/no/ca.pem"},
			"discovery: etcd TLS: discovery.etcd_tls_ca_file /no/ca.pem: open /no/ca.pem"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.cfg.Endpoints == nil {
				tt.cfg.Endpoints = []string{"http://127.0.0.1:1"}
			}
			tt.cfg.Logger = quiet
			d, err := New(t.Context(), tt.cfg)
			if err == nil {
				d.Close()
				t.Fatal("New accepted it")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %q, want it to contain %q", err, tt.want)
			}
		})
	}
}

// TestRenewedTLSFilesAreUsedOnTheNextConnection: etcd restarts trusting
// only a new CA, and serving a certificate of it; the client's files are
// renewed on disk meanwhile. The client reconnects with them, without a
// restart, and its records are back.
func TestRenewedTLSFilesAreUsedOnTheNextConnection(t *testing.T) {
	for _, tt := range []struct {
		name string
		// renew says which of the client's files are renewed; the server
		// changes only what they follow.
		cert, ca bool
	}{
		{name: "a renewed client certificate", cert: true},
		{name: "a renewed CA", ca: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			old, renewed := testutil.NewPKI(t, "old"), testutil.NewPKI(t, "new")
			dir := t.TempDir()
			caFile, certFile, keyFile := dir+"/ca.pem", dir+"/client.pem", dir+"/client-key.pem"
			install := func(p *testutil.PKI, ca, cert bool) {
				t.Helper()
				var files [][2]string
				if ca {
					files = append(files, [2]string{p.CAFile, caFile})
				}
				if cert {
					files = append(files, [2]string{p.ClientCertFile, certFile}, [2]string{p.ClientKeyFile, keyFile})
				}
				for _, f := range files {
					// Write and rename, as a Secret volume is updated.
					if err := os.WriteFile(f[1]+".tmp", []byte(readFile(t, f[0])), 0o600); err != nil {
						t.Fatal(err)
					}
					if err := os.Rename(f[1]+".tmp", f[1]); err != nil {
						t.Fatal(err)
					}
				}
			}
			install(old, true, true)
			// Client certificates signed by either CA (a bundle), so that
			// only what a subtest renews matters.
			bundle := dir + "/clients-ca.pem"
			if err := os.WriteFile(bundle, []byte(readFile(t, old.CAFile)+readFile(t, renewed.CAFile)), 0o600); err != nil {
				t.Fatal(err)
			}

			opts := fast
			opts.Dir = t.TempDir()
			serverPKI, clientCA := old, bundle
			if tt.cert {
				clientCA = old.CAFile
			}
			srv := startEtcd(t, serveTLS(opts, serverPKI, clientCA))
			opts.ClientPort, opts.PeerPort = portOf(t, srv.ClientURL()), portOf(t, srv.PeerURL())
			endpoint := httpsURL(srv)

			var logs testutil.SyncBuffer
			d := connect(t, endpoint, 10*time.Second, func(c *Config) {
				c.TLSCAFile, c.TLSCertFile, c.TLSKeyFile = caFile, certFile, keyFile
				c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			})
			registerAndList(t, d, d.ID(), "renew")

			srv.Close()
			install(renewed, tt.ca, tt.cert)
			if tt.cert {
				clientCA = renewed.CAFile // the old certificate is refused
			}
			if tt.ca {
				serverPKI = renewed // the old CA does not verify it
			}
			srv2, err := etcdserver.Start(serveTLS(opts, serverPKI, clientCA))
			if err != nil {
				t.Fatalf("restart etcd: %v", err)
			}
			t.Cleanup(srv2.Close)

			ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
			defer cancel()
			i := inst("renew", d.ID()+1)
			if err := d.Register(ctx, i); err != nil {
				t.Fatalf("Register after the renewal: %v\nlog:\n%s", err, logs.String())
			}
			got, err := d.List(ctx, discovery.Query{Namespace: "renew"})
			if err != nil || len(got) != 2 {
				t.Fatalf("List after the renewal = %v, %v; want both records", got, err)
			}
			if !strings.Contains(logs.String(), "discovery: loaded renewed TLS file") {
				t.Errorf("no log line of the renewal:\n%s", logs.String())
			}
		})
	}
}

func portOf(t *testing.T, rawURL string) int {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		t.Fatalf("no port in %s", rawURL)
	}
	return port
}

// TestConfigFromDynamosVariables opens the etcd backend as the loom
// binary does, from configuration loaded from Dynamo's ETCD_* variables
// (the CA as PEM text, the client certificate as files), against etcd
// with TLS, client certificates and authentication, and registers and
// lists an instance through it.
func TestConfigFromDynamosVariables(t *testing.T) {
	pki := testutil.NewPKI(t, "etcd")
	srv := startEtcd(t, cheapAuth(serveTLS(fast, pki, pki.CAFile)))
	enableAuth(t, rawTLS(t, httpsURL(srv), pki))
	env := map[string]string{
		"LOOM_DISCOVERY":        "etcd",
		"ETCD_ENDPOINTS":        httpsURL(srv),
		"ETCD_AUTH_USERNAME":    "loom",
		"ETCD_AUTH_PASSWORD":    "s3cret",
		"ETCD_AUTH_CA":          readFile(t, pki.CAFile),
		"ETCD_AUTH_CLIENT_CERT": pki.ClientCertFile,
		"ETCD_AUTH_CLIENT_KEY":  pki.ClientKeyFile,
	}
	l, err := config.Load(config.WithDirs(), config.WithEnv(func(name string) (string, bool) {
		v, ok := env[name]
		return v, ok
	}))
	if err != nil {
		t.Fatal(err)
	}
	d, err := discovery.OpenBackend(t.Context(), l.Config.Discovery.Backend, discovery.Env{Config: l.Config.Discovery, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	registerAndList(t, d, d.(*Discovery).ID(), "dynamo-env")

	env["ETCD_AUTH_PASSWORD"] = "wrong"
	if l, err = config.Load(config.WithDirs(), config.WithEnv(func(name string) (string, bool) {
		v, ok := env[name]
		return v, ok
	})); err != nil {
		t.Fatal(err)
	}
	if d, err := discovery.OpenBackend(t.Context(), "etcd", discovery.Env{Config: l.Config.Discovery, Logger: quiet}); !errors.Is(err, rpctypes.ErrAuthFailed) {
		if d != nil {
			d.Close()
		}
		t.Fatalf("a wrong ETCD_AUTH_PASSWORD: %v, want ErrAuthFailed", err)
	}
}

// TestTLSFilesThatDoNotLoadKeepTheLastThatDid: a certificate caught half
// written leaves the one loaded before in use, with a warning; once whole,
// it is used.
func TestTLSFilesThatDoNotLoadKeepTheLastThatDid(t *testing.T) {
	old, renewed := testutil.NewPKI(t, "old"), testutil.NewPKI(t, "new")
	dir := t.TempDir()
	certFile, keyFile := dir+"/client.pem", dir+"/client-key.pem"
	write := func(name, data string) {
		t.Helper()
		if err := os.WriteFile(name+".tmp", []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(name+".tmp", name); err != nil {
			t.Fatal(err)
		}
	}
	write(certFile, readFile(t, old.ClientCertFile))
	write(keyFile, readFile(t, old.ClientKeyFile))
	var logs testutil.SyncBuffer
	f, err := newTLSFiles(slog.New(slog.NewTextHandler(&logs, nil)), readFile(t, old.CAFile), certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	first := f.current()
	if f.current() != first {
		t.Fatal("unchanged files were loaded again")
	}
	if got, want := f.files, []string{certFile, keyFile}; !slices.Equal(got, want) {
		t.Errorf("files watched = %v, want %v (PEM text is not a file)", got, want)
	}

	write(certFile, readFile(t, renewed.ClientCertFile)[:100]) // half written
	if f.current() != first {
		t.Error("a certificate that does not load replaced the one that did")
	}
	if !strings.Contains(logs.String(), "does not load; still using the one loaded before") || !strings.Contains(logs.String(), certFile) {
		t.Errorf("no warning naming the file:\n%s", logs.String())
	}

	write(certFile, readFile(t, renewed.ClientCertFile))
	write(keyFile, readFile(t, renewed.ClientKeyFile))
	if f.current() == first {
		t.Error("the renewed certificate was not loaded")
	}
}
