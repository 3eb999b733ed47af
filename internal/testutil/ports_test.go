package testutil

import (
	"fmt"
	"net"
	"testing"
)

func TestFreePortIsFreeAndBelowTheEphemeralRange(t *testing.T) {
	p := FreePort(t)
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
	if err != nil {
		t.Fatalf("FreePort gave %d, which cannot be listened on: %v", p, err)
	}
	_ = ln.Close()
	if low := ephemeralLow(); low > 11000 && (p < 10000 || p >= low) {
		t.Errorf("FreePort gave %d, outside [10000, %d) below the ephemeral range", p, low)
	}
}

// FreePort never hands out a port twice in a process: picked at random,
// two calls (a server's client and peer ports) once gave the same one.
func TestFreePortNeverGivesAPortTwice(t *testing.T) {
	seen := make(map[int]bool)
	for range 400 {
		p := FreePort(t)
		if seen[p] {
			t.Fatalf("FreePort gave %d twice", p)
		}
		seen[p] = true
	}
}
