package mux

import (
	"testing"
	"time"

	"github.com/loomrt/loom/internal/plane"
	"github.com/loomrt/loom/internal/wire"
)

// TestDocumentedLimits holds the Go implementation's figures that
// docs/protocol.md gives: the server reads a preface within 10 s, senders
// bound their unwritten buffer at 1 MiB, a half-closed connection lingers
// at most 5 s, a client announces a 256 KiB initial window and 4 MiB
// frames.
func TestDocumentedLimits(t *testing.T) {
	if handshakeTimeout != 10*time.Second || softPending != 1<<20 || lingerTimeout != 5*time.Second ||
		plane.DefaultInitialWindow != 256<<10 || wire.DefaultMaxFrameSize != 4<<20 {
		t.Errorf("preface %v, write buffer %d, linger %v, initial window %d, max frame %d; docs/protocol.md says 10s, 1 MiB, 5s, 256 KiB, 4 MiB",
			handshakeTimeout, softPending, lingerTimeout, plane.DefaultInitialWindow, wire.DefaultMaxFrameSize)
	}
}
