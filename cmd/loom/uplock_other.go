//go:build !unix

package main

import (
	"fmt"
	"os"
)

// lockDataDir makes the data directory; without flock, two loom up on one
// directory are not detected here.
func lockDataDir(dir string) (unlock func(), err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("--data-dir %s: %w (give loom up a directory it can write)", dir, err)
	}
	return func() {}, nil
}
