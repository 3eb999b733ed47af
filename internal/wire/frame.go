package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"unicode/utf8"
)

// Version is the protocol version this package speaks.
const Version = 1

// Magic is the first four bytes of every connection, from either side.
const Magic = "LOOM"

// PrefaceSize is the size in bytes of a [Preface] on the wire.
const PrefaceSize = 14

// HeaderSize is the size in bytes of a frame header.
const HeaderSize = 10

// Limits on the settings a peer may announce in its preface.
const (
	// MinMaxFrameSize is the smallest maximum frame size a peer may
	// announce; every control frame fits in it.
	MinMaxFrameSize = 4 << 10
	// MaxMaxFrameSize is the largest maximum frame size a peer may
	// announce.
	MaxMaxFrameSize = 1 << 30
	// DefaultMaxFrameSize is the maximum frame size used when none is
	// configured.
	DefaultMaxFrameSize = 4 << 20
	// MaxWindow is the largest per-stream credit a receiver may grant,
	// in the preface or in total after CREDIT frames.
	MaxWindow = 1<<31 - 1
	// MaxMessageLen is the longest END message or GOAWAY reason; the
	// Writer truncates longer ones.
	MaxMessageLen = 1024
	// MaxStreamID is the largest stream id; a client that has used it
	// opens further streams on a new connection.
	MaxStreamID = 1<<31 - 1
)

// ErrProtocol is wrapped by every error that reports a peer breaking the
// protocol: a malformed frame, a bad preface, an oversized length.
var ErrProtocol = errors.New("wire: protocol error")

// protoErr returns an error that wraps ErrProtocol.
func protoErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrProtocol}, args...)...)
}

// VersionError reports a preface with a protocol version this side does not
// speak. It wraps ErrProtocol.
type VersionError struct {
	Got uint8 // the version the peer announced
}

func (e *VersionError) Error() string {
	return fmt.Sprintf("wire: peer speaks protocol version %d, this side speaks version %d (upgrade the older side)", e.Got, Version)
}

// Unwrap returns ErrProtocol.
func (e *VersionError) Unwrap() error { return ErrProtocol }

// Preface is what each side sends first on a connection: the magic bytes,
// the protocol version and the sender's receive settings.
//
// Bytes 0-4 (magic and version) keep their meaning in every future
// version; the rest is defined by the version.
type Preface struct {
	// Version is the protocol version; Version for this package.
	Version uint8
	// MaxFrameSize is the largest frame payload the sender accepts.
	MaxFrameSize uint32
	// InitialWindow is the credit in bytes the sender grants to every
	// stream for the DATA frames it receives on that stream; it may be 0
	// (the sender grants all credit with CREDIT frames). In version 1 only
	// servers send DATA, so a server announces 0.
	InitialWindow uint32
}

// AppendPreface appends p in wire form to dst.
func AppendPreface(dst []byte, p Preface) []byte {
	dst = append(dst, Magic...)
	dst = append(dst, p.Version, 0)
	dst = binary.BigEndian.AppendUint32(dst, p.MaxFrameSize)
	return binary.BigEndian.AppendUint32(dst, p.InitialWindow)
}

// ParsePreface parses a preface from the first PrefaceSize bytes of b. It
// checks the magic first, then the version (a *VersionError), then the
// settings.
func ParsePreface(b []byte) (Preface, error) {
	if len(b) < PrefaceSize {
		return Preface{}, protoErr("preface truncated: %d of %d bytes", len(b), PrefaceSize)
	}
	if string(b[:4]) != Magic {
		return Preface{}, protoErr("not a Loom connection: preface starts with %q, want %q", b[:4], Magic)
	}
	p := Preface{
		Version:       b[4],
		MaxFrameSize:  binary.BigEndian.Uint32(b[6:]),
		InitialWindow: binary.BigEndian.Uint32(b[10:]),
	}
	if p.Version != Version {
		return p, &VersionError{Got: p.Version}
	}
	if b[5] != 0 {
		return p, protoErr("preface reserved byte is 0x%02x, want 0", b[5])
	}
	if p.MaxFrameSize < MinMaxFrameSize || p.MaxFrameSize > MaxMaxFrameSize {
		return p, protoErr("preface max frame size %d outside [%d, %d]", p.MaxFrameSize, MinMaxFrameSize, MaxMaxFrameSize)
	}
	if p.InitialWindow > MaxWindow {
		return p, protoErr("preface initial window %d above the maximum %d", p.InitialWindow, MaxWindow)
	}
	return p, nil
}

// ReadPreface reads and parses a preface from r.
func ReadPreface(r io.Reader) (Preface, error) {
	var b [PrefaceSize]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return Preface{}, protoErr("connection closed inside the preface")
		}
		return Preface{}, err
	}
	return ParsePreface(b[:])
}

// Type is a frame type.
type Type uint8

// Frame types. The direction says who may send it; a frame sent the other
// way is a protocol error.
const (
	// TypeOpen opens a stream (client to server). The payload is an
	// OPEN header followed by the whole request; see [ParseOpen].
	TypeOpen Type = 0x1
	// TypeData carries one response message (server to client).
	TypeData Type = 0x2
	// TypeEnd ends a stream (server to client): u16 code, then a UTF-8
	// message. Code 0 (CodeOK) is success.
	TypeEnd Type = 0x3
	// TypeCancel asks the server to stop (FlagStop) or kill (FlagKill) a
	// stream (client to server). Empty payload.
	TypeCancel Type = 0x4
	// TypeCredit grants the server more bytes of DATA on a stream
	// (client to server): u32 increment.
	TypeCredit Type = 0x5
	// TypePing asks the peer to answer with a PONG carrying the same 8
	// opaque bytes (either direction, stream 0).
	TypePing Type = 0x6
	// TypePong answers a PING (either direction, stream 0).
	TypePong Type = 0x7
	// TypeGoAway says the sender is draining (server to client, stream
	// 0): u32 last accepted stream id, u16 code, UTF-8 reason.
	TypeGoAway Type = 0x8
)

const maxType = TypeGoAway

var typeNames = [...]string{"", "OPEN", "DATA", "END", "CANCEL", "CREDIT", "PING", "PONG", "GOAWAY"}

func (t Type) String() string {
	if t >= 1 && t <= maxType {
		return typeNames[t]
	}
	return "type(0x" + strconv.FormatUint(uint64(t), 16) + ")"
}

// Flags holds a frame's flag bits. Only CANCEL defines flags in version 1;
// other frames must carry 0.
type Flags uint8

// CANCEL flags; exactly one of them is set.
const (
	// FlagStop asks the handler to finish gracefully: it sees Stopped()
	// and ends the stream normally.
	FlagStop Flags = 0x1
	// FlagKill drops the stream now: the handler's context is cancelled
	// and neither side sends another frame on the stream.
	FlagKill Flags = 0x2
)

// Frame is one parsed frame. Payload aliases the Reader's buffer.
type Frame struct {
	Type    Type
	Flags   Flags
	Stream  uint32
	Payload []byte
}

// Code is the status that ends a stream, carried by END and GOAWAY. The
// values are part of the protocol and never change meaning.
type Code uint16

// Status codes.
const (
	// CodeOK: the stream ended successfully.
	CodeOK Code = 0
	// CodeApplication: the handler returned an error; the message is
	// the error's text.
	CodeApplication Code = 1
	// CodeNotFound: no such endpoint on this instance.
	CodeNotFound Code = 2
	// CodeOverloaded: the server refused the stream because it is at
	// capacity. Nothing was run; retry, preferably elsewhere.
	CodeOverloaded Code = 3
	// CodeDraining: the server is shutting down and refused the stream.
	// Nothing was run; retry elsewhere.
	CodeDraining Code = 4
	// CodeCancelled: the stream was cancelled by the caller.
	CodeCancelled Code = 5
	// CodeDeadlineExceeded: the deadline passed before the stream ended.
	CodeDeadlineExceeded Code = 6
	// CodeInternal: the handler panicked or the server failed.
	CodeInternal Code = 7
	// CodeProtocol: a peer broke the protocol.
	CodeProtocol Code = 8
	// CodeBadRequest: the request could not be decoded.
	CodeBadRequest Code = 9
	// CodeReset: the stream was reset, for example because its
	// connection was lost.
	CodeReset Code = 10
	// CodeRefused: an interceptor refused the request before the handler
	// ran (authentication, a rate limit); the message is "reason: text".
	CodeRefused Code = 11
	// CodeTooLarge: a response item was larger than the caller accepts
	// (its max frame size, or the NATS max payload); the handler ran.
	CodeTooLarge Code = 12
)

var codeNames = [...]string{"OK", "Application", "NotFound", "Overloaded", "Draining", "Cancelled", "DeadlineExceeded", "Internal", "Protocol", "BadRequest", "Reset", "Refused", "TooLarge"}

func (c Code) String() string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return "Code(" + strconv.Itoa(int(c)) + ")"
}

// Retryable reports whether a stream that ended with c was refused before
// running, so it is safe to send again (to another instance).
func (c Code) Retryable() bool { return c == CodeOverloaded || c == CodeDraining }

// ParseEnd parses the payload of an END frame. A message longer than
// MaxMessageLen is cut at a UTF-8 boundary, as the Writer cuts it.
func ParseEnd(p []byte) (Code, []byte, error) {
	if len(p) < 2 {
		return 0, nil, protoErr("END payload is %d bytes, want at least 2", len(p))
	}
	return Code(binary.BigEndian.Uint16(p)), truncateBytes(p[2:]), nil
}

// ParseCredit parses the payload of a CREDIT frame. A zero increment is a
// protocol error.
func ParseCredit(p []byte) (uint32, error) {
	if len(p) != 4 {
		return 0, protoErr("CREDIT payload is %d bytes, want 4", len(p))
	}
	n := binary.BigEndian.Uint32(p)
	if n == 0 || n > MaxWindow {
		return 0, protoErr("CREDIT increment %d outside [1, %d]", n, MaxWindow)
	}
	return n, nil
}

// ParseGoAway parses the payload of a GOAWAY frame. A reason longer than
// MaxMessageLen is cut at a UTF-8 boundary, as the Writer cuts it.
func ParseGoAway(p []byte) (last uint32, code Code, reason []byte, err error) {
	if len(p) < 6 {
		return 0, 0, nil, protoErr("GOAWAY payload is %d bytes, want at least 6", len(p))
	}
	return binary.BigEndian.Uint32(p), Code(binary.BigEndian.Uint16(p[4:])), truncateBytes(p[6:]), nil
}

// truncateBytes cuts b to at most MaxMessageLen bytes without splitting a
// UTF-8 sequence: a peer's message, which a receiver logs or hands on,
// costs no more than the protocol allows however long the frame.
func truncateBytes(b []byte) []byte {
	if len(b) <= MaxMessageLen {
		return b
	}
	i := MaxMessageLen
	for i > 0 && !utf8.RuneStart(b[i]) {
		i--
	}
	return b[:i:i]
}

// checkHeader validates the parts of a frame header that do not depend on
// the payload's content: the type, the flags, the stream id rules and the
// fixed payload sizes.
func checkHeader(t Type, f Flags, stream uint32, n uint32) error {
	switch t {
	case TypeOpen, TypeData, TypeEnd, TypeCancel, TypeCredit:
		if stream == 0 {
			return protoErr("%v frame on stream 0", t)
		}
		if stream > MaxStreamID {
			return protoErr("%v frame on stream %d, above the largest stream id %d", t, stream, MaxStreamID)
		}
	case TypePing, TypePong, TypeGoAway:
		if stream != 0 {
			return protoErr("%v frame on stream %d, want stream 0", t, stream)
		}
	default:
		return protoErr("unknown frame type 0x%02x on stream %d", uint8(t), stream)
	}
	if t == TypeCancel {
		if f != FlagStop && f != FlagKill {
			return protoErr("CANCEL on stream %d has flags 0x%02x, want exactly one of stop (0x1) or kill (0x2)", stream, uint8(f))
		}
	} else if f != 0 {
		return protoErr("%v frame on stream %d has flags 0x%02x, want 0", t, stream, uint8(f))
	}
	var want, min uint32 = 0, 0
	fixed := true
	switch t {
	case TypeCancel:
		want = 0
	case TypeCredit:
		want = 4
	case TypePing, TypePong:
		want = 8
	case TypeEnd:
		fixed, min = false, 2
	case TypeGoAway:
		fixed, min = false, 6
	default:
		fixed = false
	}
	if fixed && n != want {
		return protoErr("%v frame payload is %d bytes, want %d", t, n, want)
	}
	if !fixed && n < min {
		return protoErr("%v frame payload is %d bytes, want at least %d", t, n, min)
	}
	return nil
}

// protoErrWrap returns an error that wraps both ErrProtocol and cause.
func protoErrWrap(cause error, format string, args ...any) error {
	return fmt.Errorf("%w: "+format+": %w", append(append([]any{ErrProtocol}, args...), cause)...)
}
