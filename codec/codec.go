// Package codec encodes the requests, responses and events Loom carries.
//
// MessagePack is the default: compact and fast, and readable from Python
// and Rust (Dynamo's own runtime speaks it). JSON is there for humans and
// for tools like `loom call`. The serving side chooses the codec and
// advertises it in its discovery record; callers follow it.
package codec

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"sync"

	"github.com/vmihailenco/msgpack/v5"

	mp "github.com/loomrt/loom/internal/msgpack"
)

// Codec turns values into bytes and back.
type Codec interface {
	// Name is the codec's name in configuration and discovery records.
	Name() string
	// Marshal appends the encoding of v to dst and returns the result.
	Marshal(dst []byte, v any) ([]byte, error)
	// Unmarshal decodes data into v, which must be a pointer.
	Unmarshal(data []byte, v any) error
}

// Names of the built-in codecs.
const (
	MsgPackName = "msgpack"
	JSONName    = "json"
)

// MsgPack is the MessagePack codec. Struct fields use their `msgpack` tag,
// falling back to the `json` tag, so one set of tags serves both codecs.
var MsgPack Codec = msgpackCodec{}

// JSON is the encoding/json codec.
var JSON Codec = jsonCodec{}

// A MsgpackAppender writes its own MessagePack encoding, which MsgPack's
// Marshal uses instead of reflection: for a type on a hot path, such as
// the items of a stream. AppendMsgpack must append the bytes the
// reflective encoder would write, or report false (leaving dst as it
// was) to have it write them.
type MsgpackAppender interface {
	AppendMsgpack(dst []byte) ([]byte, bool)
}

// A MsgpackReader reads its own MessagePack encoding, which MsgPack's
// Unmarshal tries before reflection. ReadMsgpack must decode as the
// reflective decoder would, or report false, leaving the value as it
// was, for input it does not read (the reflective decoder then decodes
// it, or fails).
type MsgpackReader interface {
	ReadMsgpack(data []byte) bool
}

// ByName returns the codec called name.
func ByName(name string) (Codec, error) {
	switch name {
	case MsgPackName, "":
		return MsgPack, nil
	case JSONName:
		return JSON, nil
	}
	return nil, fmt.Errorf("codec: unknown codec %q; use %q or %q", name, MsgPackName, JSONName)
}

type msgpackCodec struct{}

func (msgpackCodec) Name() string { return MsgPackName }

type msgpackEncoder struct {
	buf bytes.Buffer
	enc *msgpack.Encoder
}

var msgpackEncoders = sync.Pool{New: func() any {
	e := &msgpackEncoder{}
	e.enc = msgpack.NewEncoder(&e.buf)
	e.enc.SetCustomStructTag("json")
	e.enc.UseCompactInts(true)
	return e
}}

func (msgpackCodec) Marshal(dst []byte, v any) ([]byte, error) {
	// Strings and byte slices, the commonest items of a stream (tokens,
	// raw payloads), skip the reflective encoder: same bytes, a fraction
	// of the cost.
	// A nil pointer is nil, as the reflective encoder writes it.
	switch v := v.(type) {
	case string:
		return mp.AppendStr(dst, v), nil
	case *string:
		if v == nil {
			return append(dst, mp.Nil), nil
		}
		return mp.AppendStr(dst, *v), nil
	case []byte:
		return appendBin(dst, v), nil
	case *[]byte:
		if v == nil {
			return append(dst, mp.Nil), nil
		}
		return appendBin(dst, *v), nil
	case MsgpackAppender:
		if isNilPointer(v) {
			return append(dst, mp.Nil), nil
		}
		if out, ok := v.AppendMsgpack(dst); ok {
			return out, nil
		}
	}
	e := msgpackEncoders.Get().(*msgpackEncoder)
	e.buf.Reset()
	err := e.enc.Encode(v)
	if err == nil {
		dst = append(dst, e.buf.Bytes()...)
	}
	if e.buf.Cap() <= 64<<10 {
		msgpackEncoders.Put(e)
	}
	if err != nil {
		return dst, fmt.Errorf("codec: msgpack encode %T: %w", v, err)
	}
	return dst, nil
}

type msgpackDecoder struct {
	r   bytes.Reader
	dec *msgpack.Decoder
}

var msgpackDecoders = sync.Pool{New: func() any {
	d := &msgpackDecoder{dec: msgpack.NewDecoder(nil)}
	d.dec.SetCustomStructTag("json")
	return d
}}

func (msgpackCodec) Unmarshal(data []byte, v any) error {
	// A nil pointer goes to the general decoder, which refuses it.
	switch v := v.(type) {
	case *string:
		if str, ok := readStr(data); ok && v != nil {
			*v = str
			return nil
		}
	case *[]byte:
		if b, ok := readBin(data); ok && v != nil {
			*v = b
			return nil
		}
	case MsgpackReader:
		if !isNilPointer(v) && v.ReadMsgpack(data) {
			return nil
		}
	}
	if err := mp.Check(data, MaxDepth); err != nil {
		return fmt.Errorf("codec: msgpack decode into %T: malformed input: %w", v, err)
	}
	d := msgpackDecoders.Get().(*msgpackDecoder)
	d.r.Reset(data)
	d.dec.ResetReader(&d.r)
	err := d.dec.Decode(v)
	d.r.Reset(nil)
	msgpackDecoders.Put(d)
	if err != nil {
		return fmt.Errorf("codec: msgpack decode into %T: %w", v, err)
	}
	return nil
}

// isNilPointer reports whether v is a nil pointer, whose methods a fast
// path must not call.
func isNilPointer(v any) bool {
	rv := reflect.ValueOf(v)
	return rv.Kind() == reflect.Pointer && rv.IsNil()
}

type jsonCodec struct{}

func (jsonCodec) Name() string { return JSONName }

func (jsonCodec) Marshal(dst []byte, v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return dst, fmt.Errorf("codec: json encode %T: %w", v, err)
	}
	return append(dst, b...), nil
}

func (jsonCodec) Unmarshal(data []byte, v any) error {
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("codec: json decode into %T: %w", v, err)
	}
	return nil
}

// Borrow decodes data, an encoded byte string, without copying it: the
// result aliases data. It reports false if c cannot (JSON, or data is not
// exactly one byte string); decode with Unmarshal then.
func Borrow(c Codec, data []byte) ([]byte, bool) {
	if _, ok := c.(msgpackCodec); !ok {
		return nil, false
	}
	p, ok := mp.Payload(data, false)
	if !ok {
		return nil, false
	}
	return p[:len(p):len(p)], true
}

// AppendBytes appends b encoded as a byte string in c to dst, as
// Marshal(dst, b) would, without converting b to an interface. It reports
// false if c has no such fast path; use Marshal then.
func AppendBytes(c Codec, dst, b []byte) ([]byte, bool) {
	if _, ok := c.(msgpackCodec); !ok {
		return dst, false
	}
	return appendBin(dst, b), true
}

// AppendBytesHeader appends to dst what AppendBytes(c, dst, b) writes
// before b's own bytes, which follow it unchanged in that encoding: a
// transport can send the header and b as one message without first
// copying b after it. It reports false if c's encoding of b is not a
// header followed by b (JSON); use AppendBytes or Marshal then.
func AppendBytesHeader(c Codec, dst, b []byte) ([]byte, bool) {
	if _, ok := c.(msgpackCodec); !ok {
		return dst, false
	}
	if b == nil {
		return append(dst, mp.Nil), true
	}
	return mp.AppendBinHeader(dst, len(b)), true
}
