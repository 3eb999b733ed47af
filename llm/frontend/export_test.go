package frontend

// SweepDeparted runs one sweep of the requests on departed workers now.
func SweepDeparted(f *Frontend) bool { return f.sweepDeparted() }

// DepartedRequests is how many requests on departed workers are watched.
func DepartedRequests(f *Frontend) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.departed)
}
