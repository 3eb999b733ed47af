//go:build !unix

package datadir

import "os"

// Lock takes nothing without flock: a second holder is not detected.
func Lock(dir, name string, perm os.FileMode) (unlock func(), err error) { return func() {}, nil }

// Held reports false without flock.
func Held(path string) bool { return false }
