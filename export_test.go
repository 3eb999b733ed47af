package loom

import "time"

// PlanesHeld returns what rt's request planes keep for the servers it
// calls: addresses, TCP hosts and TCP connections.
func PlanesHeld(rt *Runtime) (addrs, hosts, conns int) { return rt.planes.Held() }

// Candidates returns how many instances c holds, in its map and its list.
func Candidates[Req, Resp any](c *Client[Req, Resp]) (inMap, inList int) {
	c.core.mu.Lock()
	defer c.core.mu.Unlock()
	return len(c.core.cands), len(*c.core.list.Load())
}

// SetStatusWriteTimeout sets how long the status servers started from
// now may take to write one answer, and returns a func restoring it.
func SetStatusWriteTimeout(d time.Duration) (restore func()) {
	old := statusWriteTimeout
	statusWriteTimeout = d
	return func() { statusWriteTimeout = old }
}
