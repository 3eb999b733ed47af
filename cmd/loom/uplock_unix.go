//go:build unix

package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// lockDataDir takes the data directory for this loom up alone, so that a
// second one on it fails at once instead of sharing the first's JetStream
// store or waiting forever for etcd's database lock. The lock goes with
// the process, however it ends; unlock releases it sooner.
func lockDataDir(dir string) (unlock func(), err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("--data-dir %s: %w (give loom up a directory it can write)", dir, err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "loom-up.lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("--data-dir %s: %w (give loom up a directory it can write)", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("--data-dir %s is in use by another loom up: stop it, or give this one another --data-dir", dir)
		}
		return nil, fmt.Errorf("--data-dir %s: locking it: %w", dir, err)
	}
	return func() { f.Close() }, nil
}
