//go:build unix

package main

import (
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startUpWithEtcd starts loom up with etcd discovery and returns it and
// the environment it printed.
func startUpWithEtcd(t *testing.T) (*loomProc, []string) {
	t.Helper()
	up := startLoom(t, nil, "up", "--nats-port", "0", "--monitor-port", "0", "--etcd-port", "0", "--etcd-peer-port", "0", "--data-dir", t.TempDir())
	up.waitStderr(`^loom up: serving`)
	// Standard output is read apart from standard error: its lines may
	// come a moment later. LOOM_STATUS_PORT is the last.
	up.waitStdout(`^LOOM_STATUS_PORT=`)
	out, _ := up.lines()
	var env []string
	for _, l := range out {
		if strings.Contains(l, "=") {
			env = append(env, l)
		}
	}
	if !strings.Contains(strings.Join(env, "\n"), "LOOM_DISCOVERY=etcd") {
		t.Fatalf("loom up's environment %q does not name etcd", env)
	}
	return up, env
}

// TestSubExitsAtOnceOnCtrlCWithEtcdGone stops loom sub with Ctrl-C after
// loom up, and with it etcd, died: loom sub serves nothing and must not
// wait for etcd to revoke its lease (it waited for the whole discovery
// dial timeout, 5s by default, here 30s); the lease expires by itself.
func TestSubExitsAtOnceOnCtrlCWithEtcdGone(t *testing.T) {
	up, env := startUpWithEtcd(t)
	const dial = 30 * time.Second
	sub := startLoom(t, append(env, "LOOM_DISCOVERY_DIAL_TIMEOUT="+dial.String()), "sub", "ns", "topic")
	sub.waitStderr(`^loom sub: subscribed to`)

	_ = up.cmd.Process.Kill()
	<-up.done
	start := time.Now()
	_ = sub.cmd.Process.Signal(os.Interrupt)
	select {
	case <-sub.done:
	case <-time.After(dial / 3):
		_ = sub.cmd.Process.Signal(syscall.SIGQUIT) // its goroutines, on standard error
		<-sub.done
		_, errs := sub.lines()
		t.Fatalf("loom sub still running %v after Ctrl-C with etcd gone; want it not to wait for etcd (dial timeout %v)\nstderr: %s",
			dial/3, dial, strings.Join(errs, "\n"))
	}
	if code := sub.cmd.ProcessState.ExitCode(); code != 0 {
		_, errs := sub.lines()
		t.Fatalf("loom sub exited %d after Ctrl-C with etcd gone\nstderr: %s", code, strings.Join(errs, "\n"))
	}
	t.Logf("loom sub exited %v after Ctrl-C", time.Since(start).Round(time.Millisecond))
}

// TestCtrlCWithEtcdAndNATSGoneLogsNoFailure stops loom sub with Ctrl-C
// after loom up, and with it etcd and nats-server, died. The loss while
// it ran is logged; the exit is no failure, but it logged the etcd
// client's warning that revoking the lease failed (the shutdown does not
// wait for an unreachable etcd, by design) and, in most runs, an error
// that the NATS connection it closed itself was closed. Several loom subs
// stop at once, so that a run without the error is rare.
func TestCtrlCWithEtcdAndNATSGoneLogsNoFailure(t *testing.T) {
	up, env := startUpWithEtcd(t)
	// No reconnect attempt, and no lease keep-alive given up, within the
	// test: the one warning expected is the disconnection.
	env = append(env, "LOOM_NATS_RECONNECT_WAIT=10m", "LOOM_DISCOVERY_LEASE_TTL=10m", "LOOM_DISCOVERY_DIAL_TIMEOUT=30s")
	subs := make([]*loomProc, 4)
	for i := range subs {
		subs[i] = startLoom(t, env, "sub", "ns", "topic")
	}
	for _, sub := range subs {
		sub.waitStderr(`^loom sub: subscribed to`)
	}

	_ = up.cmd.Process.Kill()
	<-up.done
	for _, sub := range subs {
		sub.waitStderr(`level=WARN msg="NATS disconnected; reconnecting"`)
	}
	for _, sub := range subs {
		_ = sub.cmd.Process.Signal(os.Interrupt)
	}
	for i, sub := range subs {
		sub.exit()
		_, errs := sub.lines()
		if failures := failuresBesidesTheDisconnection(errs); len(failures) != 0 {
			t.Errorf("loom sub %d, stopped with Ctrl-C with etcd and NATS gone, logged failures:\n%s\nstderr:\n%s", i, strings.Join(failures, "\n"), strings.Join(errs, "\n"))
		}
	}
}

// failuresBesidesTheDisconnection returns the WARN and ERROR lines of a
// process's stderr but the warning that NATS disconnected, which a
// process that outlives its server logs rightly.
func failuresBesidesTheDisconnection(stderr []string) []string {
	var failures []string
	for _, l := range stderr {
		if (strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR")) && !strings.Contains(l, `msg="NATS disconnected; reconnecting"`) {
			failures = append(failures, l)
		}
	}
	return failures
}
