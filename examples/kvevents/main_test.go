package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/codec"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/discovery/memory"
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/events"
	"github.com/loomrt/loom/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestRouterKeepsEachWorkersViewAndDropsAWorkerThatDies runs the seeds'
// scenario on each transport: the router's view of every worker must be
// exactly the blocks the worker holds and its last load, and a worker
// whose process goes away must leave the view.
func TestRouterKeepsEachWorkersViewAndDropsAWorkerThatDies(t *testing.T) {
	for _, tr := range []string{"nats", "zmq", "jetstream"} {
		t.Run("over "+tr, func(t *testing.T) {
			ns, err := embedded.StartNATS(embedded.NATSOptions{JetStream: tr == "jetstream"})
			if err != nil {
				t.Fatal(err)
			}
			defer ns.Shutdown()
			cfg := config.Default()
			cfg.NATS.URL = ns.ClientURL()
			cfg.Events.Transport = tr
			cfg.Events.JetStream.Storage = "memory"
			store := memory.NewStore()
			quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
			ctx := t.Context()
			newRT := func() (*loom.Runtime, func()) {
				d := store.Connect()
				rt, err := loom.NewRuntime(ctx, loom.WithConfig(cfg), loom.WithDiscovery(d), loom.WithLogger(quiet))
				if err != nil {
					t.Fatal(err)
				}
				return rt, func() { _ = rt.Shutdown(context.Background()); _ = d.Close() }
			}
			routerRT, stopRouter := newRT()
			defer stopRouter()
			agg := NewAggregator()
			actx, cancel := context.WithCancel(ctx)
			aggErr := make(chan error, 1)
			go func() { aggErr <- agg.Run(actx, routerRT) }()
			defer func() {
				cancel()
				if err := <-aggErr; err != nil {
					t.Error(err)
				}
			}()
			waitReady(t, agg, aggErr)

			var ws []runningWorker
			var kills []func()
			for range 3 {
				rt, stop := newRT()
				defer stop()
				w, err := startWorker(ctx, rt)
				if err != nil {
					t.Fatal(err)
				}
				if err := waitSubscribers(ctx, w); err != nil {
					t.Fatal(err)
				}
				ws = append(ws, runningWorker{rt: rt, w: w, done: make(chan error, 1)})
				kills = append(kills, stop)
			}
			for _, r := range ws {
				go func() { r.done <- r.w.run(ctx, 30, time.Millisecond) }()
			}
			for _, r := range ws {
				if err := <-r.done; err != nil {
					t.Fatal(err)
				}
			}
			if err := agg.caughtUp(ctx, ws); err != nil {
				t.Fatal(err)
			}
			views := agg.Workers()
			if len(views) != 3 {
				t.Fatalf("the router sees %d workers, want 3", len(views))
			}
			for _, r := range ws {
				var v WorkerView
				for _, x := range views {
					if x.InstanceID == r.rt.ID() {
						v = x
					}
				}
				want := map[uint64]struct{}{}
				for _, h := range r.w.blocks {
					want[h] = struct{}{}
				}
				if !maps.Equal(v.Blocks, want) || v.Stale {
					t.Fatalf("worker %x: the router holds %d blocks (stale %v), the worker %d", r.rt.ID(), len(v.Blocks), v.Stale, len(want))
				}
				if v.Load.ActiveBlocks != len(r.w.blocks) || v.Load.TotalBlocks != totalBlocks {
					t.Fatalf("worker %x: load %+v", r.rt.ID(), v.Load)
				}
			}
			// The middle worker's process goes away: its runtime and its
			// discovery client close, as if it had died.
			kills[1]()
			deadline := time.Now().Add(10 * time.Second)
			for len(agg.Workers()) != 2 {
				if time.Now().After(deadline) {
					t.Fatalf("the router still sees %d workers after one died", len(agg.Workers()))
				}
				time.Sleep(5 * time.Millisecond)
			}
			for _, v := range agg.Workers() {
				if v.InstanceID == ws[1].rt.ID() {
					t.Fatal("the router kept the dead worker")
				}
			}
		})
	}
}

// TestOneProcessScenarioRunsAsTheREADMESays is `go run ./examples/kvevents`
// without the compile: embedded nats-server, three workers, one stops.
func TestOneProcessScenarioRunsAsTheREADMESays(t *testing.T) {
	t.Setenv("NATS_SERVER", "")
	t.Setenv("LOOM_NATS_URL", "")
	var out bytes.Buffer
	if err := runAll(t.Context(), &out, scenario{workers: 3, rounds: 20, tick: time.Millisecond}); err != nil {
		t.Fatalf("%v\n%s", err, &out)
	}
	s := out.String()
	rows := regexp.MustCompile(`(?m)^[0-9a-f]+ +\d+ +\d+ +\d+/8 +\d+% +false$`).FindAllString(s, -1)
	if !strings.Contains(s, "the router's view of 3 workers:") || !strings.Contains(s, "stopped; the router's view:") || len(rows) != 5 {
		t.Fatalf("printed (%d worker rows, want 3 then 2):\n%s", len(rows), s)
	}
}

// TestAGapInAWorkersEventsMarksThatWorkerStale publishes a worker's
// kv_events with a sequence that skips, as a lossy link would deliver
// them: the router's gap hook must mark that worker, and only it, stale.
func TestAGapInAWorkersEventsMarksThatWorkerStale(t *testing.T) {
	ns, err := embedded.StartNATS(embedded.NATSOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	cfg := config.Default()
	cfg.NATS.URL = ns.ClientURL()
	d := memory.NewStore().Connect()
	defer d.Close()
	rt, err := loom.NewRuntime(t.Context(), loom.WithConfig(cfg), loom.WithDiscovery(d),
		loom.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Shutdown(context.Background())
	agg := NewAggregator()
	actx, cancel := context.WithCancel(t.Context())
	aggErr := make(chan error, 1)
	go func() { aggErr <- agg.Run(actx, rt) }()
	defer func() {
		cancel()
		if err := <-aggErr; err != nil {
			t.Error(err)
		}
	}()
	waitReady(t, agg, aggErr)

	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	subject, _ := events.Subject(workerScope, "kv_events")
	publish := func(pub, inst, seq uint64) {
		payload, _ := codec.MsgPack.Marshal(nil, KvEvent{EventID: seq, Stored: &KvStored{BlockHashes: []uint64{seq}}})
		e := events.Envelope{PublisherID: pub, InstanceID: inst, Sequence: seq, Topic: "kv_events", Payload: payload}
		if err := nc.Publish(subject, e.AppendMsgPack(nil)); err != nil {
			t.Fatal(err)
		}
	}
	for _, seq := range []uint64{0, 1, 2} {
		publish(1, 0xa, seq)
	}
	for _, seq := range []uint64{0, 1, 3} { // 2 never arrives
		publish(2, 0xb, seq)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		stale := map[uint64]bool{}
		n := uint64(0)
		for _, v := range agg.Workers() {
			stale[v.InstanceID] = v.Stale
			n += v.Events
		}
		if n == 6 {
			if !stale[0xb] || stale[0xa] {
				t.Fatalf("stale after a gap in b's events: %v, want b only", stale)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the router applied %d of 6 events", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestWorkerAndRouterAcrossProcesses runs the two modes the package
// documents for use with loom up's environment, as processes on one
// nats-server with NATS KV discovery: the router's view must list the
// worker once its events arrive, drop it once the worker stops (Ctrl-C),
// and both must exit 0 on Ctrl-C.
func TestWorkerAndRouterAcrossProcesses(t *testing.T) {
	ns, err := embedded.StartNATS(embedded.NATSOptions{JetStream: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	bin := filepath.Join(t.TempDir(), "kvevents")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	env := append(os.Environ(), "NATS_SERVER="+ns.ClientURL(), "LOOM_DISCOVERY=natskv", "LOOM_NATS_URL=", "LOOM_EVENTS_TRANSPORT=", "LOOM_LOG_LEVEL=warn")
	start := func(mode string) (*exec.Cmd, *testutil.SyncBuffer, chan error) {
		cmd := exec.Command(bin, mode)
		cmd.Env = env
		var out testutil.SyncBuffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			<-exited
			if t.Failed() {
				t.Logf("the %s's output:\n%s", mode, out.String())
			}
		})
		return cmd, &out, exited
	}
	stop := func(name string, cmd *exec.Cmd, out *testutil.SyncBuffer, exited chan error) {
		t.Helper()
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case err := <-exited:
			exited <- err // for the cleanup
			if err != nil {
				t.Fatalf("%s after Ctrl-C: %v\n%s", name, err, out.String())
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("%s still running 20s after Ctrl-C\n%s", name, out.String())
		}
	}
	// lastView is the last table the router printed whole: the lines
	// between its last two headers.
	lastView := func(out string) (string, bool) {
		tables := strings.Split(out, "worker ")
		if len(tables) < 3 {
			return "", false
		}
		return tables[len(tables)-2], true
	}

	router, rout, rexit := start("router")
	worker, wout, wexit := start("worker")
	var id string
	testutil.Eventually(t, 20*time.Second, "the worker says it publishes", func() bool {
		m := regexp.MustCompile(`worker ([0-9a-f]+) publishing`).FindStringSubmatch(wout.String())
		if m != nil {
			id = m[1]
		}
		return m != nil
	})
	testutil.Eventually(t, 20*time.Second, "the router's view lists worker "+id, func() bool {
		v, ok := lastView(rout.String())
		return ok && regexp.MustCompile(`(?m)^`+id+`\s+[1-9]`).MatchString(v)
	})
	stop("worker", worker, wout, wexit)
	testutil.Eventually(t, 20*time.Second, "the router's view drops worker "+id, func() bool {
		out := rout.String()
		v, ok := lastView(out[strings.LastIndex(out, id):])
		return ok && !strings.Contains(v, id)
	})
	stop("router", router, rout, rexit)
}

// waitReady waits until agg is ready, or until its Run, which sends its
// result on aggErr, fails first (a subscription or the watch refused):
// Ready is then never closed, and waiting on it alone would hang the test
// until go test's timeout. The error goes back on aggErr for the caller's
// deferred check, which reports it.
func waitReady(t *testing.T, agg *Aggregator, aggErr chan error) {
	t.Helper()
	select {
	case <-agg.Ready():
	case err := <-aggErr:
		aggErr <- err
		t.Fatal("the aggregator stopped before it was ready")
	}
}
