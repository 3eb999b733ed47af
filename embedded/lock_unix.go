//go:build unix

package embedded

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// lockStoreDir takes dir for this server alone: nats-server would share a
// JetStream store with another server of this process, each overwriting
// what the other wrote. The lock goes with the process, however it ends;
// unlock releases it sooner.
func lockStoreDir(dir string) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(dir, "loom-nats.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("embedded: JetStream store directory %s: %w", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, storeInUseError{dir}
		}
		return nil, fmt.Errorf("embedded: JetStream store directory %s: locking it: %w", dir, err)
	}
	return func() { f.Close() }, nil
}
