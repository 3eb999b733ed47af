package testutil

import "go.uber.org/goleak"

// LeakOptions are the goroutines a package's goleak check ignores because
// they belong to a library, not to Loom, and that library cannot stop them.
func LeakOptions() []goleak.Option {
	return nil
}
