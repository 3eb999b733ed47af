package mux

import (
	"testing"
	"unsafe"
)

// The structs allocated once per call stay within the size classes they
// were packed for: a field added carelessly moves a stream to the next
// class, and every call then allocates more.
func TestPerCallStructsKeepTheirSizeClasses(t *testing.T) {
	for _, c := range []struct {
		name      string
		size, max uintptr
	}{
		{"ClientStream", unsafe.Sizeof(ClientStream{}), 192},
		{"ServerStream", unsafe.Sizeof(ServerStream{}), 192},
		{"streamCtx", unsafe.Sizeof(streamCtx{}), 64},
	} {
		if c.size > c.max {
			t.Errorf("%s is %d bytes, above the %d-byte size class it was packed for", c.name, c.size, c.max)
		}
	}
}
