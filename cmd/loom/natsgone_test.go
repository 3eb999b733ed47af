//go:build unix

package main

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/workqueue"
)

// TestQueueCtrlCWithNATSGoneLogsNoFailure stops loom queue add with
// Ctrl-C while nats-server is gone. The loss is logged; closing the
// connection at exit is no failure, but nats.go, closed while it
// reconnected, reported "no servers available", and the connection's
// closed handler logged it as an ERROR. Several run at once, so that a
// run without the error is rare.
func TestQueueCtrlCWithNATSGoneLogsNoFailure(t *testing.T) {
	ns, err := embedded.StartNATS(embedded.NATSOptions{JetStream: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := workqueue.DefaultConfig("jobs")
	cfg.Storage, cfg.Logger = "memory", quietLog()
	q, err := workqueue.New[struct{}](ctx, nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	nc.Close()

	// More jobs than are added before the server is gone: the command is
	// adding one when it is told to stop. No reconnect attempt within
	// the test: the one warning expected is the disconnection.
	args := []string{"queue", "add", "jobs"}
	for range 20000 {
		args = append(args, "{}")
	}
	env := []string{"NATS_SERVER=" + ns.ClientURL(), "LOOM_NATS_RECONNECT_WAIT=10m"}
	adds := make([]*loomProc, 4)
	for i := range adds {
		adds[i] = startLoom(t, env, args...)
	}
	for _, add := range adds {
		add.waitStdout(`^added job \d+ to jobs$`)
	}
	ns.Shutdown()
	for _, add := range adds {
		add.waitStderr(`level=WARN msg="NATS disconnected; reconnecting"`)
	}
	for _, add := range adds {
		_ = add.cmd.Process.Signal(os.Interrupt)
	}
	for i, add := range adds {
		add.waitExit()
		_, errs := add.lines()
		if failures := failuresBesidesTheDisconnection(errs); len(failures) != 0 {
			t.Errorf("loom queue add %d, stopped with Ctrl-C with NATS gone, logged failures:\n%s\nstderr:\n%s", i, strings.Join(failures, "\n"), strings.Join(errs, "\n"))
		}
	}
}
