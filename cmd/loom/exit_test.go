package main

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/workqueue"
)

// TestACommandStoppedBeforeItsWorkIsDoneExits128PlusTheSignal stops
// commands that have a piece of work to finish (a batch, a benchmark, a
// listing, a call, jobs to add) with a first SIGINT or SIGTERM while they are at
// it: each must stop at once and exit 128 + the signal's number, 130 or
// 143, as a shell reports a program the signal ended, so that a script
// tells an interruption from a failure; and it must not report the
// interruption it was asked for as an error ("context canceled").
func TestACommandStoppedBeforeItsWorkIsDoneExits128PlusTheSignal(t *testing.T) {
	// A queue for loom queue add, on a server that goes away under it:
	// the add then waits for NATS to come back, as it did when Ctrl-C
	// reported "workqueue: enqueue to queue jobs: context canceled".
	qs := natsWithAnEmptyQueue(t, "jobs")
	addArgs := queueAddArgs("jobs", 20000)

	type running struct {
		name  string
		p     *loomProc
		sig   syscall.Signal
		ready func()
	}
	var all []running
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		start := func(name string, env []string, args []string, ready func(p *loomProc)) {
			p := startLoom(t, append([]string{"LOOM_LOG_LEVEL=warn"}, env...), args...)
			all = append(all, running{name + " " + sig.String(), p, sig, func() { ready(p) }})
		}
		start("demo", nil, []string{"demo", "--requests", "100000000"}, func(p *loomProc) {
			p.waitStdout(`embedded nats-server with JetStream`)
		})
		start("llm bench", nil, []string{"llm", "bench", "--workers", "1", "--requests", "100000000", "--progress", "lines"}, func(p *loomProc) {
			p.waitStderr(`^kv: \d+/100000000 done`)
		})
		// Discovery on an etcd that is not there: loom ls waits for it
		// for the dial timeout, logging the dial's failures.
		start("ls", []string{"LOOM_DISCOVERY=etcd", "ETCD_ENDPOINTS=http://127.0.0.1:1", "LOOM_DISCOVERY_DIAL_TIMEOUT=60s"}, []string{"ls"}, func(p *loomProc) {
			p.waitStderr(`127\.0\.0\.1:1`)
		})
		// loom call, connecting to the same etcd: no request went out,
		// so the first signal has nothing to stop gracefully and ends it.
		start("call", []string{"LOOM_DISCOVERY=etcd", "ETCD_ENDPOINTS=http://127.0.0.1:1", "LOOM_DISCOVERY_DIAL_TIMEOUT=60s"}, []string{"call", "ns/c/e", "{}"}, func(p *loomProc) {
			p.waitStderr(`127\.0\.0\.1:1`)
		})
		start("queue add", []string{"NATS_SERVER=" + qs.ClientURL(), "LOOM_NATS_RECONNECT_WAIT=10m"}, addArgs, func(p *loomProc) {
			p.waitStdout(`^added job \d+ to jobs$`)
		})
	}
	for _, r := range all {
		if !strings.HasPrefix(r.name, "queue add") {
			r.ready()
		}
	}
	for _, r := range all {
		if strings.HasPrefix(r.name, "queue add") {
			r.ready()
		}
	}
	qs.Shutdown()
	for _, r := range all {
		if strings.HasPrefix(r.name, "queue add") {
			r.p.waitStderr(`NATS disconnected; reconnecting`)
		}
	}
	for _, r := range all {
		_ = r.p.cmd.Process.Signal(r.sig)
	}
	for _, r := range all {
		t.Run(r.name, func(t *testing.T) {
			select {
			case <-r.p.done:
			case <-time.After(10 * time.Second):
				out, errs := r.p.lines()
				t.Fatalf("still running 10s after %v\nstdout: %q\nstderr: %q", r.sig, out, errs)
			}
			out, errs := r.p.lines()
			if code, want := r.p.cmd.ProcessState.ExitCode(), 128+int(r.sig); code != want {
				t.Errorf("exit code %d after %v, want %d\nstdout: %q\nstderr: %q", code, r.sig, want, out, errs)
			}
			for _, l := range errs {
				if strings.Contains(l, "context canceled") || strings.HasPrefix(l, "loom: ") && !strings.HasPrefix(l, "loom: second signal") {
					t.Errorf("the interruption was reported as a failure: %q\nstderr: %q", l, errs)
				}
			}
		})
	}
}

// natsWithAnEmptyQueue starts a nats-server with JetStream, holding the
// work queue name (in memory) and no job, for loom queue commands.
func natsWithAnEmptyQueue(t *testing.T, name string) *embedded.NATS {
	t.Helper()
	ns := testutil.StartNATS(t, embedded.NATSOptions{JetStream: true})
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := workqueue.DefaultConfig(name)
	cfg.Storage, cfg.Logger = "memory", quietLog()
	q, err := workqueue.New[struct{}](ctx, nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	return ns
}

// queueAddArgs are the arguments of loom queue add adding n empty jobs
// to queue.
func queueAddArgs(queue string, n int) []string {
	args := []string{"queue", "add", queue}
	for range n {
		args = append(args, "{}")
	}
	return args
}
