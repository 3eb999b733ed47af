//go:build unix

package etcdserver

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// lockDir takes dir for this server alone. etcd waits without end for the
// lock of its database when another server holds it, whatever
// ReadyTimeout says; this fails at once instead: on the lock file for a
// server of this package, in this process or another, and on the
// database's own lock for any other etcd. The lock goes with the process,
// however it ends; unlock releases it sooner.
func lockDir(dir string) (unlock func(), err error) {
	inUse := dirInUseError{dir}
	f, err := os.OpenFile(filepath.Join(dir, "loom-etcd.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("etcdserver: data directory %s: %w", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, inUse
		}
		return nil, fmt.Errorf("etcdserver: data directory %s: locking it: %w", dir, err)
	}
	// bbolt locks the database with flock too; a lock taken here on a
	// file of its own is released by closing it.
	if db, err := os.OpenFile(filepath.Join(dir, "member", "snap", "db"), os.O_RDWR, 0); err == nil {
		err := syscall.Flock(int(db.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		db.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, inUse
		}
	}
	return func() { f.Close() }, nil
}
