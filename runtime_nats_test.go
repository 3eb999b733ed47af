package loom_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/discovery/memory"
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/internal/testutil"
)

// TestTheRuntimesNATSErrorNamesTheFileThatSetTheURL: a runtime whose
// nats.url came from a TOML file, and whose server is down, said to check
// NATS_SERVER, a variable set nowhere; it now names the key and the file.
func TestTheRuntimesNATSErrorNamesTheFileThatSetTheURL(t *testing.T) {
	dead := fmt.Sprintf("nats://127.0.0.1:%d", testutil.FreePort(t)) // nothing listens there
	dir := t.TempDir()
	file := filepath.Join(dir, "nats.toml")
	if err := os.WriteFile(file, []byte("[nats]\nurl = \""+dead+"\"\nconnect_timeout = \"2s\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rt, err := loom.NewRuntime(t.Context(), loom.WithLogger(quiet), loom.WithDiscovery(memory.New()),
		loom.WithLoadOptions(config.WithDirs(dir), config.WithEnv(func(string) (string, bool) { return "", false })))
	if err != nil {
		t.Fatal(err)
	}
	defer shutdown(t, rt)
	_, err = rt.NATS(t.Context())
	if err == nil {
		t.Fatal("connected to a dead URL")
	}
	if want := "check nats.url in " + file; !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "NATS_SERVER") {
		t.Errorf("error %q; want it to say %q, and not NATS_SERVER", err, want)
	}
}

// TestTheRuntimeCountsTheOperationsItsNATSServerRefuses: the runtime's
// connection counts refused operations in the runtime's metrics.
func TestTheRuntimeCountsTheOperationsItsNATSServerRefuses(t *testing.T) {
	allowed := &server.SubjectPermission{Allow: []string{"allowed.>", "_INBOX.>"}}
	ns, err := embedded.StartNATS(embedded.NATSOptions{
		Users: map[string]string{"app": "s3cret"},
		Configure: func(o *server.Options) {
			o.Users[0].Permissions = &server.Permissions{Publish: allowed, Subscribe: allowed}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	cfg := config.Default()
	cfg.NATS.URL, cfg.NATS.User, cfg.NATS.Password = ns.ClientURL(), "app", "s3cret"
	rt, err := loom.NewRuntime(t.Context(), loom.WithConfig(cfg), loom.WithLogger(quiet), loom.WithDiscovery(memory.New()))
	if err != nil {
		t.Fatal(err)
	}
	defer shutdown(t, rt)
	nc, err := rt.NATS(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish("denied.x", nil); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the refused publish counted", func() bool {
		return testutil.Metric(t, rt.Metrics().Registry(), "loom_nats_permission_violations_total", "kind", "publish") == 1
	})
}

func shutdown(t *testing.T, rt *loom.Runtime) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := rt.Shutdown(ctx); err != nil {
		t.Error(err)
	}
}
