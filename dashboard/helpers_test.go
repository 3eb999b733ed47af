package dashboard_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/dashboard"
	_ "github.com/loomrt/loom/discovery/natskv" // the system's discovery
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// system is a Loom system in this process: an embedded nats-server with
// JetStream and monitoring, NATS KV discovery, and runtimes standing in
// for processes, each with its status server on a free port.
type system struct {
	t    *testing.T
	nats *embedded.NATS
	cfg  config.Config
}

func newSystem(t *testing.T) *system {
	t.Helper()
	ns := testutil.StartNATS(t, embedded.NATSOptions{JetStream: true, StoreDir: t.TempDir(), MonitorPort: -1})
	cfg := config.Default()
	cfg.NATS.URL = ns.ClientURL()
	cfg.Discovery.Backend = "natskv"
	cfg.Status.Port = -1
	cfg.Queue.Storage = "memory"
	return &system{t: t, nats: ns, cfg: cfg}
}

// runtime starts a runtime, shut down when the test ends (or earlier by
// the test).
func (s *system) runtime() *loom.Runtime {
	s.t.Helper()
	rt, err := loom.NewRuntime(context.Background(), loom.WithConfig(s.cfg), loom.WithLogger(quiet))
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { shutdown(rt) })
	return rt
}

func shutdown(rt *loom.Runtime) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = rt.Shutdown(ctx)
}

// dashboard starts a dashboard on its own runtime, served on a free port.
func (s *system) dashboard(cfg dashboard.Config) *dashboard.Server {
	s.t.Helper()
	rt := s.runtime()
	if cfg.NATSMonitorURL == "" {
		cfg.NATSMonitorURL = s.nats.MonitorURL()
	}
	d, err := dashboard.New(context.Background(), rt, cfg)
	if err != nil {
		s.t.Fatal(err)
	}
	srv, err := dashboard.Listen(d, "127.0.0.1:0")
	if err != nil {
		d.Close()
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { srv.Close() })
	return srv
}

// Greeting and Word are the hello example's types.
type Greeting struct {
	Name string `json:"name"`
}

type Word struct {
	Text string `json:"text"`
}

// greeter returns a client of hello/greeter/greet on a new runtime, once
// it knows of instances servers (none: at once), closed when the test
// ends.
func (s *system) greeter(instances int) *loom.Client[Greeting, Word] {
	s.t.Helper()
	ep, err := s.runtime().Endpoint("hello/greeter/greet")
	if err != nil {
		s.t.Fatal(err)
	}
	client, err := loom.NewClient[Greeting, Word](context.Background(), ep)
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { client.Close() })
	if instances > 0 {
		if err := client.WaitForInstances(context.Background(), instances); err != nil {
			s.t.Fatal(err)
		}
	}
	return client
}

// serveHello serves hello/greeter/greet on a new runtime; release, if not
// nil, holds every request until it is closed.
func (s *system) serveHello(release <-chan struct{}) *loom.Runtime {
	s.t.Helper()
	rt := s.runtime()
	ep, err := rt.Endpoint("hello/greeter/greet")
	if err != nil {
		s.t.Fatal(err)
	}
	err = loom.Serve(context.Background(), ep, loom.EngineFunc[Greeting, Word](func(ctx context.Context, g Greeting) iter.Seq2[Word, error] {
		return func(yield func(Word, error) bool) {
			if release != nil {
				select {
				case <-release:
				case <-ctx.Done():
					yield(Word{}, ctx.Err())
					return
				}
			}
			if g.Name == "fail" {
				yield(Word{}, fmt.Errorf("no greeting for %q", g.Name))
				return
			}
			for _, w := range []string{"hello", g.Name} {
				if !yield(Word{Text: w}, nil) {
					return
				}
			}
		}
	}))
	if err != nil {
		s.t.Fatal(err)
	}
	return rt
}

// waitState polls /api/state until cond holds, failing after d.
func waitState(t *testing.T, srv *dashboard.Server, d time.Duration, what string, cond func(st dashboard.State) bool) dashboard.State {
	t.Helper()
	deadline := time.Now().Add(d)
	var st dashboard.State
	for {
		st = getState(t, srv)
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			b, _ := json.MarshalIndent(st, "", "  ")
			t.Fatalf("after %s, still waiting for %s; state:\n%s", d, what, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func getState(t *testing.T, srv *dashboard.Server) dashboard.State {
	t.Helper()
	resp, err := http.Get(srv.URL() + "/api/state")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /api/state: %s", resp.Status)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("GET /api/state: Content-Type %q", ct)
	}
	var st dashboard.State
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("GET /api/state: %v", err)
	}
	return st
}

func instance(st dashboard.State, id uint64) *dashboard.Instance {
	for i := range st.Instances {
		if st.Instances[i].InstanceID == id {
			return &st.Instances[i]
		}
	}
	return nil
}
