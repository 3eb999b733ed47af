package events

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
)

// The frame that wraps an envelope on stream transports (ZeroMQ here),
// seed 001's: one byte of version, a big-endian uint32 payload length, the
// payload.
const (
	// FrameVersion is the version this package writes and reads.
	FrameVersion byte = 1
	// FrameHeaderSize is the length of a frame's header.
	FrameHeaderSize = 5
)

// ErrFrame wraps every malformed frame.
var ErrFrame = errors.New("events: malformed frame")

// AppendFrame appends payload, framed, to dst.
func AppendFrame(dst, payload []byte) []byte {
	dst = append(dst, FrameVersion)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(payload)))
	return append(dst, payload...)
}

// ParseFrame reads one frame from the start of data and returns its
// payload (aliasing data) and the bytes after it. A frame of another
// version, one that claims more than maxPayload bytes, or one cut short is
// an error wrapping ErrFrame.
func ParseFrame(data []byte, maxPayload int) (payload, rest []byte, err error) {
	n, err := frameHeader(data, maxPayload)
	if err != nil {
		return nil, nil, err
	}
	if uint64(len(data)-FrameHeaderSize) < n {
		return nil, nil, fmt.Errorf("%w: header claims %d bytes, %d follow", ErrFrame, n, len(data)-FrameHeaderSize)
	}
	end := FrameHeaderSize + int(n)
	return data[FrameHeaderSize:end:end], data[end:], nil
}

func frameHeader(h []byte, maxPayload int) (uint64, error) {
	if len(h) < FrameHeaderSize {
		return 0, fmt.Errorf("%w: %d bytes, shorter than the %d-byte header", ErrFrame, len(h), FrameHeaderSize)
	}
	if h[0] != FrameVersion {
		return 0, fmt.Errorf("%w: version %d; this build reads version %d (upgrade the older side)", ErrFrame, h[0], FrameVersion)
	}
	n := uint64(binary.BigEndian.Uint32(h[1:5]))
	if n > uint64(maxPayload) {
		return 0, fmt.Errorf("%w: payload of %d bytes is over the limit of %d (events.max_event_size)", ErrFrame, n, maxPayload)
	}
	return n, nil
}

// FrameReader reads frames from a byte stream.
type FrameReader struct {
	r   io.Reader
	max int
	hdr [FrameHeaderSize]byte
	buf []byte
}

// NewFrameReader returns a reader of the frames in r, refusing payloads
// above maxPayload bytes.
func NewFrameReader(r io.Reader, maxPayload int) *FrameReader {
	return &FrameReader{r: r, max: maxPayload}
}

// Next returns the next frame's payload; it is valid until the next call.
// At the end of the stream it returns io.EOF; a stream that ends inside a
// frame gives io.ErrUnexpectedEOF, a malformed header an error wrapping
// ErrFrame.
func (fr *FrameReader) Next() ([]byte, error) {
	if _, err := io.ReadFull(fr.r, fr.hdr[:]); err != nil {
		return nil, err
	}
	n, err := frameHeader(fr.hdr[:], fr.max)
	if err != nil {
		return nil, err
	}
	// The buffer grows with the bytes that arrive, not to what the header
	// claims: a header alone must not cost the maximum.
	fr.buf = fr.buf[:0]
	for uint64(len(fr.buf)) < n {
		have := len(fr.buf)
		want := int(min(n, uint64(max(2*have, frameChunk))))
		fr.buf = slices.Grow(fr.buf, want-have)[:want]
		if _, err := io.ReadFull(fr.r, fr.buf[have:]); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	return fr.buf, nil
}

// frameChunk is what FrameReader reads of a frame before it has seen
// more of it.
const frameChunk = 64 << 10
