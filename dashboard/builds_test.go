package dashboard_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/dashboard"
	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/internal/buildinfo"
)

// olderBuild is the /metrics of a process on an older build of Loom.
const olderBuild = `# HELP loom_build_info Always 1; its labels say which build of Loom this process runs.
# TYPE loom_build_info gauge
loom_build_info{go_version="go1.25.4",revision="0123456789abcdef0123456789abcdef01234567",version="v0.3.0"} 1
# TYPE loom_requests_total counter
loom_requests_total{code="ok",component="greeter",endpoint="greet",namespace="hello"} 7
`

// noBuild is the /metrics of a process that does not say its build: a
// Loom from before loom_build_info, or a process that is not Loom.
const noBuild = `# TYPE loom_requests_total counter
loom_requests_total{code="ok",component="greeter",endpoint="greet",namespace="hello"} 3
`

// metricsServer serves text as /metrics and answers /health with 200.
func metricsServer(t *testing.T, text string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/metrics" {
			w.Header().Set("Content-Type", "text/plain; version=0.0.4")
			_, _ = w.Write([]byte(text))
		}
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// register puts a record of hello/greeter/{endpoint} whose process's
// status server is statusAddr, through reg's discovery, and returns it.
func register(t *testing.T, reg *loom.Runtime, endpoint, statusAddr string) discovery.Instance {
	t.Helper()
	inst := discovery.Instance{
		Namespace: "hello", Component: "greeter", Endpoint: endpoint, ID: discovery.RandomID(),
		Transport: "tcp", Address: "127.0.0.1:1", Codec: "msgpack",
		Metadata: map[string]string{loom.MetadataStatusAddr: statusAddr},
	}
	if err := reg.Discovery().Register(context.Background(), inst); err != nil {
		t.Fatal(err)
	}
	return inst
}

func buildOf(st dashboard.State, id uint64) *dashboard.Build {
	if i := instance(st, id); i != nil {
		return i.Build
	}
	return nil
}

// Each instance shows the build its process runs, from the process's
// loom_build_info; the state lists the builds the instances run, so that
// the page can say when there is more than one; a process that does not
// say is "unknown", not an error.
func TestBuildsOfTheInstances(t *testing.T) {
	s := newSystem(t)
	srv := s.dashboard(dashboard.Config{Interval: 100 * time.Millisecond})
	waitState(t, srv, 10*time.Second, "the first snapshot", func(st dashboard.State) bool { return st.Synced })

	b := buildinfo.Read()
	current := dashboard.Build{Version: b.Version, Revision: b.Revision, GoVersion: b.Go}
	a := s.serveHello(nil)
	st := waitState(t, srv, 10*time.Second, "the build of the running runtime", func(st dashboard.State) bool {
		return buildOf(st, a.ID()) != nil
	})
	if got := *buildOf(st, a.ID()); got != current {
		t.Errorf("instance %x: build %+v, its process runs %+v", a.ID(), got, current)
	}
	one := []dashboard.BuildCount{{Version: current.Version, Revision: current.Revision, Instances: 1, Processes: 1}}
	if !slices.Equal(st.Builds, one) {
		t.Errorf("builds %+v, want %+v", st.Builds, one)
	}

	// A process on an older build, serving two endpoints, joins.
	reg := s.runtime()
	oldAddr := metricsServer(t, olderBuild)
	o1 := register(t, reg, "greet", oldAddr)
	o2 := register(t, reg, "wave", oldAddr)
	older := dashboard.Build{Version: "v0.3.0", Revision: "0123456789abcdef0123456789abcdef01234567", GoVersion: "go1.25.4"}
	two := []dashboard.BuildCount{
		{Version: "v0.3.0", Revision: older.Revision, Instances: 2, Processes: 1},
		{Version: current.Version, Revision: current.Revision, Instances: 1, Processes: 1},
	}
	st = waitState(t, srv, 10*time.Second, "two builds", func(st dashboard.State) bool { return slices.Equal(st.Builds, two) })
	for _, id := range []uint64{o1.ID, o2.ID} {
		if got := buildOf(st, id); got == nil || *got != older {
			t.Errorf("instance %x: build %+v, want %+v", id, got, older)
		}
	}
	if got := *buildOf(st, a.ID()); got != current {
		t.Errorf("instance %x: build %+v, want %+v", a.ID(), got, current)
	}
	for _, p := range st.Processes {
		want := current
		if p.Target == oldAddr {
			want = older
		}
		if p.Build == nil || *p.Build != want {
			t.Errorf("process %s: build %+v, want %+v", p.Target, p.Build, want)
		}
	}

	// A process that does not say its build is unknown, with its load.
	noneAddr := metricsServer(t, noBuild)
	n := register(t, reg, "greet", noneAddr)
	// A process that cannot be read has no build, and is not counted.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone := ln.Addr().String()
	ln.Close()
	g := register(t, reg, "greet", gone)
	three := append(slices.Clone(two), dashboard.BuildCount{Version: "unknown", Instances: 1, Processes: 1})
	st = waitState(t, srv, 10*time.Second, "an unknown build beside the two", func(st dashboard.State) bool {
		i := instance(st, g.ID)
		return slices.Equal(st.Builds, three) && i != nil && i.LoadError != ""
	})
	unk := instance(st, n.ID)
	if unk.Build == nil || *unk.Build != (dashboard.Build{Version: dashboard.UnknownBuild}) || unk.LoadError != "" || unk.Load == nil || unk.Load.Requests != 3 {
		t.Errorf("instance of a process without loom_build_info: build %+v, load %+v, load error %q; want build unknown and its load", unk.Build, unk.Load, unk.LoadError)
	}
	if b := buildOf(st, g.ID); b != nil {
		t.Errorf("instance of a process that cannot be read: build %+v, want none", b)
	}

	// The upgrade done: the older process and the others leave; one build.
	for _, inst := range []discovery.Instance{o1, o2, n, g} {
		if err := reg.Discovery().Unregister(context.Background(), inst); err != nil {
			t.Fatal(err)
		}
	}
	waitState(t, srv, 10*time.Second, "one build again", func(st dashboard.State) bool { return slices.Equal(st.Builds, one) })
}
