// Package zmtp speaks ZMTP 3 (the ZeroMQ wire protocol, rfc.zeromq.org
// spec 23 and 37) with the NULL security mechanism, for the socket types of
// publish / subscribe: PUB, SUB, XPUB and XSUB. It interoperates with
// libzmq (tested against it) and is what Loom's ZeroMQ event transport and
// its XSUB / XPUB broker run on.
//
// It is Loom's own rather than a dependency because the pure-Go libraries
// on the module proxy did not pass Loom's rules for network code: the usual
// one (github.com/go-zeromq/zmq4 v0.17.0) allocates whatever frame length a
// peer announces (a 9-byte hostile frame asks for up to 2^63 bytes), writes
// each frame with two unbuffered syscalls, queues without bound on a PUB
// socket by default and drops silently when a high-water mark is set, lets
// one slow subscriber stall every other, and leaves goroutines behind after
// Close. This package bounds every allocation by a configured maximum,
// batches writes with writev, gives each peer its own bounded queue whose
// drops are counted, and owns every goroutine it starts.
package zmtp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// SocketType is a ZeroMQ socket type, as sent in the READY command.
type SocketType string

// The socket types this package speaks.
const (
	PUB  SocketType = "PUB"
	SUB  SocketType = "SUB"
	XPUB SocketType = "XPUB"
	XSUB SocketType = "XSUB"
)

// publishes reports whether t sends messages (PUB, XPUB) rather than
// subscriptions (SUB, XSUB).
func (t SocketType) publishes() bool { return t == PUB || t == XPUB }

// compatible reports whether a socket of type a may talk to one of type b.
func compatible(a, b SocketType) bool {
	switch a {
	case PUB, XPUB:
		return b == SUB || b == XSUB
	case SUB, XSUB:
		return b == PUB || b == XPUB
	}
	return false
}

// Frame flag bits (spec 23, "Framing").
const (
	flagMore    = 0x01
	flagLong    = 0x02
	flagCommand = 0x04
)

// Limits a Reader applies when none are given.
const (
	// DefaultMaxMessage bounds the bytes of one message's frames.
	DefaultMaxMessage = 4 << 20
	// MaxFrames bounds the frames of one message; pub/sub messages in
	// Loom have two.
	MaxFrames = 64
	// maxCommand bounds a command frame (READY, SUBSCRIBE, PING...).
	maxCommand = 64 << 10
)

// Errors a peer can cause.
var (
	// ErrProtocol wraps every violation of ZMTP by a peer.
	ErrProtocol = errors.New("zmtp: protocol error")
	// ErrTooLarge reports a message above the reader's limit.
	ErrTooLarge = errors.New("zmtp: message too large")
)

func protoErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrProtocol}, args...)...)
}

// greetingSize is the length of the ZMTP 3 greeting.
const greetingSize = 64

// greeting is what this package sends: signature, version 3.0, mechanism
// NULL, as-server 0, filler. Version 3.0 makes libzmq send subscriptions
// as messages, which every ZMTP 3 peer understands; 3.1 commands are
// accepted too.
var greeting = func() (g [greetingSize]byte) {
	g[0] = 0xFF
	g[8] = 0x01 // padding; libzmq sends 1 here for ZMTP 1.0 peers
	g[9] = 0x7F
	g[10], g[11] = 3, 0
	copy(g[12:32], "NULL")
	return g
}()

// parseGreeting checks a peer's greeting.
func parseGreeting(g []byte) error {
	if len(g) != greetingSize {
		return protoErr("greeting of %d bytes, want %d", len(g), greetingSize)
	}
	if g[0] != 0xFF || g[9]&0x01 != 0x01 {
		return protoErr("peer did not send a ZMTP signature (first bytes %x); is it a ZeroMQ socket?", g[:10])
	}
	if g[10] < 3 {
		return protoErr("peer speaks ZMTP %d.%d; this needs 3.0 or newer (libzmq 4 or newer)", g[10], g[11])
	}
	mech := string(bytes.TrimRight(g[12:32], "\x00"))
	if mech != "NULL" {
		return protoErr("peer asks for security mechanism %q; only NULL is supported", mech)
	}
	return nil
}

// AppendReady appends a READY command announcing socket type t.
func AppendReady(dst []byte, t SocketType) []byte {
	body := make([]byte, 0, 32)
	body = append(body, 5)
	body = append(body, "READY"...)
	body = appendProperty(body, "Socket-Type", string(t))
	return appendFrame(dst, flagCommand, body)
}

func appendProperty(dst []byte, name, value string) []byte {
	dst = append(dst, byte(len(name)))
	dst = append(dst, name...)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(value)))
	return append(dst, value...)
}

// Command is a parsed command frame.
type Command struct {
	Name string
	Data []byte // aliases the frame
}

// ParseCommand splits a command frame's body into its name and data.
func ParseCommand(body []byte) (Command, error) {
	if len(body) < 1 || int(body[0]) > len(body)-1 || body[0] == 0 {
		return Command{}, protoErr("command frame of %d bytes has no valid name", len(body))
	}
	n := int(body[0])
	return Command{Name: string(body[1 : 1+n]), Data: body[1+n:]}, nil
}

// ParseProperties parses the metadata of a READY command: name-size (1
// byte), name, value-size (4 bytes, big endian), value, repeated.
func ParseProperties(data []byte) (map[string]string, error) {
	props := make(map[string]string)
	for len(data) > 0 {
		n := int(data[0])
		if n == 0 || len(data) < 1+n+4 {
			return nil, protoErr("READY property truncated")
		}
		name := string(data[1 : 1+n])
		data = data[1+n:]
		vlen := binary.BigEndian.Uint32(data)
		data = data[4:]
		if uint64(vlen) > uint64(len(data)) {
			return nil, protoErr("READY property %q claims %d bytes, %d remain", name, vlen, len(data))
		}
		props[strings.ToLower(name)] = string(data[:vlen])
		data = data[vlen:]
	}
	return props, nil
}

// appendFrame appends one frame with the given flags (the LONG bit is
// set here when needed).
func appendFrame(dst []byte, flags byte, body []byte) []byte {
	if len(body) > 255 {
		dst = append(dst, flags|flagLong)
		dst = binary.BigEndian.AppendUint64(dst, uint64(len(body)))
	} else {
		dst = append(dst, flags, byte(len(body)))
	}
	return append(dst, body...)
}

// AppendMessage appends the wire form of a message made of parts (at least
// one).
func AppendMessage(dst []byte, parts ...[]byte) []byte {
	for i, p := range parts {
		var flags byte
		if i < len(parts)-1 {
			flags = flagMore
		}
		dst = appendFrame(dst, flags, p)
	}
	return dst
}

// MessageSize returns the wire size of a message made of parts.
func MessageSize(parts ...[]byte) int {
	n := 0
	for _, p := range parts {
		n += 2 + len(p)
		if len(p) > 255 {
			n += 7
		}
	}
	return n
}

// AppendSubscription appends the ZMTP 3.0 form of a subscription (on) or
// its cancellation: a one-frame message, 1 or 0, then the prefix.
func AppendSubscription(dst []byte, prefix []byte, on bool) []byte {
	body := make([]byte, 0, 1+len(prefix))
	if on {
		body = append(body, 1)
	} else {
		body = append(body, 0)
	}
	body = append(body, prefix...)
	return appendFrame(dst, 0, body)
}

// Reader reads messages and commands from a ZMTP connection after the
// handshake. It is not safe for concurrent use.
type Reader struct {
	r          *readBuffer
	maxMessage int
	buf        []byte
	parts      [][]byte
}

// NewReader returns a Reader on r that refuses messages above maxMessage
// bytes (DefaultMaxMessage if maxMessage <= 0).
func NewReader(r io.Reader, maxMessage int) *Reader {
	if maxMessage <= 0 {
		maxMessage = DefaultMaxMessage
	}
	br, ok := r.(*readBuffer)
	if !ok {
		br = &readBuffer{rd: r}
	}
	return &Reader{r: br, maxMessage: maxMessage}
}

// Next reads the next message or command. For a command, parts holds its
// one frame and cmd is true. The parts alias a buffer the next call
// reuses: copy what must outlive it. A peer that breaks the protocol or
// exceeds the limits gets an error wrapping ErrProtocol or ErrTooLarge;
// the connection should then be closed.
func (r *Reader) Next() (parts [][]byte, cmd bool, err error) {
	r.buf = r.buf[:0]
	r.parts = r.parts[:0]
	var bounds [MaxFrames + 1]int
	nframes := 0
	for {
		flags, err := r.r.ReadByte()
		if err != nil {
			return nil, false, r.eof(err, nframes)
		}
		if flags&^(flagMore|flagLong|flagCommand) != 0 {
			return nil, false, protoErr("frame flags %#x have reserved bits set", flags)
		}
		isCmd := flags&flagCommand != 0
		if isCmd && (nframes > 0 || flags&flagMore != 0) {
			return nil, false, protoErr("a command frame inside a multipart message")
		}
		var size uint64
		if flags&flagLong != 0 {
			var b [8]byte
			if _, err := io.ReadFull(r.r, b[:]); err != nil {
				return nil, false, r.eof(err, 1)
			}
			size = binary.BigEndian.Uint64(b[:])
		} else {
			b, err := r.r.ReadByte()
			if err != nil {
				return nil, false, r.eof(err, 1)
			}
			size = uint64(b)
		}
		limit := uint64(r.maxMessage - len(r.buf))
		if isCmd {
			limit = maxCommand
		}
		if size > limit {
			if isCmd {
				return nil, false, fmt.Errorf("%w: command frame of %d bytes (limit %d)", ErrTooLarge, size, maxCommand)
			}
			return nil, false, fmt.Errorf("%w: message of at least %d bytes (limit %d)", ErrTooLarge, uint64(len(r.buf))+size, r.maxMessage)
		}
		start := len(r.buf)
		if err := r.readFrame(int(size)); err != nil {
			return nil, false, r.eof(err, 1)
		}
		nframes++
		bounds[nframes] = len(r.buf)
		if isCmd {
			r.parts = append(r.parts, r.buf[start:])
			return r.parts, true, nil
		}
		if flags&flagMore == 0 {
			break
		}
		if nframes == MaxFrames {
			return nil, false, protoErr("message of more than %d frames", MaxFrames)
		}
	}
	for i := range nframes {
		r.parts = append(r.parts, r.buf[bounds[i]:bounds[i+1]])
	}
	return r.parts, false, nil
}

// readStep is how far the buffer grows ahead of the bytes of a frame that
// have arrived, at first; after that it at most doubles.
const readStep = 64 << 10

// readFrame appends the next n bytes to r.buf. The buffer grows as they
// arrive, not to n at once: a peer that announces a frame at the limit
// and sends a few bytes of it costs those bytes and at most readStep.
func (r *Reader) readFrame(n int) error {
	end := len(r.buf) + n
	for len(r.buf) < end {
		at := len(r.buf)
		step := end - at
		if cap(r.buf)-at < step {
			step = min(step, max(readStep, at))
		}
		r.buf = grow(r.buf, step)
		if _, err := io.ReadFull(r.r, r.buf[at:]); err != nil {
			return err
		}
	}
	return nil
}

// eof turns an EOF inside a message into io.ErrUnexpectedEOF.
func (r *Reader) eof(err error, inMessage int) error {
	if err == io.EOF && inMessage > 0 {
		return io.ErrUnexpectedEOF
	}
	return err
}

// grow extends b by n bytes, reallocating at most to what is needed.
func grow(b []byte, n int) []byte {
	if cap(b)-len(b) >= n {
		return b[:len(b)+n]
	}
	nb := make([]byte, len(b)+n, max(2*cap(b), len(b)+n, 512))
	copy(nb, b)
	return nb
}

// Handshake exchanges greetings and READY commands on c as a socket of
// type self, and returns the peer's type and a Reader for what follows,
// limited to maxMessage bytes per message. It fails if the peer is not a
// ZMTP 3 peer with the NULL mechanism, or its type cannot talk to self.
// The handshake must finish within timeout.
func Handshake(c net.Conn, self SocketType, maxMessage int, timeout time.Duration) (peer SocketType, r *Reader, err error) {
	if timeout > 0 {
		_ = c.SetDeadline(time.Now().Add(timeout))
		defer c.SetDeadline(time.Time{})
	}
	out := append(greeting[:], AppendReady(nil, self)...)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(out)
		werr <- err
	}()
	peer, r, err = readHandshake(c, maxMessage)
	if err != nil {
		// Unblock the writer before waiting for it.
		_ = c.SetDeadline(time.Unix(1, 0))
		<-werr
		return "", nil, err
	}
	if err := <-werr; err != nil {
		return "", nil, fmt.Errorf("zmtp: send greeting: %w", err)
	}
	if err := checkPeer(self, peer); err != nil {
		return "", nil, err
	}
	return peer, r, nil
}

// checkPeer fails if a peer of type peer cannot talk to a socket of type
// self.
func checkPeer(self, peer SocketType) error {
	if !compatible(self, peer) {
		return protoErr("peer is a %s socket; a %s socket cannot talk to it", peer, self)
	}
	return nil
}

// readHandshake reads a peer's greeting and READY command from rd (the
// parsing half of Handshake, which tests and fuzzing run on bytes in
// memory), and returns the peer's type and a Reader for what follows,
// limited to maxMessage bytes per message.
func readHandshake(rd io.Reader, maxMessage int) (SocketType, *Reader, error) {
	// The buffer starts small: a peer in the handshake has sent at most
	// a greeting and a READY.
	br := &readBuffer{rd: rd}
	var g [greetingSize]byte
	if _, err := io.ReadFull(br, g[:]); err != nil {
		return "", nil, fmt.Errorf("zmtp: read greeting: %w", err)
	}
	if err := parseGreeting(g[:]); err != nil {
		return "", nil, err
	}
	r := NewReader(br, maxCommand)
	parts, cmd, err := r.Next()
	if err != nil {
		return "", nil, fmt.Errorf("zmtp: read READY: %w", err)
	}
	if !cmd {
		return "", nil, protoErr("peer sent a message before READY")
	}
	peer, err := ParseReady(parts[0])
	if err != nil {
		return "", nil, err
	}
	r.maxMessage = maxMessage
	if maxMessage <= 0 {
		r.maxMessage = DefaultMaxMessage
	}
	return peer, r, nil
}

// ParseReady parses a READY command frame and returns the socket type it
// announces; an ERROR command becomes an error with its reason.
func ParseReady(body []byte) (SocketType, error) {
	c, err := ParseCommand(body)
	if err != nil {
		return "", err
	}
	switch c.Name {
	case "READY":
	case "ERROR":
		reason := c.Data
		if len(reason) > 0 && int(reason[0]) <= len(reason)-1 {
			reason = reason[1 : 1+int(reason[0])]
		}
		return "", protoErr("peer refused the handshake: %q", reason)
	default:
		return "", protoErr("peer sent %q instead of READY", c.Name)
	}
	props, err := ParseProperties(c.Data)
	if err != nil {
		return "", err
	}
	t, ok := props["socket-type"]
	if !ok {
		return "", protoErr("READY without Socket-Type")
	}
	return SocketType(t), nil
}
