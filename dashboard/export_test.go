package dashboard

import "time"

// Serve serves d on ln, as Listen does on the listener it opens.
var Serve = serve

// SetIdleTimeout sets how long a Server keeps an idle connection, until
// the returned func restores it.
func SetIdleTimeout(d time.Duration) (restore func()) {
	old := idleTimeout
	idleTimeout = d
	return func() { idleTimeout = old }
}
