//go:build linux

package mux

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// peerBytesWaiting reports whether bytes from the peer wait in the
// kernel's receive queue of nc, unread by this process (SIOCINQ). It
// returns false where it cannot tell: a connection that is not a socket,
// or a failed call.
func peerBytesWaiting(nc net.Conn) bool {
	if t, ok := nc.(interface{ NetConn() net.Conn }); ok { // TLS
		nc = t.NetConn()
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	n := 0
	if err := rc.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.TIOCINQ) }); err != nil {
		return false
	}
	return n > 0
}
