//go:build unix

package etcdserver_test

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/loomrt/loom/embedded/etcdserver"
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
	opts.ReadyTimeout = 2 * time.Second
	done := make(chan error, 1)
	go func() {
		srv, err := etcdserver.Start(opts)
		if err == nil {
			srv.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "data directory "+opts.Dir+" is in use") {
			t.Fatalf("Start = %v; want an error saying that data directory %s is in use", err, opts.Dir)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("Start on a directory whose database another etcd holds still waiting after 10s (ReadyTimeout %s)", opts.ReadyTimeout)
	}
	db.Close() // the other etcd stops
	start(t, opts).Close()
}
