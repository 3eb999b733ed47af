package zmtp

import "io"

// Sizes of a connection's read buffer. It starts small, so that a peer
// that says little (one in the handshake, a subscriber that subscribed)
// costs little, and doubles each time a read fills it, which a peer
// sending faster than it is read does, so a busy peer soon reads in large
// chunks.
const (
	minReadBuffer = 1 << 10
	maxReadBuffer = 64 << 10
)

// readBuffer buffers the reads of a Reader from a connection, as a
// bufio.Reader would, with a buffer that grows from minReadBuffer to
// maxReadBuffer as the peer's traffic needs.
type readBuffer struct {
	rd   io.Reader
	buf  []byte
	r, w int  // unread bytes are buf[r:w]
	full bool // the last read filled buf: the next takes a larger one
	err  error
}

// fill reads once into the empty buffer, growing it first if the last
// read filled it.
func (b *readBuffer) fill() {
	switch {
	case b.buf == nil:
		b.buf = make([]byte, minReadBuffer)
	case b.full && len(b.buf) < maxReadBuffer:
		b.buf = make([]byte, min(2*len(b.buf), maxReadBuffer))
	}
	b.r, b.w, b.full = 0, 0, false
	// As bufio does: a reader that keeps returning nothing is broken.
	for range 100 {
		n, err := b.rd.Read(b.buf)
		if n < 0 || n > len(b.buf) {
			b.err = io.ErrNoProgress
			return
		}
		b.w = n
		b.full = n == len(b.buf)
		if err != nil {
			b.err = err
			return
		}
		if n > 0 {
			return
		}
	}
	b.err = io.ErrNoProgress
}

// ReadByte returns the next byte.
func (b *readBuffer) ReadByte() (byte, error) {
	if b.r == b.w {
		if b.err != nil {
			return 0, b.err
		}
		b.fill()
		if b.r == b.w {
			return 0, b.err
		}
	}
	c := b.buf[b.r]
	b.r++
	return c, nil
}

// Read reads what is buffered into p, or reads once if nothing is: into
// p itself when p is at least as large as the buffer.
func (b *readBuffer) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if b.r == b.w {
		if b.err != nil {
			return 0, b.err
		}
		if len(p) >= max(len(b.buf), minReadBuffer) {
			n, err := b.rd.Read(p)
			if n < 0 || n > len(p) {
				n, err = 0, io.ErrNoProgress
			}
			b.err = err
			if n > 0 {
				return n, nil
			}
			return 0, err
		}
		b.fill()
		if b.r == b.w {
			return 0, b.err
		}
	}
	n := copy(p, b.buf[b.r:b.w])
	b.r += n
	return n, nil
}
