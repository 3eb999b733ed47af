//go:build unix

package datadir

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
)

// Lock takes the lock file name in dir (made if missing, with perm),
// without waiting: ErrInUse if another holder, in this process or
// another, has it. The lock goes with the process, however it ends;
// unlock releases it sooner.
func Lock(dir, name string, perm os.FileMode) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_RDWR|os.O_CREATE, perm)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, ErrInUse
		}
		return nil, err
	}
	return func() { f.Close() }, nil
}

// Held reports whether another holder has an flock on the file at path,
// one that exists (a database that locks itself, as bbolt does). The
// probe's own lock is released at once.
func Held(path string) bool {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	return errors.Is(syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB), syscall.EWOULDBLOCK)
}
