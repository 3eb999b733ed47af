package natsconn

import "time"

// SetReconnectLogEvery sets how often failed reconnect attempts are logged
// as warnings, until the returned func restores the default.
func SetReconnectLogEvery(d time.Duration) (restore func()) {
	reconnectLogEvery.Store(int64(d))
	return func() { reconnectLogEvery.Store(0) }
}
