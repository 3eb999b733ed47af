package natsplane

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/internal/wire"
)

// Version is the version of the message layout this package speaks; a
// request carries it in Loom-Version.
const Version = 1

// MessageOverhead is what every response message costs in credit on top of
// its payload bytes, so that empty messages are flow controlled too.
const MessageOverhead = 64

// Header names. NATS header keys are case-sensitive; these are sent and
// matched exactly as written.
const (
	hdrKind      = "Loom-Kind"
	hdrVersion   = "Loom-Version"
	hdrPath      = "Loom-Path"
	hdrCodec     = "Loom-Codec"
	hdrRequestID = "Loom-Request-Id"
	hdrTrace     = "Loom-Traceparent"
	hdrTimeout   = "Loom-Timeout"
	hdrHeartbeat = "Loom-Heartbeat"
	hdrInbox     = "Loom-Inbox"
	hdrStream    = "Loom-Stream"
	hdrCredit    = "Loom-Credit"
	hdrSeq       = "Loom-Seq"
	hdrCode      = "Loom-Code"
	hdrMessage   = "Loom-Message"
	hdrServer    = "Loom-Server"
	hdrUser      = "Loom-H-" // prefix of the caller's own request headers

	hdrStatus = "Status" // set by nats.go from a status line ("503" = no responders)
)

// Message kinds, the value of Loom-Kind.
const (
	kindOpen      = "open"
	kindData      = "data"
	kindEnd       = "end"
	kindHeartbeat = "hb"
	kindStop      = "stop"
	kindKill      = "kill"
	kindCredit    = "credit"
	kindPong      = "pong"
)

// Shared header values: nats.go only reads them.
var (
	valData      = []string{kindData}
	valEnd       = []string{kindEnd}
	valHeartbeat = []string{kindHeartbeat}
	valOpen      = []string{kindOpen}
	valVersion   = []string{strconv.Itoa(Version)}
)

// errBadMessage is wrapped by every parse error of a message from the
// network.
var errBadMessage = errors.New("natsplane: malformed message")

func badMsg(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errBadMessage}, args...)...)
}

// hdrSize is the encoded size of a header block as nats.go writes it, for
// headers whose values need no trimming (escape guarantees that).
func hdrSize(h nats.Header) int {
	if len(h) == 0 {
		return 0
	}
	n := len("NATS/1.0\r\n") + 2
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + 2 + len(v) + 2
		}
	}
	return n
}

// dataHeaderMax bounds the header block of a DATA message.
const dataHeaderMax = len("NATS/1.0\r\n") + 2 + len(hdrKind) + 4 + len(kindData) + len(hdrSeq) + 4 + 20

// Escaping. NATS header values may not hold CR or LF and lose leading and
// trailing white space; keys are limited to printable ASCII without
// `"(),/:;<=>?@[\]{}`. Loom's strings are arbitrary bytes, so values and
// the keys of the caller's headers are escaped: each byte that could not
// travel becomes %XX (upper-case hex), as does '%' itself.

const hexDigits = "0123456789ABCDEF"

// valueNeedsEscape reports whether byte c at position i of a value of
// length n must be escaped.
func valueNeedsEscape(c byte, i, n int) bool {
	return c < 0x20 || c == 0x7f || c == '%' || (c == ' ' && (i == 0 || i == n-1))
}

// keyNeedsEscape reports whether byte c must be escaped in a header key.
func keyNeedsEscape(c byte) bool {
	if c <= ' ' || c >= 0x7f || c == '%' {
		return true
	}
	return strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0
}

func escapeValue(s string) string {
	return escape(s, func(c byte, i int) bool { return valueNeedsEscape(c, i, len(s)) })
}

func escapeKey(s string) string {
	return escape(s, func(c byte, _ int) bool { return keyNeedsEscape(c) })
}

func escape(s string, need func(c byte, i int) bool) string {
	n := 0
	for i := 0; i < len(s); i++ {
		if need(s[i], i) {
			n++
		}
	}
	if n == 0 {
		return s
	}
	b := make([]byte, 0, len(s)+2*n)
	for i := 0; i < len(s); i++ {
		if c := s[i]; need(c, i) {
			b = append(b, '%', hexDigits[c>>4], hexDigits[c&15])
		} else {
			b = append(b, c)
		}
	}
	return string(b)
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// unescape reverses escapeValue and escapeKey. It accepts lower-case hex
// and any byte escaped, and fails on a '%' not followed by two hex digits.
func unescape(s string) (string, error) {
	i := strings.IndexByte(s, '%')
	if i < 0 {
		return s, nil
	}
	b := make([]byte, 0, len(s))
	b = append(b, s[:i]...)
	for ; i < len(s); i++ {
		c := s[i]
		if c != '%' {
			b = append(b, c)
			continue
		}
		if i+2 >= len(s) {
			return "", badMsg("truncated escape %q at byte %d", s[i:], i)
		}
		hi, ok1 := unhex(s[i+1])
		lo, ok2 := unhex(s[i+2])
		if !ok1 || !ok2 {
			return "", badMsg("bad escape %q at byte %d", s[i:i+3], i)
		}
		b = append(b, hi<<4|lo)
		i += 2
	}
	return string(b), nil
}

// one returns the single value of header key: "" if absent, an error if
// it is repeated.
func one(h nats.Header, key string) (string, error) {
	vs := h[key]
	switch len(vs) {
	case 0:
		return "", nil
	case 1:
		return vs[0], nil
	}
	return "", badMsg("header %s given %d times", key, len(vs))
}

// text returns the unescaped value of header key, at most limit bytes.
func text(h nats.Header, key string, limit int) (string, error) {
	v, err := one(h, key)
	if err != nil || v == "" {
		return "", err
	}
	s, err := unescape(v)
	if err != nil {
		return "", fmt.Errorf("header %s: %w", key, err)
	}
	if len(s) > limit {
		return "", badMsg("header %s is %d bytes, limit %d", key, len(s), limit)
	}
	return s, nil
}

// number returns the decimal value of header key; ok is false if absent.
func number(h nats.Header, key string) (n uint64, ok bool, err error) {
	v, err := one(h, key)
	if err != nil || v == "" {
		return 0, false, err
	}
	n, err = strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, false, badMsg("header %s is %q, want a decimal integer", key, v)
	}
	return n, true, nil
}

// openMsg is a request: the OPEN of a stream.
type openMsg struct {
	path, codec, requestID, traceParent string
	headers                             map[string]string
	timeout                             time.Duration // 0: no deadline
	heartbeat                           time.Duration // the caller's heartbeat timeout; 0: none asked
	inbox                               string        // "" for a caller that is not a natsplane Client
	stream                              uint64        // 0 with inbox ""
	credit                              uint64
	hasCredit                           bool
}

// checkRequest validates what a caller asks to send, with the limits of
// the TCP plane's OPEN so that a request valid on one plane is valid on
// the other.
func checkRequest(path, codec, requestID, traceParent string, headers map[string]string) error {
	switch {
	case path == "":
		return errors.New("natsplane: request path is empty")
	case len(path) > wire.MaxPathLen:
		return fmt.Errorf("natsplane: request path is %d bytes, limit %d", len(path), wire.MaxPathLen)
	case len(codec) > wire.MaxShortField:
		return fmt.Errorf("natsplane: request codec %q is %d bytes, limit %d", codec, len(codec), wire.MaxShortField)
	case len(requestID) > wire.MaxShortField:
		return fmt.Errorf("natsplane: request id is %d bytes, limit %d", len(requestID), wire.MaxShortField)
	case len(traceParent) > wire.MaxShortField:
		return fmt.Errorf("natsplane: request traceparent is %d bytes, limit %d", len(traceParent), wire.MaxShortField)
	case len(headers) > wire.MaxHeaders:
		return fmt.Errorf("natsplane: request has %d headers, limit %d", len(headers), wire.MaxHeaders)
	}
	for k, v := range headers {
		if len(k) == 0 || len(k) > wire.MaxShortField {
			return fmt.Errorf("natsplane: request header key %q is %d bytes, want 1 to %d", k, len(k), wire.MaxShortField)
		}
		if len(v) > wire.MaxHeaderValue {
			return fmt.Errorf("natsplane: request header %q value is %d bytes, limit %d", k, len(v), wire.MaxHeaderValue)
		}
	}
	return nil
}

// encodeOpen returns the headers of a request; o has been checked.
func encodeOpen(o *openMsg) nats.Header {
	h := make(nats.Header, 10+len(o.headers))
	h[hdrKind] = valOpen
	h[hdrVersion] = valVersion
	h[hdrPath] = []string{escapeValue(o.path)}
	if o.codec != "" {
		h[hdrCodec] = []string{escapeValue(o.codec)}
	}
	if o.requestID != "" {
		h[hdrRequestID] = []string{escapeValue(o.requestID)}
	}
	if o.traceParent != "" {
		h[hdrTrace] = []string{escapeValue(o.traceParent)}
	}
	if o.timeout > 0 {
		h[hdrTimeout] = []string{strconv.FormatInt(int64(o.timeout), 10)}
	}
	if o.heartbeat > 0 {
		h[hdrHeartbeat] = []string{strconv.FormatInt(int64(o.heartbeat), 10)}
	}
	if o.inbox != "" {
		h[hdrInbox] = []string{escapeValue(o.inbox)}
		h[hdrStream] = []string{strconv.FormatUint(o.stream, 10)}
	}
	if o.hasCredit {
		h[hdrCredit] = []string{strconv.FormatUint(o.credit, 10)}
	}
	for k, v := range o.headers {
		h[hdrUser+escapeKey(k)] = []string{escapeValue(v)}
	}
	return h
}

// parseOpen parses a request's headers. reply is the message's reply
// subject: a natsplane Client's is its inbox, a dot and the stream id, as
// Loom-Inbox and Loom-Stream say; any other caller's is used as is.
func parseOpen(h nats.Header, reply string) (openMsg, error) {
	var o openMsg
	if v, err := one(h, hdrVersion); err != nil {
		return o, err
	} else if v != "" && v != valVersion[0] {
		return o, &versionError{got: v}
	}
	var err error
	if o.path, err = text(h, hdrPath, wire.MaxPathLen); err != nil {
		return o, err
	}
	if o.path == "" {
		return o, badMsg("request has no %s header", hdrPath)
	}
	if o.codec, err = text(h, hdrCodec, wire.MaxShortField); err != nil {
		return o, err
	}
	if o.requestID, err = text(h, hdrRequestID, wire.MaxShortField); err != nil {
		return o, err
	}
	if o.traceParent, err = text(h, hdrTrace, wire.MaxShortField); err != nil {
		return o, err
	}
	t, _, err := number(h, hdrTimeout)
	if err != nil {
		return o, err
	}
	if t > 1<<62 {
		t = 1 << 62 // about 146 years: no deadline in practice
	}
	o.timeout = time.Duration(t)
	hb, _, err := number(h, hdrHeartbeat)
	if err != nil {
		return o, err
	}
	o.heartbeat = time.Duration(min(hb, 1<<62))
	if o.credit, o.hasCredit, err = number(h, hdrCredit); err != nil {
		return o, err
	}
	if o.inbox, err = text(h, hdrInbox, len(reply)); err != nil {
		return o, err
	}
	id, hasID, err := number(h, hdrStream)
	if err != nil {
		return o, err
	}
	switch {
	case o.inbox == "" && !hasID:
	case o.inbox == "" || !hasID:
		return o, badMsg("request has only one of %s and %s", hdrInbox, hdrStream)
	case id == 0:
		return o, badMsg("request on stream 0")
	case reply != o.inbox+"."+strconv.FormatUint(id, 10):
		return o, badMsg("reply subject %q is not %s %q, a dot and %s %d", reply, hdrInbox, o.inbox, hdrStream, id)
	default:
		o.stream = id
	}
	for k, vs := range h {
		ek, ok := strings.CutPrefix(k, hdrUser)
		if !ok {
			continue
		}
		if o.headers == nil {
			o.headers = make(map[string]string)
		}
		if len(o.headers) == wire.MaxHeaders {
			return o, badMsg("request has more than %d headers", wire.MaxHeaders)
		}
		if len(vs) != 1 {
			return o, badMsg("header %s given %d times", k, len(vs))
		}
		key, err := unescape(ek)
		if err != nil {
			return o, fmt.Errorf("header key %s: %w", k, err)
		}
		if key == "" || len(key) > wire.MaxShortField {
			return o, badMsg("request header key %q is %d bytes, want 1 to %d", key, len(key), wire.MaxShortField)
		}
		v, err := unescape(vs[0])
		if err != nil {
			return o, fmt.Errorf("header %s: %w", k, err)
		}
		if len(v) > wire.MaxHeaderValue {
			return o, badMsg("request header %q value is %d bytes, limit %d", key, len(v), wire.MaxHeaderValue)
		}
		if _, dup := o.headers[key]; dup {
			return o, badMsg("request header %q given twice (escaped differently)", key)
		}
		o.headers[key] = v
	}
	return o, nil
}

// versionError is a request in a version this side does not speak.
type versionError struct{ got string }

func (e *versionError) Error() string {
	return fmt.Sprintf("natsplane: request in message version %q; this server speaks version %d (upgrade the older side)", e.got, Version)
}

// ctlMsg is a control message from a caller: stop, kill, credit or pong.
type ctlMsg struct {
	kind   string
	inbox  string
	stream uint64 // not for pong
	credit uint64 // cumulative, for credit
}

func encodeControl(c ctlMsg) nats.Header {
	h := nats.Header{hdrKind: {c.kind}, hdrInbox: {escapeValue(c.inbox)}}
	if c.kind != kindPong {
		h[hdrStream] = []string{strconv.FormatUint(c.stream, 10)}
	}
	if c.kind == kindCredit {
		h[hdrCredit] = []string{strconv.FormatUint(c.credit, 10)}
	}
	return h
}

// parseControl parses a control message of the given kind.
func parseControl(kind string, h nats.Header) (ctlMsg, error) {
	c := ctlMsg{kind: kind}
	var err error
	if c.inbox, err = text(h, hdrInbox, 1<<10); err != nil {
		return c, err
	}
	if c.inbox == "" {
		return c, badMsg("%s message without %s", kind, hdrInbox)
	}
	if kind == kindPong {
		return c, nil
	}
	var ok bool
	if c.stream, ok, err = number(h, hdrStream); err != nil {
		return c, err
	}
	if !ok || c.stream == 0 {
		return c, badMsg("%s message without a %s above 0", kind, hdrStream)
	}
	if kind == kindCredit {
		if c.credit, ok, err = number(h, hdrCredit); err != nil {
			return c, err
		}
		if !ok {
			return c, badMsg("credit message without %s", hdrCredit)
		}
	}
	return c, nil
}

// encodeEnd returns the headers of an END message: the status code, the
// count of DATA messages sent before it and the message, truncated to
// wire.MaxMessageLen bytes.
func encodeEnd(seq uint64, code wire.Code, msg string) nats.Header {
	h := nats.Header{hdrKind: valEnd, hdrSeq: {strconv.FormatUint(seq, 10)}, hdrCode: {strconv.Itoa(int(code))}}
	if msg != "" {
		h[hdrMessage] = []string{escapeValue(truncate(msg, wire.MaxMessageLen))}
	}
	return h
}

// truncate cuts s to at most n bytes, at a rune boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i]
}

func parseEnd(h nats.Header) (seq uint64, code wire.Code, msg string, err error) {
	seq, ok, err := number(h, hdrSeq)
	if err != nil {
		return 0, 0, "", err
	}
	if !ok {
		return 0, 0, "", badMsg("END without %s", hdrSeq)
	}
	c, ok, err := number(h, hdrCode)
	if err != nil {
		return 0, 0, "", err
	}
	if !ok || c > 0xffff {
		return 0, 0, "", badMsg("END without a %s in [0, 65535]", hdrCode)
	}
	if msg, err = text(h, hdrMessage, wire.MaxMessageLen); err != nil {
		return 0, 0, "", err
	}
	return seq, wire.Code(c), msg, nil
}

func parseData(h nats.Header) (uint64, error) {
	seq, ok, err := number(h, hdrSeq)
	if err != nil {
		return 0, err
	}
	if !ok || seq == 0 {
		return 0, badMsg("DATA without a %s above 0", hdrSeq)
	}
	return seq, nil
}

// Heartbeat payload: for each of the caller's open streams on the server,
// uvarint stream id (above 0), then uvarint blocked: 0 if the stream is
// not waiting for credit, else 1 + the cumulative credit the server has
// seen.

// maxHeartbeatEntry is the largest encoded entry.
const maxHeartbeatEntry = 2 * binary.MaxVarintLen64

func appendHeartbeat(dst []byte, id, blocked uint64) []byte {
	dst = binary.AppendUvarint(dst, id)
	return binary.AppendUvarint(dst, blocked)
}

type hbEntry struct{ id, blocked uint64 }

func parseHeartbeat(p []byte) ([]hbEntry, error) {
	out := make([]hbEntry, 0, len(p)/2)
	for len(p) > 0 {
		id, n := binary.Uvarint(p)
		if n <= 0 {
			return nil, badMsg("heartbeat entry %d: bad stream id varint", len(out))
		}
		p = p[n:]
		blocked, n := binary.Uvarint(p)
		if n <= 0 {
			return nil, badMsg("heartbeat entry %d: bad blocked varint", len(out))
		}
		p = p[n:]
		if id == 0 {
			return nil, badMsg("heartbeat entry %d: stream 0", len(out))
		}
		out = append(out, hbEntry{id, blocked})
	}
	return out, nil
}
