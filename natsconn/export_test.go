package natsconn

import "time"

// SetReconnectLogEvery sets how often failed reconnect attempts are logged
// as warnings, until the returned func restores the default.
func SetReconnectLogEvery(d time.Duration) (restore func()) {
	reconnectLogEvery.Store(int64(d))
	return func() { reconnectLogEvery.Store(0) }
}

// SetRepeatLogWindow sets how long repeats of an asynchronous error are
// folded into one summary, until the returned func restores the default.
func SetRepeatLogWindow(d time.Duration) (restore func()) {
	repeatWindow.Store(int64(d))
	return func() { repeatWindow.Store(0) }
}

// SetRepeatLogKeys sets how many distinct errors a connection tracks,
// until the returned func restores the default.
func SetRepeatLogKeys(n int) (restore func()) {
	repeatKeys.Store(int64(n))
	return func() { repeatKeys.Store(0) }
}

// SummaryTimers returns how many connections have a summary timer armed.
func SummaryTimers() int64 { return summaryTimers.Load() }
