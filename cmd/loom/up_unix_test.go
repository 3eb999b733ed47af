//go:build unix

package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestLoomUpOnAnEtcdDatabaseInUseFailsNamingIt holds the lock of the etcd
// database loom up is about to open, as a stray etcd or bbolt tool would:
// etcd would wait for it without end, and loom up with it until a Ctrl-C.
// It must fail at once instead, naming the directory.
func TestLoomUpOnAnEtcdDatabaseInUseFailsNamingIt(t *testing.T) {
	dir := t.TempDir()
	snap := filepath.Join(dir, "etcd", "member", "snap")
	if err := os.MkdirAll(snap, 0o700); err != nil {
		t.Fatal(err)
	}
	db, err := os.OpenFile(filepath.Join(snap, "db"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := syscall.Flock(int(db.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	p := startLoom(t, nil, "up", "--nats-port", "0", "--monitor-port", "0", "--etcd-port", "0", "--etcd-peer-port", "0", "--data-dir", dir)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Signal(os.Interrupt)
		<-p.done
		out, errs := p.lines()
		t.Fatalf("loom up on a data directory whose etcd database is held still starting after 10s\nstdout: %q\nstderr: %q", out, errs)
	}
	out, errs := p.lines()
	stderr := strings.Join(errs, "\n")
	if code := p.cmd.ProcessState.ExitCode(); code != 1 || len(out) != 0 || !strings.Contains(stderr, "--data-dir "+dir+": its etcd database is in use") || strings.Contains(stderr, "Options.") {
		t.Errorf("loom up exited %d, printed %q and said %q; want 1, no environment, and the data directory named as in use in loom up's terms", code, out, stderr)
	}
}

// TestASecondSIGINTCutsAHungShutdownShort stops (SIGSTOP) the loom up a
// loom sub is connected to, then interrupts loom sub: its shutdown waits
// on etcd to revoke its lease, which the frozen server never answers. A
// second Ctrl-C must end it at once with 130, as loom.Run does; it was
// swallowed, and loom sub exited 0 only when its etcd timeout ran out.
func TestASecondSIGINTCutsAHungShutdownShort(t *testing.T) {
	up := startLoom(t, nil, "up", "--nats-port", "0", "--monitor-port", "0", "--etcd-port", "0", "--etcd-peer-port", "0", "--data-dir", t.TempDir())
	up.waitStderr(`^loom up: serving`)
	// Standard output is read apart from standard error: its lines may
	// come a moment later. LOOM_STATUS_PORT is the last.
	up.waitStdout(`^LOOM_STATUS_PORT=`)
	env, _ := up.lines()
	// Its dial timeout bounds the wait for the revoke: make it longer than
	// any test machine's pause, so only the second signal can end it.
	sub := startLoom(t, append(env, "LOOM_DISCOVERY_DIAL_TIMEOUT=60s"), "sub", "demo", "topic")
	sub.waitStderr(`^loom sub: subscribed`)

	if err := up.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = up.cmd.Process.Signal(syscall.SIGCONT) })
	_ = sub.cmd.Process.Signal(os.Interrupt)
	sub.waitStderr(`^loom sub: 0 events`) // the first signal was taken: it is shutting down
	_ = sub.cmd.Process.Signal(os.Interrupt)
	if code := sub.waitExit(); code != 130 {
		out, errs := sub.lines()
		t.Fatalf("loom sub exited %d after a second SIGINT, want 130\nstdout: %q\nstderr: %q", code, out, errs)
	}
	if _, errs := sub.lines(); !strings.Contains(strings.Join(errs, "\n"), "second signal") {
		t.Errorf("loom sub did not say why it exited at once: %q", errs)
	}
}
