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

// TestLoomUpStuckStartingEndsOnSIGINT holds the lock of the etcd database
// loom up is about to open, as a stray etcd or bbolt tool would: etcd then
// waits for it without end. A Ctrl-C must still end loom up, which caught
// the signal and went on waiting.
func TestLoomUpStuckStartingEndsOnSIGINT(t *testing.T) {
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
	p := startLoom(t, nil, "up", "--nats-port", "0", "--monitor-port", "0", "--etcd-port", "0", "--etcd-peer-port", "0", "--data-dir", dir, "-v")
	// etcd logs its start before it opens the database.
	p.waitStderr(`starting an etcd server|etcd`)
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		out, errs := p.lines()
		t.Fatalf("loom up still running 10s after SIGINT while starting\nstdout: %q\nstderr: %q", out, errs)
	}
	out, errs := p.lines()
	if code := p.cmd.ProcessState.ExitCode(); code == 0 || len(out) != 0 {
		t.Errorf("loom up interrupted while starting exited %d and printed %q, want non-zero and no environment; stderr: %q", code, out, errs)
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
