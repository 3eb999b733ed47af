package testutil

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"testing"
)

// FreePort returns a port free on 127.0.0.1 for a server a test starts
// later (and perhaps restarts). It is taken below the kernel's ephemeral
// range where there is room: between now and the server's start an
// outgoing connection of any test may be given an ephemeral port, but
// never one below that range.
//
// A port is handed out once per process: two calls picking the same free
// port at random (a test's client and peer ports, say) would give two
// servers one port.
func FreePort(t testing.TB) int {
	t.Helper()
	if low := ephemeralLow(); low > 11000 {
		for range 100 {
			p := 10000 + rand.IntN(low-10000)
			if _, taken := handedOut.LoadOrStore(p, true); taken {
				continue
			}
			if ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p)); err == nil {
				_ = ln.Close()
				return p
			}
		}
	}
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := ln.Addr().(*net.TCPAddr).Port
		_ = ln.Close()
		if _, taken := handedOut.LoadOrStore(p, true); !taken {
			return p
		}
	}
	t.Fatal("testutil: no free port on 127.0.0.1 that this process has not handed out already")
	return 0
}

// handedOut holds the ports FreePort returned (and those it tried).
var handedOut sync.Map

// ephemeralLow returns the first port of the kernel's ephemeral range, or
// 0 if it cannot tell.
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0
	}
	var low, high int
	if _, err := fmt.Sscan(string(b), &low, &high); err != nil {
		return 0
	}
	return low
}
