package wire

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"iter"
	"math"
	"time"
)

// Limits on the fields of an OPEN header.
const (
	MaxPathLen     = math.MaxUint16 // path: 1 to 65535 bytes
	MaxShortField  = math.MaxUint8  // codec, request id, traceparent, header key
	MaxHeaders     = 64             // headers per OPEN
	MaxHeaderValue = math.MaxUint16 // header value
)

// OpenHeader is what a client puts in an OPEN frame before the request
// payload. The OPEN payload layout (all integers big-endian) is:
//
//	u64  timeout in nanoseconds, relative to receipt; 0 = no deadline
//	u16  path length (1..65535),  path bytes
//	u8   codec length,            codec bytes
//	u8   request id length,       request id bytes
//	u8   traceparent length,      traceparent bytes (W3C trace context)
//	u8   header count (0..64), then per header:
//	     u8 key length (1..255), key bytes, u16 value length, value bytes
//	...  the request payload: every remaining byte of the frame
type OpenHeader struct {
	// Path names the endpoint, for example "ns/component/endpoint".
	Path string
	// Codec names the payload encoding, for example "msgpack" or "json".
	Codec string
	// RequestID identifies the request in logs on both sides.
	RequestID string
	// TraceParent is the W3C traceparent of the caller's span, or empty.
	TraceParent string
	// Timeout is the time left before the caller's deadline; 0 means no
	// deadline. It is relative so that clock skew between hosts does not
	// move the deadline.
	Timeout time.Duration
	// Headers are other request metadata. Keys are unique.
	Headers map[string]string
}

// Size validates h and returns the encoded size of its fields, without the
// request payload; see AppendOpen for the errors.
func (h *OpenHeader) Size() (int, error) {
	switch {
	case len(h.Path) == 0:
		return 0, fmt.Errorf("wire: OPEN path is empty")
	case len(h.Path) > MaxPathLen:
		return 0, fmt.Errorf("wire: OPEN path is %d bytes, limit %d", len(h.Path), MaxPathLen)
	case len(h.Codec) > MaxShortField:
		return 0, fmt.Errorf("wire: OPEN codec %q is %d bytes, limit %d", h.Codec, len(h.Codec), MaxShortField)
	case len(h.RequestID) > MaxShortField:
		return 0, fmt.Errorf("wire: OPEN request id is %d bytes, limit %d", len(h.RequestID), MaxShortField)
	case len(h.TraceParent) > MaxShortField:
		return 0, fmt.Errorf("wire: OPEN traceparent is %d bytes, limit %d", len(h.TraceParent), MaxShortField)
	case h.Timeout < 0:
		return 0, fmt.Errorf("wire: OPEN timeout %v is negative (the deadline has passed)", h.Timeout)
	case len(h.Headers) > MaxHeaders:
		return 0, fmt.Errorf("wire: OPEN has %d headers, limit %d", len(h.Headers), MaxHeaders)
	}
	n := 8 + 2 + len(h.Path) + 1 + len(h.Codec) + 1 + len(h.RequestID) + 1 + len(h.TraceParent) + 1
	for k, v := range h.Headers {
		if len(k) == 0 || len(k) > MaxShortField {
			return 0, fmt.Errorf("wire: OPEN header key %q is %d bytes, want 1 to %d", k, len(k), MaxShortField)
		}
		if len(v) > MaxHeaderValue {
			return 0, fmt.Errorf("wire: OPEN header %q value is %d bytes, limit %d", k, len(v), MaxHeaderValue)
		}
		n += 1 + len(k) + 2 + len(v)
	}
	return n, nil
}

// append appends h's fields; h has been validated by Size.
func (h *OpenHeader) append(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, uint64(h.Timeout))
	b = binary.BigEndian.AppendUint16(b, uint16(len(h.Path)))
	b = append(b, h.Path...)
	b = append(b, byte(len(h.Codec)))
	b = append(b, h.Codec...)
	b = append(b, byte(len(h.RequestID)))
	b = append(b, h.RequestID...)
	b = append(b, byte(len(h.TraceParent)))
	b = append(b, h.TraceParent...)
	b = append(b, byte(len(h.Headers)))
	for k, v := range h.Headers {
		b = append(b, byte(len(k)))
		b = append(b, k...)
		b = binary.BigEndian.AppendUint16(b, uint16(len(v)))
		b = append(b, v...)
	}
	return b
}

// AppendOpen appends the payload of an OPEN frame (h's fields, then
// payload) to dst. It returns dst unchanged and an error if h has an empty
// path, a field longer than its limit, a negative timeout, more than
// MaxHeaders headers or an empty header key.
func AppendOpen(dst []byte, h *OpenHeader, payload []byte) ([]byte, error) {
	if _, err := h.Size(); err != nil {
		return dst, err
	}
	return append(h.append(dst), payload...), nil
}

// Open is a parsed OPEN payload. The byte slices its methods return alias
// the payload passed to ParseOpen, and cannot be appended to. A server
// keeps one per stream, so it holds offsets: 56 bytes, where the six
// slices would take 160.
type Open struct {
	Timeout time.Duration // 0: no deadline

	b []byte // the OPEN payload
	// Where each field ends in b. A field starts after the end of the
	// one before and its length prefix: the path at openPathStart, the
	// codec at pathEnd+1, the request id at codecEnd+1, the traceparent
	// at idEnd+1, the headers at tpEnd+1 (the header count is at
	// tpEnd). The request follows the headers.
	pathEnd, codecEnd, idEnd, tpEnd, hdrEnd uint32
	numHeaders                              uint8
}

// openPathStart is where an OPEN's path starts: after the timeout (8
// bytes) and the path's length (2).
const openPathStart = 10

func (o *Open) field(start, end uint32) []byte { return o.b[start:end:end] }

// Path returns the endpoint path.
func (o *Open) Path() []byte { return o.field(openPathStart, o.pathEnd) }

// Codec returns the payload encoding's name, or nothing.
func (o *Open) Codec() []byte { return o.field(o.pathEnd+1, o.codecEnd) }

// RequestID returns the request id, or nothing.
func (o *Open) RequestID() []byte { return o.field(o.codecEnd+1, o.idEnd) }

// TraceParent returns the W3C traceparent, or nothing.
func (o *Open) TraceParent() []byte { return o.field(o.idEnd+1, o.tpEnd) }

// Payload returns the request.
func (o *Open) Payload() []byte { return o.field(o.hdrEnd, uint32(len(o.b))) }

// NumHeaders returns the number of headers.
func (o *Open) NumHeaders() int { return int(o.numHeaders) }

// Header returns the value of the header named key.
func (o *Open) Header(key string) ([]byte, bool) {
	for k, v := range o.Headers() {
		if string(k) == key {
			return v, true
		}
	}
	return nil, false
}

// Headers iterates over the headers in wire order.
func (o *Open) Headers() iter.Seq2[[]byte, []byte] {
	return func(yield func(k, v []byte) bool) {
		b := o.field(o.tpEnd+1, o.hdrEnd)
		for range o.numHeaders {
			kl := int(b[0])
			k := b[1 : 1+kl]
			b = b[1+kl:]
			vl := int(binary.BigEndian.Uint16(b))
			v := b[2 : 2+vl]
			b = b[2+vl:]
			if !yield(k, v) {
				return
			}
		}
	}
}

// openParser walks an OPEN payload.
type openParser struct {
	b   []byte
	off int
	err error
}

func (p *openParser) need(n int, what string) bool {
	if p.err != nil {
		return false
	}
	if len(p.b)-p.off < n {
		p.err = protoErr("OPEN payload truncated in %s at byte %d: need %d bytes, have %d", what, p.off, n, len(p.b)-p.off)
		return false
	}
	return true
}

func (p *openParser) u8(what string) int {
	if !p.need(1, what) {
		return 0
	}
	p.off++
	return int(p.b[p.off-1])
}

func (p *openParser) u16(what string) int {
	if !p.need(2, what) {
		return 0
	}
	p.off += 2
	return int(binary.BigEndian.Uint16(p.b[p.off-2:]))
}

func (p *openParser) bytes(n int, what string) []byte {
	if !p.need(n, what) {
		return nil
	}
	p.off += n
	return p.b[p.off-n : p.off : p.off]
}

// skip passes over a field of n bytes and returns where it ends.
func (p *openParser) skip(n int, what string) uint32 {
	if p.bytes(n, what); p.err != nil {
		return 0
	}
	return uint32(p.off)
}

// ParseOpen parses the payload of an OPEN frame without allocating. It
// rejects, with an error that wraps ErrProtocol and names the field, a
// truncated field, an empty path, a timeout above math.MaxInt64
// nanoseconds, more than MaxHeaders headers, an empty or duplicate header
// key.
func ParseOpen(b []byte) (Open, error) {
	var o Open
	if uint64(len(b)) > math.MaxUint32 {
		return o, protoErr("OPEN payload of %d bytes is above the largest frame", len(b))
	}
	p := openParser{b: b}
	if p.need(8, "timeout") {
		t := binary.BigEndian.Uint64(b)
		if t > math.MaxInt64 {
			return o, protoErr("OPEN timeout %d ns is above the maximum %d", t, int64(math.MaxInt64))
		}
		o.Timeout = time.Duration(t)
		p.off = 8
	}
	o.pathEnd = p.skip(p.u16("path length"), "path")
	if p.err == nil && o.pathEnd == openPathStart {
		return o, protoErr("OPEN path is empty")
	}
	o.codecEnd = p.skip(p.u8("codec length"), "codec")
	o.idEnd = p.skip(p.u8("request id length"), "request id")
	o.tpEnd = p.skip(p.u8("traceparent length"), "traceparent")
	n := p.u8("header count")
	if n > MaxHeaders {
		return o, protoErr("OPEN has %d headers, limit %d", n, MaxHeaders)
	}
	start := p.off
	for i := 0; i < n && p.err == nil; i++ {
		kl := p.u8("header key length")
		if p.err == nil && kl == 0 {
			return o, protoErr("OPEN header %d has an empty key", i)
		}
		k := p.bytes(kl, "header key")
		p.bytes(p.u16("header value length"), "header value")
		if p.err != nil {
			break
		}
		// Keys are few and short: a quadratic scan beats a map here.
		for j, q := start, 0; q < i; q++ {
			ql := int(b[j])
			if bytes.Equal(b[j+1:j+1+ql], k) {
				return o, protoErr("OPEN header key %q appears twice", k)
			}
			j += 1 + ql
			j += 2 + int(binary.BigEndian.Uint16(b[j:]))
		}
	}
	if p.err != nil {
		return o, p.err
	}
	o.b, o.hdrEnd, o.numHeaders = b, uint32(p.off), uint8(n)
	return o, nil
}
