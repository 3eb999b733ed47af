//go:build !linux

package mux

import "net"

// peerBytesWaiting cannot tell here whether bytes wait unread, and says
// no: keepalive then judges by what the reader has read alone.
func peerBytesWaiting(net.Conn) bool { return false }
