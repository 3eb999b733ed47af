package events

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"

	"github.com/loomrt/loom/codec"
)

// Envelope is what travels for each event: who published it, its place in
// that publisher's sequence, when, its topic, and the encoded event.
//
// In MessagePack it is, by default, Dynamo's envelope: a map with the keys
// topic, publisher_id, sequence, published_at (Unix milliseconds) and
// payload, plus Loom's published_at_ns and instance_id, which Dynamo's
// decoder skips. The compact form is a positional array [publisher_id,
// sequence, published_at (Unix nanoseconds), topic, payload, instance_id
// (omitted when 0)]. In JSON it is an object with the map's keys, the
// payload as the event's JSON value. Decoders read all of them, and tell
// the encodings apart by the first byte ('{' is JSON); see
// docs/events.md.
type Envelope struct {
	// PublisherID names one Publisher for its lifetime: random, below
	// 2^53, never 0. A restarted publisher has a new one.
	PublisherID uint64
	// InstanceID is the publishing runtime's instance id, or 0.
	InstanceID uint64
	// Sequence numbers a publisher's events from 0, without gaps.
	Sequence uint64
	// PublishedAt is the publisher's clock at Publish, Unix nanoseconds
	// (an envelope that carries milliseconds only, as Dynamo's does,
	// decodes to whole milliseconds).
	PublishedAt int64
	// Topic is the event's topic name.
	Topic string
	// Payload is the encoded event.
	Payload []byte
}

// The forms of a MessagePack envelope a publisher can write.
const (
	// EnvelopeDynamo is Dynamo's named map, published_at in milliseconds,
	// with Loom's published_at_ns and instance_id as extra keys. The
	// default: a Dynamo subscriber decodes it.
	EnvelopeDynamo = "dynamo"
	// EnvelopeCompact is Loom's positional array, published_at in
	// nanoseconds: 86 bytes shorter, unreadable by Dynamo.
	EnvelopeCompact = "compact"
)

// ErrEnvelope wraps every malformed envelope.
var ErrEnvelope = errors.New("events: malformed envelope")

func envErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrEnvelope}, args...)...)
}

// AppendMsgPack appends e in Dynamo's MessagePack envelope to dst: a map
// with the keys topic, publisher_id, sequence, published_at (Unix
// milliseconds) and payload in the order Dynamo's serializer writes them,
// then published_at_ns (the full time) and instance_id (when not 0),
// which Dynamo's decoder skips.
func (e *Envelope) AppendMsgPack(dst []byte) []byte {
	n := byte(6)
	if e.InstanceID != 0 {
		n++
	}
	dst = append(dst, 0x80|n)
	dst = append(dst, keyTopic...)
	dst = appendStr(dst, e.Topic)
	dst = append(dst, keyPublisherID...)
	dst = appendUint(dst, e.PublisherID)
	dst = append(dst, keySequence...)
	dst = appendUint(dst, e.Sequence)
	dst = append(dst, keyPublishedAt...)
	dst = appendInt(dst, floorDiv(e.PublishedAt, 1e6))
	dst = append(dst, keyPayload...)
	dst = appendBin(dst, e.Payload)
	dst = append(dst, keyPublishedAtNs...)
	dst = appendInt(dst, e.PublishedAt)
	if e.InstanceID != 0 {
		dst = append(dst, keyInstanceID...)
		dst = appendUint(dst, e.InstanceID)
	}
	return dst
}

// The keys of the map form, as fixstr.
var (
	keyTopic         = []byte("\xa5topic")
	keyPublisherID   = []byte("\xacpublisher_id")
	keySequence      = []byte("\xa8sequence")
	keyPublishedAt   = []byte("\xacpublished_at")
	keyPayload       = []byte("\xa7payload")
	keyPublishedAtNs = []byte("\xafpublished_at_ns")
	keyInstanceID    = []byte("\xabinstance_id")
)

// floorDiv divides rounding towards minus infinity, so that a time before
// 1970 keeps its millisecond.
func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

func appendBin(dst, b []byte) []byte {
	switch n := len(b); {
	case n <= math.MaxUint8:
		dst = append(dst, 0xc4, byte(n))
	case n <= math.MaxUint16:
		dst = append(dst, 0xc5)
		dst = binary.BigEndian.AppendUint16(dst, uint16(n))
	default:
		dst = append(dst, 0xc6)
		dst = binary.BigEndian.AppendUint32(dst, uint32(n))
	}
	return append(dst, b...)
}

// AppendMsgPackCompact appends e in Loom's compact MessagePack form to
// dst: an array [publisher_id, sequence, published_at (Unix nanoseconds),
// topic, payload, instance_id], without instance_id when it is 0. It is
// 86 bytes shorter than the map, and Dynamo cannot read it.
func (e *Envelope) AppendMsgPackCompact(dst []byte) []byte {
	n := byte(5)
	if e.InstanceID != 0 {
		n++
	}
	dst = append(dst, 0x90|n)
	dst = appendUint(dst, e.PublisherID)
	dst = appendUint(dst, e.Sequence)
	dst = appendInt(dst, e.PublishedAt)
	dst = appendStr(dst, e.Topic)
	dst = appendBin(dst, e.Payload)
	if e.InstanceID != 0 {
		dst = appendUint(dst, e.InstanceID)
	}
	return dst
}

func appendStr(dst []byte, s string) []byte {
	switch n := len(s); {
	case n < 32:
		dst = append(dst, 0xa0|byte(n))
	case n <= math.MaxUint8:
		dst = append(dst, 0xd9, byte(n))
	case n <= math.MaxUint16:
		dst = append(dst, 0xda)
		dst = binary.BigEndian.AppendUint16(dst, uint16(n))
	default:
		dst = append(dst, 0xdb)
		dst = binary.BigEndian.AppendUint32(dst, uint32(n))
	}
	return append(dst, s...)
}

func appendUint(dst []byte, v uint64) []byte {
	switch {
	case v < 128:
		return append(dst, byte(v))
	case v <= math.MaxUint8:
		return append(dst, 0xcc, byte(v))
	case v <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(dst, 0xcd), uint16(v))
	case v <= math.MaxUint32:
		return binary.BigEndian.AppendUint32(append(dst, 0xce), uint32(v))
	}
	return binary.BigEndian.AppendUint64(append(dst, 0xcf), v)
}

func appendInt(dst []byte, v int64) []byte {
	if v >= 0 {
		return appendUint(dst, uint64(v))
	}
	return binary.BigEndian.AppendUint64(append(dst, 0xd3), uint64(v))
}

// AppendJSON appends the JSON encoding of e to dst: the keys of the map
// form (published_at in milliseconds, published_at_ns the full time). The
// payload must be one valid JSON value (it is embedded as is).
func (e *Envelope) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"publisher_id":`...)
	dst = strconv.AppendUint(dst, e.PublisherID, 10)
	if e.InstanceID != 0 {
		dst = append(dst, `,"instance_id":`...)
		dst = strconv.AppendUint(dst, e.InstanceID, 10)
	}
	dst = append(dst, `,"sequence":`...)
	dst = strconv.AppendUint(dst, e.Sequence, 10)
	dst = append(dst, `,"published_at":`...)
	dst = strconv.AppendInt(dst, floorDiv(e.PublishedAt, 1e6), 10)
	dst = append(dst, `,"published_at_ns":`...)
	dst = strconv.AppendInt(dst, e.PublishedAt, 10)
	dst = append(dst, `,"topic":`...)
	dst = appendJSONString(dst, e.Topic)
	dst = append(dst, `,"payload":`...)
	dst = append(dst, e.Payload...)
	return append(dst, '}')
}

// appendJSONString appends s as a JSON string: topics are plain names,
// anything else goes through encoding/json's escaping.
func appendJSONString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			b, _ := json.Marshal(s)
			return append(dst, b...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

// Append appends e encoded with the codec named name (codec.MsgPackName or
// codec.JSONName); MessagePack in Dynamo's map form.
func (e *Envelope) Append(dst []byte, name string) ([]byte, error) {
	switch name {
	case codec.MsgPackName, "":
		return e.AppendMsgPack(dst), nil
	case codec.JSONName:
		if !json.Valid(e.Payload) {
			return dst, fmt.Errorf("events: a JSON envelope needs a JSON payload; this one (%d bytes) is not valid JSON (publish opaque bytes with the msgpack codec)", len(e.Payload))
		}
		return e.AppendJSON(dst), nil
	}
	return dst, fmt.Errorf("events: unknown codec %q; use %q or %q", name, codec.MsgPackName, codec.JSONName)
}

// DecodeEnvelope decodes an envelope in either encoding into e and returns
// the codec's name. In MessagePack, e.Payload aliases data. Malformed
// input is an error wrapping ErrEnvelope; it never panics and allocates at
// most the size of data.
func DecodeEnvelope(data []byte, e *Envelope) (string, error) {
	return decodeEnvelope(data, e, "")
}

// decodeEnvelope is DecodeEnvelope reusing topic, the topic of an earlier
// envelope, when this one has the same (saving an allocation per event).
func decodeEnvelope(data []byte, e *Envelope, topic string) (string, error) {
	*e = Envelope{}
	if len(data) > 0 && data[0] >= 0x80 {
		return codec.MsgPackName, decodeMsgPack(data, e, topic)
	}
	first := bytes.TrimLeft(data, " \t\r\n")
	if len(first) > 0 && first[0] == '{' {
		return codec.JSONName, decodeJSON(data, e)
	}
	return codec.MsgPackName, decodeMsgPack(data, e, topic)
}

type jsonEnvelope struct {
	PublisherID   *uint64         `json:"publisher_id"`
	InstanceID    uint64          `json:"instance_id"`
	Sequence      *uint64         `json:"sequence"`
	PublishedAt   int64           `json:"published_at"`
	PublishedAtNs *int64          `json:"published_at_ns"`
	Topic         string          `json:"topic"`
	Payload       json.RawMessage `json:"payload"`
}

func decodeJSON(data []byte, e *Envelope) error {
	var j jsonEnvelope
	if err := json.Unmarshal(data, &j); err != nil {
		return envErr("JSON: %v", err)
	}
	if j.PublisherID == nil || j.Sequence == nil || j.Payload == nil || j.Topic == "" {
		return envErr("JSON envelope lacks publisher_id, sequence, topic or payload")
	}
	at := publishedAt(j.PublishedAt)
	if j.PublishedAtNs != nil {
		at = *j.PublishedAtNs
	}
	*e = Envelope{PublisherID: *j.PublisherID, InstanceID: j.InstanceID, Sequence: *j.Sequence,
		PublishedAt: at, Topic: j.Topic, Payload: j.Payload}
	return checkEnvelope(e)
}

// maxMillis is the largest published_at read as milliseconds (year 2262,
// where nanoseconds overflow int64). A map or JSON envelope without
// published_at_ns holds milliseconds (Dynamo's) or, from Loom before the
// map became the default, nanoseconds; the size tells them apart, since
// a time in nanoseconds below it is within 2.5 hours of 1970.
const maxMillis = math.MaxInt64 / 1_000_000

// publishedAt converts a published_at without published_at_ns to
// nanoseconds.
func publishedAt(v int64) int64 {
	if v <= maxMillis && v >= -maxMillis {
		return v * 1e6
	}
	return v
}

func checkEnvelope(e *Envelope) error {
	if e.PublisherID == 0 {
		return envErr("publisher_id 0")
	}
	if len(e.Topic) > 128 {
		return envErr("topic of %d bytes", len(e.Topic))
	}
	return nil
}

// mpReader walks MessagePack bytes with bounds checks.
type mpReader struct {
	b []byte
	i int
}

var errShort = envErr("MessagePack cut short")

func (r *mpReader) byte() (byte, error) {
	if r.i >= len(r.b) {
		return 0, errShort
	}
	c := r.b[r.i]
	r.i++
	return c, nil
}

func (r *mpReader) next(n uint64) ([]byte, error) {
	if uint64(len(r.b)-r.i) < n {
		return nil, errShort
	}
	s := r.b[r.i : r.i+int(n)]
	r.i += int(n)
	return s, nil
}

// uintN reads a big-endian unsigned integer of n bytes (1, 2, 4 or 8).
func (r *mpReader) uintN(n int) (uint64, error) {
	if len(r.b)-r.i < n {
		return 0, errShort
	}
	s := r.b[r.i:]
	r.i += n
	switch n {
	case 1:
		return uint64(s[0]), nil
	case 2:
		return uint64(binary.BigEndian.Uint16(s)), nil
	case 4:
		return uint64(binary.BigEndian.Uint32(s)), nil
	}
	return binary.BigEndian.Uint64(s), nil
}

// str reads a str (or, for lenience, a bin) and returns its bytes.
func (r *mpReader) bytesOf(allowStr, allowBin bool) ([]byte, error) {
	c, err := r.byte()
	if err != nil {
		return nil, err
	}
	var n uint64
	switch {
	case allowStr && c&0xe0 == 0xa0:
		n = uint64(c & 0x1f)
	case allowStr && c == 0xd9, allowBin && c == 0xc4:
		n, err = r.uintN(1)
	case allowStr && c == 0xda, allowBin && c == 0xc5:
		n, err = r.uintN(2)
	case allowStr && c == 0xdb, allowBin && c == 0xc6:
		n, err = r.uintN(4)
	default:
		return nil, envErr("want a string or bytes, got type byte %#x", c)
	}
	if err != nil {
		return nil, err
	}
	return r.next(n)
}

// uint reads a non-negative integer in any encoding.
func (r *mpReader) uint() (uint64, error) {
	c, err := r.byte()
	if err != nil {
		return 0, err
	}
	switch {
	case c < 0x80:
		return uint64(c), nil
	case c >= 0xcc && c <= 0xcf:
		return r.uintN(1 << (c - 0xcc))
	case c >= 0xd0 && c <= 0xd3:
		n := 1 << (c - 0xd0)
		v, err := r.uintN(n)
		if err != nil {
			return 0, err
		}
		if v>>(uint(n)*8-1)&1 == 1 {
			return 0, envErr("negative number where an unsigned one belongs")
		}
		return v, nil
	}
	return 0, envErr("want an integer, got type byte %#x", c)
}

// int reads a signed integer in any encoding.
func (r *mpReader) int() (int64, error) {
	c, err := r.byte()
	if err != nil {
		return 0, err
	}
	switch {
	case c < 0x80:
		return int64(c), nil
	case c >= 0xe0:
		return int64(int8(c)), nil
	case c >= 0xcc && c <= 0xcf:
		v, err := r.uintN(1 << (c - 0xcc))
		if err == nil && v > math.MaxInt64 {
			return 0, envErr("integer %d out of range", v)
		}
		return int64(v), err
	case c >= 0xd0 && c <= 0xd3:
		n := 1 << (c - 0xd0)
		v, err := r.uintN(n)
		shift := 64 - uint(n)*8
		return int64(v<<shift) >> shift, err
	}
	return 0, envErr("want an integer, got type byte %#x", c)
}

// maxSkipDepth bounds the nesting of values skipped under unknown keys.
const maxSkipDepth = 32

// skip steps over one value of any type.
func (r *mpReader) skip(depth int) error {
	if depth > maxSkipDepth {
		return envErr("nesting deeper than %d", maxSkipDepth)
	}
	c, err := r.byte()
	if err != nil {
		return err
	}
	var size, items uint64
	switch {
	case c < 0x80 || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3:
		return nil
	case c&0xe0 == 0xa0:
		size = uint64(c & 0x1f)
	case c&0xf0 == 0x90:
		items = uint64(c & 0x0f)
	case c&0xf0 == 0x80:
		items = 2 * uint64(c&0x0f)
	default:
		switch c {
		case 0xcc, 0xd0, 0xd4:
			size = 1 + boolToUint(c == 0xd4)
		case 0xcd, 0xd1, 0xd5:
			size = 2 + boolToUint(c == 0xd5)
		case 0xce, 0xd2, 0xca, 0xd6:
			size = 4 + boolToUint(c == 0xd6)
		case 0xcf, 0xd3, 0xcb, 0xd7:
			size = 8 + boolToUint(c == 0xd7)
		case 0xd8:
			size = 17
		case 0xc4, 0xd9:
			size, err = r.uintN(1)
		case 0xc5, 0xda:
			size, err = r.uintN(2)
		case 0xc6, 0xdb:
			size, err = r.uintN(4)
		case 0xc7, 0xc8, 0xc9:
			size, err = r.uintN(1 << (c - 0xc7))
			size++ // the ext type byte
		case 0xdc, 0xde:
			items, err = r.uintN(2)
		case 0xdd, 0xdf:
			items, err = r.uintN(4)
		default:
			return envErr("reserved type byte %#x", c)
		}
		if err != nil {
			return err
		}
		if c == 0xde || c == 0xdf {
			items *= 2
		}
	}
	if size > 0 {
		_, err := r.next(size)
		return err
	}
	// Each item takes at least one byte: refuse counts the input cannot
	// hold before looping over them.
	if items > uint64(len(r.b)-r.i) {
		return errShort
	}
	for range items {
		if err := r.skip(depth + 1); err != nil {
			return err
		}
	}
	return nil
}

func boolToUint(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

func decodeMsgPack(data []byte, e *Envelope, topic string) error {
	if decodeOwnMap(data, e, topic) || decodeOwn(data, e, topic) {
		return nil
	}
	*e = Envelope{}
	r := mpReader{b: data}
	c, err := r.byte()
	if err != nil {
		return err
	}
	var n uint64
	isArray := false
	switch {
	case c&0xf0 == 0x80:
		n = uint64(c & 0x0f)
	case c&0xf0 == 0x90:
		n, isArray = uint64(c&0x0f), true
	case c == 0xdc:
		n, err = r.uintN(2)
		isArray = true
	case c == 0xdd:
		n, err = r.uintN(4)
		isArray = true
	case c == 0xde:
		n, err = r.uintN(2)
	case c == 0xdf:
		n, err = r.uintN(4)
	default:
		return envErr("MessagePack envelope is neither an array nor a map (type byte %#x)", c)
	}
	if err != nil {
		return err
	}
	if n > uint64(len(data)) {
		return errShort
	}
	if isArray {
		return decodeArray(&r, n, e, topic)
	}
	const (
		havePub = 1 << iota
		haveSeq
		haveTopic
		havePayload
	)
	have := 0
	var at int64
	var haveAt, haveNs bool
	for range n {
		key, err := r.bytesOf(true, false)
		if err != nil {
			return err
		}
		switch string(key) {
		case "publisher_id":
			e.PublisherID, err = r.uint()
			have |= havePub
		case "instance_id":
			e.InstanceID, err = r.uint()
		case "sequence":
			e.Sequence, err = r.uint()
			have |= haveSeq
		case "published_at":
			at, err = r.int()
			haveAt = true
		case "published_at_ns":
			e.PublishedAt, err = r.int()
			haveNs = true
		case "topic":
			var b []byte
			b, err = r.bytesOf(true, true)
			if string(b) == topic {
				e.Topic = topic
			} else {
				e.Topic = string(b)
			}
			have |= haveTopic
		case "payload":
			e.Payload, err = r.bytesOf(false, true)
			have |= havePayload
		default:
			err = r.skip(0)
		}
		if err != nil {
			return err
		}
	}
	if r.i != len(data) {
		return envErr("%d bytes after the envelope", len(data)-r.i)
	}
	if have != havePub|haveSeq|haveTopic|havePayload {
		return envErr("MessagePack envelope lacks publisher_id, sequence, topic or payload")
	}
	if haveAt && !haveNs {
		e.PublishedAt = publishedAt(at)
	}
	return checkEnvelope(e)
}

// decodeArray decodes the positional form; elements past the sixth
// (added by a later version) are skipped.
func decodeArray(r *mpReader, n uint64, e *Envelope, topic string) error {
	if n < 5 {
		return envErr("MessagePack envelope array of %d elements, want at least 5", n)
	}
	var err error
	if e.PublisherID, err = r.uint(); err != nil {
		return err
	}
	if e.Sequence, err = r.uint(); err != nil {
		return err
	}
	if e.PublishedAt, err = r.int(); err != nil {
		return err
	}
	b, err := r.bytesOf(true, true)
	if err != nil {
		return err
	}
	if string(b) == topic {
		e.Topic = topic
	} else {
		e.Topic = string(b)
	}
	if e.Payload, err = r.bytesOf(false, true); err != nil {
		return err
	}
	if n > 5 {
		if e.InstanceID, err = r.uint(); err != nil {
			return err
		}
	}
	for i := uint64(6); i < n; i++ {
		if err := r.skip(0); err != nil {
			return err
		}
	}
	if r.i != len(r.b) {
		return envErr("%d bytes after the envelope", len(r.b)-r.i)
	}
	return checkEnvelope(e)
}

// decodeOwn decodes, without the general walk, an envelope laid out as
// AppendMsgPack writes it, and reports whether it could; anything else goes
// the general way. It is the hot path of every subscription.
func decodeOwn(b []byte, e *Envelope, topic string) bool {
	if len(b) == 0 || (b[0] != 0x95 && b[0] != 0x96) {
		return false
	}
	var ok bool
	i := 1
	if e.PublisherID, i, ok = ownUint(b, i); !ok {
		return false
	}
	if e.Sequence, i, ok = ownUint(b, i); !ok {
		return false
	}
	var at uint64
	if at, i, ok = ownUint(b, i); !ok || at > math.MaxInt64 {
		return false // negative times go the general way
	}
	e.PublishedAt = int64(at)
	if i >= len(b) || b[i]&0xe0 != 0xa0 {
		return false
	}
	n := int(b[i] & 0x1f)
	i++
	if i+n > len(b) {
		return false
	}
	if t := b[i : i+n]; string(t) == topic {
		e.Topic = topic
	} else {
		e.Topic = string(t)
	}
	if i += n; i >= len(b) {
		return false
	}
	if e.Payload, i, ok = ownBin(b, i); !ok {
		return false
	}
	if b[0] == 0x96 {
		if e.InstanceID, i, ok = ownUint(b, i); !ok {
			return false
		}
	}
	return i == len(b) && e.PublisherID != 0 && len(e.Topic) <= 128
}

// ownUint reads a non-negative integer in the forms appendUint writes.
func ownUint(b []byte, i int) (uint64, int, bool) {
	if i >= len(b) {
		return 0, i, false
	}
	c := b[i]
	switch {
	case c < 0x80:
		return uint64(c), i + 1, true
	case c == 0xcc && i+2 <= len(b):
		return uint64(b[i+1]), i + 2, true
	case c == 0xcd && i+3 <= len(b):
		return uint64(binary.BigEndian.Uint16(b[i+1:])), i + 3, true
	case c == 0xce && i+5 <= len(b):
		return uint64(binary.BigEndian.Uint32(b[i+1:])), i + 5, true
	case c == 0xcf && i+9 <= len(b):
		return binary.BigEndian.Uint64(b[i+1:]), i + 9, true
	}
	return 0, i, false
}

// decodeOwnMap decodes, without the general walk, a map laid out as
// AppendMsgPack (or Dynamo's serializer, without the last two keys)
// writes it, and reports whether it could.
func decodeOwnMap(b []byte, e *Envelope, topic string) bool {
	if len(b) == 0 || b[0] < 0x85 || b[0] > 0x87 {
		return false
	}
	i, ok := 1, false
	if i, ok = ownKey(b, i, keyTopic); !ok || i >= len(b) || b[i]&0xe0 != 0xa0 {
		return false
	}
	n := int(b[i] & 0x1f)
	i++
	if i+n > len(b) {
		return false
	}
	if t := b[i : i+n]; string(t) == topic {
		e.Topic = topic
	} else {
		e.Topic = string(t)
	}
	i += n
	if i, ok = ownKey(b, i, keyPublisherID); !ok {
		return false
	}
	if e.PublisherID, i, ok = ownUint(b, i); !ok {
		return false
	}
	if i, ok = ownKey(b, i, keySequence); !ok {
		return false
	}
	if e.Sequence, i, ok = ownUint(b, i); !ok {
		return false
	}
	if i, ok = ownKey(b, i, keyPublishedAt); !ok {
		return false
	}
	var ms uint64
	if ms, i, ok = ownUint(b, i); !ok || ms > maxMillis {
		return false // negative or odd times go the general way
	}
	if i, ok = ownKey(b, i, keyPayload); !ok || i >= len(b) {
		return false
	}
	if e.Payload, i, ok = ownBin(b, i); !ok {
		return false
	}
	e.PublishedAt = int64(ms) * 1e6
	if b[0] >= 0x86 {
		if i, ok = ownKey(b, i, keyPublishedAtNs); !ok {
			return false
		}
		var ns uint64
		if ns, i, ok = ownUint(b, i); !ok || ns > math.MaxInt64 {
			return false
		}
		e.PublishedAt = int64(ns)
	}
	if b[0] == 0x87 {
		if i, ok = ownKey(b, i, keyInstanceID); !ok {
			return false
		}
		if e.InstanceID, i, ok = ownUint(b, i); !ok {
			return false
		}
	}
	return i == len(b) && e.PublisherID != 0 && len(e.Topic) <= 128
}

// ownKey reports whether key is at b[i:], and the index after it.
func ownKey(b []byte, i int, key []byte) (int, bool) {
	if len(b)-i < len(key) || string(b[i:i+len(key)]) != string(key) {
		return i, false
	}
	return i + len(key), true
}

// ownBin reads a MessagePack bin at b[i:] without copying: the bytes and
// the index after them.
func ownBin(b []byte, i int) ([]byte, int, bool) {
	if i >= len(b) {
		return nil, 0, false
	}
	var n int
	switch b[i] {
	case 0xc4:
		if i+2 > len(b) {
			return nil, 0, false
		}
		n, i = int(b[i+1]), i+2
	case 0xc5:
		if i+3 > len(b) {
			return nil, 0, false
		}
		n, i = int(binary.BigEndian.Uint16(b[i+1:])), i+3
	case 0xc6:
		if i+5 > len(b) {
			return nil, 0, false
		}
		n, i = int(binary.BigEndian.Uint32(b[i+1:])), i+5
	default:
		return nil, 0, false
	}
	if n > len(b)-i {
		return nil, 0, false
	}
	return b[i : i+n : i+n], i + n, true
}
