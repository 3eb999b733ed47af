//go:build unix

package etcdserver_test

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestADirWhoseDatabaseAnotherEtcdHoldsFailsAtOnce holds the database's
// lock as an etcd that is not of this package would (bbolt's flock) and
// starts a server on its directory.
func TestADirWhoseDatabaseAnotherEtcdHoldsFailsAtOnce(t *testing.T) {
	opts := fast
	opts.Dir = t.TempDir()
	start(t, opts).Close()
	db, err := os.OpenFile(filepath.Join(opts.Dir, "member", "snap", "db"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := syscall.Flock(int(db.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	startFailsAsDirInUse(t, opts, "a directory whose database another etcd holds")
	db.Close() // the other etcd stops
	start(t, opts).Close()
}
