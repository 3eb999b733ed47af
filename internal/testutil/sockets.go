package testutil

import (
	"net"
	"syscall"
)

// smallBuffer is the socket buffer size SmallSendBuffers and
// SmallReceiveBuffers ask for; Linux doubles it, and keeps a floor.
const smallBuffer = 4096

// SmallSendBuffers wraps a TCP listener so that each connection it accepts
// has a small send buffer: a peer that stops reading fills it after a few
// KiB, not megabytes, and the next write waits.
func SmallSendBuffers(l net.Listener) net.Listener {
	return smallSendBuffers{l.(*net.TCPListener)}
}

type smallSendBuffers struct{ *net.TCPListener }

func (l smallSendBuffers) Accept() (net.Conn, error) {
	c, err := l.AcceptTCP()
	if err != nil {
		return nil, err
	}
	if rc, err := c.SyscallConn(); err == nil {
		setBuffer(rc, syscall.SO_SNDBUF)
	}
	return c, nil
}

// SmallReceiveBuffers is a dialer whose connections have a small receive
// buffer: one that reads nothing stops taking data after a few KiB.
func SmallReceiveBuffers() *net.Dialer {
	return &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		setBuffer(c, syscall.SO_RCVBUF)
		return nil
	}}
}

func setBuffer(c syscall.RawConn, opt int) {
	_ = c.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, opt, smallBuffer) })
}
