//go:build !unix

package embedded

// lockStoreDir does nothing without flock: two servers on one store are
// not detected.
func lockStoreDir(dir string) (unlock func(), err error) { return func() {}, nil }
