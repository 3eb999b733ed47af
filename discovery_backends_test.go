package loom_test

// The root package links only the memory backend; its tests exercise the
// others through configuration too.
import (
	"context"
	"iter"
	"os"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/discovery"
	_ "github.com/loomrt/loom/discovery/all"
	"github.com/loomrt/loom/embedded/etcdserver"
	"github.com/loomrt/loom/internal/testutil"
)

// TestRuntimesOnAnEtcdWithTLSAndAuthCallEachOther: two runtimes whose
// configuration comes from Dynamo's variables (ETCD_AUTH_*, the CA as PEM
// text) find each other on an etcd that serves TLS only, requires client
// certificates and has authentication on, and one calls the other.
func TestRuntimesOnAnEtcdWithTLSAndAuthCallEachOther(t *testing.T) {
	pki := testutil.NewPKI(t, "etcd")
	srv, err := etcdserver.Start(etcdserver.Options{TickMs: 10, ElectionMs: 50, NoFsync: true, Configure: func(c *embed.Config) {
		for i := range c.ListenClientUrls {
			c.ListenClientUrls[i].Scheme = "https"
			c.AdvertiseClientUrls[i].Scheme = "https"
		}
		c.ClientTLSInfo = transport.TLSInfo{CertFile: pki.ServerCertFile, KeyFile: pki.ServerKeyFile, TrustedCAFile: pki.CAFile, ClientCertAuth: true}
		c.BcryptCost = 4 // bcrypt.MinCost: checking a password at the default cost is slow under the race detector
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	endpoint := "https://" + strings.TrimPrefix(srv.ClientURL(), "http://")

	tlsCfg, err := (&transport.TLSInfo{CertFile: pki.ClientCertFile, KeyFile: pki.ClientKeyFile, TrustedCAFile: pki.CAFile}).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	admin, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, TLS: tlsCfg, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	ctx := t.Context()
	for _, step := range []func() error{
		func() error { _, err := admin.UserAdd(ctx, "root", "rootpw"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := admin.RoleAdd(ctx, "loom"); return err },
		func() error {
			_, err := admin.RoleGrantPermission(ctx, "loom", discovery.KeyPrefix, clientv3.GetPrefixRangeEnd(discovery.KeyPrefix), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := admin.UserAdd(ctx, "loom", "s3cret"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "loom", "loom"); return err },
		func() error { _, err := admin.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatalf("enabling etcd auth: %v", err)
		}
	}
	ca, err := os.ReadFile(pki.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"LOOM_DISCOVERY":               "etcd",
		"LOOM_CLIENT_LOCAL_FAST_PATH":  "false",
		"ETCD_ENDPOINTS":               endpoint,
		"ETCD_AUTH_USERNAME":           "loom",
		"ETCD_AUTH_PASSWORD":           "s3cret",
		"ETCD_AUTH_CA":                 string(ca),
		"ETCD_AUTH_CLIENT_CERT":        pki.ClientCertFile,
		"ETCD_AUTH_CLIENT_KEY":         pki.ClientKeyFile,
		"LOOM_DISCOVERY_DIAL_TIMEOUT":  "10s",
		"LOOM_REQUEST_PLANE_TRANSPORT": "tcp",
		"LOOM_SHUTDOWN_GRACE_PERIOD":   "1s",
		"LOOM_CLIENT_WAIT_TIMEOUT":     "5s",
	}
	runtime := func() *loom.Runtime {
		rt, err := loom.NewRuntime(ctx, loom.WithLogger(quiet), loom.WithLoadOptions(config.WithDirs(), config.WithEnv(func(name string) (string, bool) {
			v, ok := env[name]
			return v, ok
		})))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = rt.Shutdown(ctx)
		})
		return rt
	}
	server, caller := runtime(), runtime()
	serve(t, server, "secure/calc/inc", func(_ context.Context, n int) iter.Seq2[int, error] {
		return func(yield func(int, error) bool) { yield(n+1, nil) }
	})
	c := client[int, int](t, caller, "secure/calc/inc")
	waitInstances(t, c, 1)
	got, err := collect(c.Generate(ctx, 41))
	if err != nil || len(got) != 1 || got[0] != 42 {
		t.Fatalf("call through etcd discovery over TLS and auth = %v, %v; want [42]", got, err)
	}
}
