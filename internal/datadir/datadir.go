// Package datadir checks and takes the data directories of the embedded
// servers and loom up. Lock takes a directory for one holder alone, with a lock
// file in it, so that a second server or command on the same directory
// fails at once instead of sharing or waiting. On systems without flock it
// takes nothing.
package datadir

import (
	"errors"
	"os"
)

// ErrInUse is returned by Lock when another holder has the lock.
var ErrInUse = errors.New("in use")

// Writable makes dir (with perm) if it is missing, and checks that files
// can be made in it: a server's own error would not name it.
func Writable(dir string, perm os.FileMode) error {
	if err := os.MkdirAll(dir, perm); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".loom-write-check-*")
	if err != nil {
		return err
	}
	name := f.Name()
	_ = f.Close()
	return os.Remove(name)
}
