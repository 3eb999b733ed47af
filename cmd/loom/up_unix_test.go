//go:build unix

package main

import (
	"os"
	"path/filepath"
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
