//go:build unix

package main

import (
	"os"
	"strings"
	"testing"
)

// TestQueueCtrlCWithNATSGoneLogsNoFailure stops loom queue add with
// Ctrl-C while nats-server is gone. The loss is logged; closing the
// connection at exit is no failure, but nats.go, closed while it
// reconnected, reported "no servers available", and the connection's
// closed handler logged it as an ERROR. Several run at once, so that a
// run without the error is rare.
func TestQueueCtrlCWithNATSGoneLogsNoFailure(t *testing.T) {
	ns := natsWithAnEmptyQueue(t, "jobs")
	// More jobs than are added before the server is gone: the command is
	// adding one when it is told to stop. No reconnect attempt within
	// the test: the one warning expected is the disconnection.
	args := queueAddArgs("jobs", 20000)
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
