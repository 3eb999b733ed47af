package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"

	"github.com/loomrt/loom/codec"
	mp "github.com/loomrt/loom/internal/msgpack"
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
	n := 6
	if e.InstanceID != 0 {
		n++
	}
	dst = mp.AppendMapLen(dst, n)
	dst = append(dst, keyTopic...)
	dst = mp.AppendStr(dst, e.Topic)
	dst = append(dst, keyPublisherID...)
	dst = mp.AppendUint(dst, e.PublisherID)
	dst = append(dst, keySequence...)
	dst = mp.AppendUint(dst, e.Sequence)
	dst = append(dst, keyPublishedAt...)
	dst = mp.AppendInt(dst, floorDiv(e.PublishedAt, 1e6))
	dst = append(dst, keyPayload...)
	dst = mp.AppendBin(dst, e.Payload)
	dst = append(dst, keyPublishedAtNs...)
	dst = mp.AppendInt(dst, e.PublishedAt)
	if e.InstanceID != 0 {
		dst = append(dst, keyInstanceID...)
		dst = mp.AppendUint(dst, e.InstanceID)
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

// AppendMsgPackCompact appends e in Loom's compact MessagePack form to
// dst: an array [publisher_id, sequence, published_at (Unix nanoseconds),
// topic, payload, instance_id], without instance_id when it is 0. It is
// 86 bytes shorter than the map, and Dynamo cannot read it.
func (e *Envelope) AppendMsgPackCompact(dst []byte) []byte {
	n := 5
	if e.InstanceID != 0 {
		n++
	}
	dst = mp.AppendArrayLen(dst, n)
	dst = mp.AppendUint(dst, e.PublisherID)
	dst = mp.AppendUint(dst, e.Sequence)
	dst = mp.AppendInt(dst, e.PublishedAt)
	dst = mp.AppendStr(dst, e.Topic)
	dst = mp.AppendBin(dst, e.Payload)
	if e.InstanceID != 0 {
		dst = mp.AppendUint(dst, e.InstanceID)
	}
	return dst
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

// maxSkipDepth bounds the nesting of values skipped under unknown keys.
const maxSkipDepth = 32

func decodeMsgPack(data []byte, e *Envelope, topic string) error {
	if decodeOwnMap(data, e, topic) || decodeOwn(data, e, topic) {
		return nil
	}
	*e = Envelope{}
	if err := decodeMsgPackForm(data, e, topic); err != nil {
		*e = Envelope{}
		if !errors.Is(err, ErrEnvelope) {
			err = fmt.Errorf("%w: %w", ErrEnvelope, err)
		}
		return err
	}
	return nil
}

// decodeMsgPackForm decodes either MessagePack form; its errors may come
// bare from the reader.
func decodeMsgPackForm(data []byte, e *Envelope, topic string) error {
	r := mp.NewReader(data)
	n, isArray, err := r.Container()
	if err != nil {
		return err
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
		key, err := r.Str()
		if err != nil {
			return err
		}
		switch string(key) {
		case "publisher_id":
			e.PublisherID, err = r.Uint()
			have |= havePub
		case "instance_id":
			e.InstanceID, err = r.Uint()
		case "sequence":
			e.Sequence, err = r.Uint()
			have |= haveSeq
		case "published_at":
			at, err = r.Int()
			haveAt = true
		case "published_at_ns":
			e.PublishedAt, err = r.Int()
			haveNs = true
		case "topic":
			e.Topic, err = readTopic(&r, topic)
			have |= haveTopic
		case "payload":
			e.Payload, err = r.Bin()
			have |= havePayload
		default:
			err = r.Skip(maxSkipDepth)
		}
		if err != nil {
			return err
		}
	}
	if r.Remaining() != 0 {
		return envErr("%d bytes after the envelope", r.Remaining())
	}
	if have != havePub|haveSeq|haveTopic|havePayload {
		return envErr("MessagePack envelope lacks publisher_id, sequence, topic or payload")
	}
	if haveAt && !haveNs {
		e.PublishedAt = publishedAt(at)
	}
	return checkEnvelope(e)
}

// readTopic reads the topic, a str (or, for lenience, a bin), reusing
// topic when it is the same to save an allocation per event.
func readTopic(r *mp.Reader, topic string) (string, error) {
	b, err := r.StrOrBin()
	if err != nil {
		return "", err
	}
	return sameTopic(b, topic), nil
}

// decodeArray decodes the positional form; elements past the sixth
// (added by a later version) are skipped.
func decodeArray(r *mp.Reader, n uint64, e *Envelope, topic string) error {
	if n < 5 {
		return envErr("MessagePack envelope array of %d elements, want at least 5", n)
	}
	var err error
	if e.PublisherID, err = r.Uint(); err != nil {
		return err
	}
	if e.Sequence, err = r.Uint(); err != nil {
		return err
	}
	if e.PublishedAt, err = r.Int(); err != nil {
		return err
	}
	if e.Topic, err = readTopic(r, topic); err != nil {
		return err
	}
	if e.Payload, err = r.Bin(); err != nil {
		return err
	}
	if n > 5 {
		if e.InstanceID, err = r.Uint(); err != nil {
			return err
		}
	}
	for i := uint64(6); i < n; i++ {
		if err := r.Skip(maxSkipDepth); err != nil {
			return err
		}
	}
	if r.Remaining() != 0 {
		return envErr("%d bytes after the envelope", r.Remaining())
	}
	return checkEnvelope(e)
}

// decodeOwn decodes, without the general walk, an envelope laid out as
// AppendMsgPackCompact writes it, and reports whether it could; anything
// else goes the general way. It is the hot path of every subscription.
func decodeOwn(b []byte, e *Envelope, topic string) bool {
	if len(b) == 0 || (b[0] != 0x95 && b[0] != 0x96) {
		return false
	}
	var ok bool
	i := 1
	if e.PublisherID, i, ok = mp.ReadUint(b, i); !ok {
		return false
	}
	if e.Sequence, i, ok = mp.ReadUint(b, i); !ok {
		return false
	}
	var at uint64
	if at, i, ok = mp.ReadUint(b, i); !ok || at > math.MaxInt64 {
		return false // negative times go the general way
	}
	e.PublishedAt = int64(at)
	var t []byte
	if t, i, ok = mp.ReadFixStr(b, i); !ok {
		return false
	}
	e.Topic = sameTopic(t, topic)
	if e.Payload, i, ok = mp.ReadBin(b, i); !ok {
		return false
	}
	if b[0] == 0x96 {
		if e.InstanceID, i, ok = mp.ReadUint(b, i); !ok {
			return false
		}
	}
	return i == len(b) && e.PublisherID != 0 && len(e.Topic) <= 128
}

// decodeOwnMap decodes, without the general walk, a map laid out as
// AppendMsgPack (or Dynamo's serializer, without the last two keys)
// writes it, and reports whether it could.
func decodeOwnMap(b []byte, e *Envelope, topic string) bool {
	if len(b) == 0 || b[0] < 0x85 || b[0] > 0x87 {
		return false
	}
	i, ok := 1, false
	if i, ok = ownKey(b, i, keyTopic); !ok {
		return false
	}
	var t []byte
	if t, i, ok = mp.ReadFixStr(b, i); !ok {
		return false
	}
	e.Topic = sameTopic(t, topic)
	if i, ok = ownKey(b, i, keyPublisherID); !ok {
		return false
	}
	if e.PublisherID, i, ok = mp.ReadUint(b, i); !ok {
		return false
	}
	if i, ok = ownKey(b, i, keySequence); !ok {
		return false
	}
	if e.Sequence, i, ok = mp.ReadUint(b, i); !ok {
		return false
	}
	if i, ok = ownKey(b, i, keyPublishedAt); !ok {
		return false
	}
	var ms uint64
	if ms, i, ok = mp.ReadUint(b, i); !ok || ms > maxMillis {
		return false // negative or odd times go the general way
	}
	if i, ok = ownKey(b, i, keyPayload); !ok {
		return false
	}
	if e.Payload, i, ok = mp.ReadBin(b, i); !ok {
		return false
	}
	e.PublishedAt = int64(ms) * 1e6
	if b[0] >= 0x86 {
		if i, ok = ownKey(b, i, keyPublishedAtNs); !ok {
			return false
		}
		var ns uint64
		if ns, i, ok = mp.ReadUint(b, i); !ok || ns > math.MaxInt64 {
			return false
		}
		e.PublishedAt = int64(ns)
	}
	if b[0] == 0x87 {
		if i, ok = ownKey(b, i, keyInstanceID); !ok {
			return false
		}
		if e.InstanceID, i, ok = mp.ReadUint(b, i); !ok {
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

// sameTopic returns t as a string, reusing topic if it is the same.
func sameTopic(t []byte, topic string) string {
	if string(t) == topic {
		return topic
	}
	return string(t)
}
