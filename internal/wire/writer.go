package wire

import (
	"encoding/binary"
	"slices"
	"unicode/utf8"
)

// Writer appends frames to one buffer so that a connection's writer can
// send many frames in one write. Its methods never allocate once the buffer
// has grown to the size of a batch. The zero Writer is ready to use; a
// Writer is not safe for concurrent use.
//
// The Writer does not check payload sizes against the peer's maximum frame
// size; the caller does, because it knows the peer's preface.
type Writer struct {
	buf []byte
}

// Len returns the number of buffered bytes.
func (w *Writer) Len() int { return len(w.buf) }

// Bytes returns the buffered frames. They are valid until the next call
// that modifies the Writer.
func (w *Writer) Bytes() []byte { return w.buf }

// Reset discards the buffered frames and keeps the buffer.
func (w *Writer) Reset() { w.buf = w.buf[:0] }

// Swap returns the buffered frames and continues with spare[:0] as the
// buffer, so that one goroutine can write the frames out while others
// append the next batch.
func (w *Writer) Swap(spare []byte) []byte {
	b := w.buf
	w.buf = spare[:0]
	return b
}

// extend lengthens the buffer by n bytes and returns where they start.
// Reslicing w.buf in place stores only its length: unless the buffer
// grows, a frame costs no write barrier while the garbage collector runs
// (an append of a slice stores the pointer too).
func (w *Writer) extend(n int) int {
	l := len(w.buf)
	if cap(w.buf)-l < n {
		w.grow(n)
	}
	w.buf = w.buf[:l+n]
	return l
}

func (w *Writer) grow(n int) { w.buf = slices.Grow(w.buf, n) }

func (w *Writer) header(t Type, f Flags, stream uint32, n int) {
	i := w.extend(HeaderSize)
	putHeader(w.buf[i:i+HeaderSize], t, f, stream, n)
}

func putHeader(b []byte, t Type, f Flags, stream uint32, n int) {
	b[0], b[1] = byte(t), byte(f)
	binary.BigEndian.PutUint32(b[2:], stream)
	binary.BigEndian.PutUint32(b[6:], uint32(n))
}

// Data appends a DATA frame carrying p on stream.
func (w *Writer) Data(stream uint32, p []byte) { w.DataPrefixed(stream, nil, p) }

// DataPrefixed appends a DATA frame on stream whose payload is prefix
// followed by p, as Data(stream, append(prefix, p...)) would without
// joining them first: an encoder's header and the bytes it frames.
func (w *Writer) DataPrefixed(stream uint32, prefix, p []byte) {
	n := len(prefix) + len(p)
	i := w.extend(HeaderSize + n)
	b := w.buf[i : i+HeaderSize+n]
	putHeader(b, TypeData, 0, stream, n)
	copy(b[HeaderSize:], prefix)
	copy(b[HeaderSize+len(prefix):], p)
}

// End appends an END frame with code and msg on stream. A msg longer than
// MaxMessageLen is cut at a UTF-8 boundary.
func (w *Writer) End(stream uint32, code Code, msg string) {
	msg = truncate(msg)
	w.header(TypeEnd, 0, stream, 2+len(msg))
	w.buf = binary.BigEndian.AppendUint16(w.buf, uint16(code))
	w.buf = append(w.buf, msg...)
}

// Cancel appends a CANCEL frame on stream; f is FlagStop or FlagKill.
func (w *Writer) Cancel(stream uint32, f Flags) {
	w.header(TypeCancel, f, stream, 0)
}

// Credit appends a CREDIT frame granting n more bytes on stream.
func (w *Writer) Credit(stream uint32, n uint32) {
	w.header(TypeCredit, 0, stream, 4)
	w.buf = binary.BigEndian.AppendUint32(w.buf, n)
}

// Ping appends a PING frame carrying data.
func (w *Writer) Ping(data [8]byte) {
	w.header(TypePing, 0, 0, 8)
	w.buf = append(w.buf, data[:]...)
}

// Pong appends a PONG frame answering a PING that carried data.
func (w *Writer) Pong(data [8]byte) {
	w.header(TypePong, 0, 0, 8)
	w.buf = append(w.buf, data[:]...)
}

// GoAway appends a GOAWAY frame: streams up to and including last were
// accepted, later ones will be refused. A reason longer than MaxMessageLen
// is cut at a UTF-8 boundary.
func (w *Writer) GoAway(last uint32, code Code, reason string) {
	reason = truncate(reason)
	w.header(TypeGoAway, 0, 0, 6+len(reason))
	w.buf = binary.BigEndian.AppendUint32(w.buf, last)
	w.buf = binary.BigEndian.AppendUint16(w.buf, uint16(code))
	w.buf = append(w.buf, reason...)
}

// Open appends an OPEN frame on stream carrying h and the request payload.
// It returns an error, and appends nothing, if h breaks a field limit (see
// AppendOpen).
func (w *Writer) Open(stream uint32, h *OpenHeader, payload []byte) error {
	n, err := h.Size()
	if err != nil {
		return err
	}
	w.header(TypeOpen, 0, stream, n+len(payload))
	w.buf = h.append(w.buf)
	w.buf = append(w.buf, payload...)
	return nil
}

// truncate cuts s to at most MaxMessageLen bytes without splitting a
// UTF-8 sequence.
func truncate(s string) string {
	if len(s) <= MaxMessageLen {
		return s
	}
	i := MaxMessageLen
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i]
}
