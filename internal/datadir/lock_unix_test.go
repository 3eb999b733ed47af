//go:build unix

package datadir_test

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/loomrt/loom/internal/datadir"
)

// holdEnv names the directory a child process of this test binary locks.
const holdEnv = "LOOM_DATADIR_TEST_HOLD"

// TestMain lets the test binary, run again as a child, hold a lock until
// it is killed.
func TestMain(m *testing.M) {
	if dir := os.Getenv(holdEnv); dir != "" {
		if _, err := datadir.Lock(dir, "test.lock", 0o600); err != nil {
			os.Stdout.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		os.Stdout.WriteString("locked\n")
		select {} // until killed
	}
	os.Exit(m.Run())
}

// TestLockIsForOneHolderAlone checks what the package doc says: a second
// holder, in this process or another, fails at once with ErrInUse; unlock
// releases the lock, and so does the holding process's end, however it
// ends.
func TestLockIsForOneHolderAlone(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "test.lock")
	if datadir.Held(file) {
		t.Fatal("Held of a file that does not exist is true")
	}

	unlock, err := datadir.Lock(dir, "test.lock", 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := datadir.Lock(dir, "test.lock", 0o600); !errors.Is(err, datadir.ErrInUse) {
		t.Errorf("a second Lock in this process: %v; want ErrInUse", err)
	}
	if !datadir.Held(file) {
		t.Error("Held of a locked file is false")
	}
	unlock()
	if datadir.Held(file) {
		t.Error("Held after unlock is true")
	}

	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), holdEnv+"="+dir)
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer child.Process.Kill()
	line, err := bufio.NewReader(out).ReadString('\n')
	if line != "locked\n" {
		t.Fatalf("the child process did not take the lock: %q, %v", line, err)
	}
	if _, err := datadir.Lock(dir, "test.lock", 0o600); !errors.Is(err, datadir.ErrInUse) {
		t.Errorf("Lock while another process holds it: %v; want ErrInUse", err)
	}
	if !datadir.Held(file) {
		t.Error("Held while another process holds the lock is false")
	}
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait()
	unlock, err = datadir.Lock(dir, "test.lock", 0o600)
	if err != nil {
		t.Fatalf("Lock after the holding process was killed: %v", err)
	}
	unlock()
}

// TestWritableMakesTheDirectoryAndLeavesNothingInIt checks Writable's doc:
// it makes a missing directory, checks it can hold a file, and leaves no
// file behind; a directory it cannot make is an error.
func TestWritableMakesTheDirectoryAndLeavesNothingInIt(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	if err := datadir.Writable(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 0 {
		t.Fatalf("Writable left %d entries in %s (%v)", len(entries), dir, err)
	}
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := datadir.Writable(filepath.Join(file, "sub"), 0o750); err == nil {
		t.Error("Writable of a directory under a file succeeded")
	}
}
