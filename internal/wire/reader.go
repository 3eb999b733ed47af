package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// readerInitSize is the Reader's buffer size when frames are small; it is
// also the largest read the Reader asks of the connection in steady state.
const readerInitSize = 32 << 10

// shrinkAfter is how many consecutive small frames the Reader parses before
// it gives back a buffer grown for a large frame.
const shrinkAfter = 64

// Reader parses frames from a byte stream.
//
// It owns one buffer, reads into it in large chunks and parses frames in
// place, so reading a frame allocates nothing in steady state. The
// Payload of a returned Frame aliases that buffer and is valid only until
// the next call to ReadFrame; copy it to keep it.
//
// The frame length is checked against the maximum frame size before any
// allocation: the buffer grows only up to HeaderSize plus that maximum, and
// only when a frame that large has been announced. A Reader is not safe
// for concurrent use.
type Reader struct {
	rd    io.Reader
	buf   []byte
	r, w  int // unread bytes are buf[r:w]
	max   uint32
	small int // frames left before a grown buffer is given back
	err   error

	frameTimeout  time.Duration
	setDeadline   func(time.Time) error
	armed         bool      // a frame deadline is set
	frameDeadline time.Time // the frame's deadline; kept across an interrupt
	interrupted   func() bool
}

// ErrFrameTimeout is wrapped by the error of a Reader whose frame did not
// arrive whole within its frame timeout: a peer trickling bytes.
var ErrFrameTimeout = errors.New("wire: frame not received in time")

// SetFrameTimeout makes the Reader require every frame to arrive whole
// within d of its first byte: while a frame is partly received, set is
// called with the deadline (a net.Conn's SetReadDeadline), and with the
// zero time once it is complete. Time between frames is not bounded. A
// read that times out ends the Reader with an error wrapping
// ErrFrameTimeout.
func (r *Reader) SetFrameTimeout(d time.Duration, set func(time.Time) error) {
	r.frameTimeout, r.setDeadline = d, set
}

// ErrInterrupted is returned by ReadFrame when its owner cut a blocked
// read short (see SetInterrupt). The Reader is intact: the next ReadFrame
// resumes where this one stopped.
var ErrInterrupted = errors.New("wire: read interrupted")

// SetInterrupt lets the Reader's owner cut a blocked read short, so that
// the reading can pass to another goroutine: the owner sets a read
// deadline in the past, and interrupted, called when a read times out,
// reports whether the owner did so (and clears the request and the
// deadline). Then ReadFrame returns ErrInterrupted instead of ending the
// Reader; a frame deadline that was armed is armed again, unchanged, when
// reading resumes. A timeout the owner did not ask for ends the Reader as
// before.
func (r *Reader) SetInterrupt(interrupted func() bool) { r.interrupted = interrupted }

// NewReader returns a Reader that parses frames from rd and rejects any
// frame whose payload is longer than maxFrameSize bytes. A maxFrameSize
// outside [MinMaxFrameSize, MaxMaxFrameSize] is clamped into it.
func NewReader(rd io.Reader, maxFrameSize int) *Reader {
	return &Reader{rd: rd, max: uint32(min(max(maxFrameSize, MinMaxFrameSize), MaxMaxFrameSize))}
}

// MaxFrameSize returns the largest payload the Reader accepts.
func (r *Reader) MaxFrameSize() int { return int(r.max) }

// Buffered returns the number of bytes read from the connection but not
// yet parsed.
func (r *Reader) Buffered() int { return r.w - r.r }

// FrameBuffered reports whether the next frame is already read whole, so
// that ReadFrame will return without reading from the connection. A
// caller can flush what it owes the peer before a ReadFrame that would
// block.
func (r *Reader) FrameBuffered() bool {
	if r.err != nil || r.w-r.r < HeaderSize {
		return r.err != nil
	}
	n := binary.BigEndian.Uint32(r.buf[r.r+6:])
	return n > r.max || r.w-r.r-HeaderSize >= int(n)
}

// Peek returns the type and stream id of the next frame, without
// consuming it, if FrameBuffered: a reader can take a run of frames for
// one stream under one lock. ok is false otherwise, and after an error.
func (r *Reader) Peek() (t Type, stream uint32, ok bool) {
	if r.err != nil || !r.FrameBuffered() {
		return 0, 0, false
	}
	h := r.buf[r.r : r.r+HeaderSize]
	return Type(h[0]), binary.BigEndian.Uint32(h[2:]), true
}

// DataRun consumes the DATA frames of stream that come next and are
// read whole, while budget is positive before each (it is reduced by
// each frame's size, header included), and returns them as they came,
// headers and payloads, aliasing the buffer as a Frame's payload does.
// Each header is checked as ReadFrame checks it; the run stops before a
// frame that is of another type or stream, not read whole, or would fail
// the check, so that ReadFrame reports it. A reader takes a stream's run
// of messages with one copy instead of one per frame.
func (r *Reader) DataRun(stream uint32, budget int64) []byte {
	if r.err != nil || stream == 0 {
		return nil
	}
	start, i := r.r, r.r
	for budget > 0 && r.w-i >= HeaderSize {
		h := r.buf[i : i+HeaderSize]
		n := binary.BigEndian.Uint32(h[6:])
		if Type(h[0]) != TypeData || h[1] != 0 || binary.BigEndian.Uint32(h[2:]) != stream || n > r.max || r.w-i-HeaderSize < int(n) {
			break
		}
		size := HeaderSize + int(n)
		if size > readerInitSize {
			r.small = shrinkAfter
		} else if r.small > 0 {
			r.small--
		}
		i += size
		budget -= int64(size)
	}
	r.r = i
	return r.buf[start:i:i]
}

// ReadFrame reads the next frame. The frame's header is checked (known
// type, flags, stream id, fixed payload sizes, maximum size); a violation
// returns an error that wraps ErrProtocol. A clean end of input between
// frames returns io.EOF; an end inside a frame returns an error that wraps
// io.ErrUnexpectedEOF. Errors are sticky.
//
// The returned Payload is valid until the next call to ReadFrame.
func (r *Reader) ReadFrame() (Frame, error) {
	if r.err != nil {
		return Frame{}, r.err
	}
	if r.small == 0 && len(r.buf) > readerInitSize && r.w-r.r <= readerInitSize/2 {
		// A grown buffer is no longer needed: give it back to the GC.
		nb := make([]byte, readerInitSize)
		r.w = copy(nb, r.buf[r.r:r.w])
		r.r, r.buf = 0, nb
	}
	if err := r.fill(HeaderSize); err != nil {
		if err != ErrInterrupted {
			r.err = err
		}
		return Frame{}, err
	}
	h := r.buf[r.r : r.r+HeaderSize]
	f := Frame{Type: Type(h[0]), Flags: Flags(h[1]), Stream: binary.BigEndian.Uint32(h[2:])}
	n := binary.BigEndian.Uint32(h[6:])
	if n > r.max {
		r.err = protoErr("%v frame on stream %d announces a %d-byte payload, above the maximum frame size %d", f.Type, f.Stream, n, r.max)
		return Frame{}, r.err
	}
	if err := checkHeader(f.Type, f.Flags, f.Stream, n); err != nil {
		r.err = err
		return Frame{}, err
	}
	size := HeaderSize + int(n)
	if size > readerInitSize {
		r.small = shrinkAfter
	} else if r.small > 0 {
		r.small--
	}
	if err := r.fill(size); err != nil {
		if err != ErrInterrupted {
			r.err = err
		}
		return Frame{}, err
	}
	f.Payload = r.buf[r.r+HeaderSize : r.r+size : r.r+size]
	r.r += size
	r.frameDeadline = time.Time{}
	if r.armed {
		r.armed = false
		r.setDeadline(time.Time{})
	}
	return f, nil
}

// fill makes at least need bytes available in buf[r:w]; need is at most
// HeaderSize plus the maximum frame size. The buffer grows as bytes
// arrive, at most doubling each time, so a peer that announces a large
// frame and sends little of it costs little.
func (r *Reader) fill(need int) error {
	if r.w-r.r >= need {
		return nil
	}
	if r.buf == nil {
		r.buf = make([]byte, readerInitSize)
	}
	empty := 0
	for r.w-r.r < need {
		if r.w == len(r.buf) || (len(r.buf)-r.r < need && r.r > 0 && need <= len(r.buf)) {
			if need <= len(r.buf) || r.r > len(r.buf)/2 {
				r.w = copy(r.buf, r.buf[r.r:r.w])
				r.r = 0
			}
			if r.w == len(r.buf) {
				nb := make([]byte, min(need, max(2*len(r.buf), readerInitSize)))
				r.w = copy(nb, r.buf[r.r:r.w])
				r.r, r.buf = 0, nb
			}
		}
		if r.frameTimeout > 0 && !r.armed && r.w > r.r {
			if r.frameDeadline.IsZero() {
				r.frameDeadline = time.Now().Add(r.frameTimeout)
			}
			r.armed = true
			r.setDeadline(r.frameDeadline)
		}
		n, err := r.rd.Read(r.buf[r.w:])
		r.w += n
		if r.w-r.r >= need {
			return nil
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				if r.w == r.r {
					return io.EOF
				}
				return protoErrWrap(io.ErrUnexpectedEOF, "connection ended inside a frame (%d of %d bytes)", r.w-r.r, need)
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() && r.interrupted != nil && r.interrupted() {
				// interrupted cleared the deadline: the frame's, if any,
				// is set again when reading resumes.
				r.armed = false
				return ErrInterrupted
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() && r.armed {
				return fmt.Errorf("%w: %d of %d bytes within %v", ErrFrameTimeout, r.w-r.r, need, r.frameTimeout)
			}
			return err
		}
		if n == 0 {
			if empty++; empty > 100 {
				return io.ErrNoProgress
			}
		}
	}
	return nil
}
