package frontend

import "time"

// SweepDeparted runs one sweep of the requests on departed workers, as
// it would run after d.
func SweepDeparted(f *Frontend, after time.Duration) bool {
	return f.sweepDeparted(time.Now().Add(after))
}

// DepartedRequests is how many requests on departed workers are watched.
func DepartedRequests(f *Frontend) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.departed)
}

// RequestStatuses are the statuses each model's request counts start
// at 0 for.
var RequestStatuses = requestStatuses
