package codec_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"

	"github.com/vmihailenco/msgpack/v5"
	"strings"
	"testing"

	"github.com/loomrt/loom/codec"
	mp "github.com/loomrt/loom/internal/msgpack"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type token struct {
	Text  string            `json:"text"`
	Index int               `json:"index"`
	Final bool              `json:"final,omitempty"`
	Meta  map[string]string `json:"meta,omitempty"`
}

func TestCodecsRoundTrip(t *testing.T) {
	in := token{Text: "héllo", Index: 42, Final: true, Meta: map[string]string{"k": "v"}}
	for _, c := range []codec.Codec{codec.MsgPack, codec.JSON} {
		t.Run(c.Name()+" round-trips a struct", func(t *testing.T) {
			b, err := c.Marshal([]byte("prefix"), in)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(string(b), "prefix") {
				t.Fatalf("Marshal did not append to dst: %q", b)
			}
			var out token
			if err := c.Unmarshal(b[len("prefix"):], &out); err != nil {
				t.Fatal(err)
			}
			if out.Text != in.Text || out.Index != in.Index || out.Final != in.Final || out.Meta["k"] != "v" {
				t.Fatalf("got %+v, want %+v", out, in)
			}
		})
	}
}

func TestMsgPackUsesJSONTags(t *testing.T) {
	b, err := codec.MsgPack.Marshal(nil, token{Text: "x"})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := codec.MsgPack.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if _, ok := m["text"]; !ok {
		t.Fatalf("msgpack keys %v: want the json tag name %q", m, "text")
	}
}

func TestByName(t *testing.T) {
	tests := []struct {
		name    string
		want    string
		wantErr string
	}{
		{"msgpack", "msgpack", ""},
		{"", "msgpack", ""},
		{"json", "json", ""},
		{"protobuf", "", `unknown codec "protobuf"`},
	}
	for _, tt := range tests {
		c, err := codec.ByName(tt.name)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ByName(%q) error = %v, want it to contain %q", tt.name, err, tt.wantErr)
			}
			continue
		}
		if err != nil || c.Name() != tt.want {
			t.Errorf("ByName(%q) = %v, %v; want %s", tt.name, c, err, tt.want)
		}
	}
}

func TestDecodeErrorsNameTheType(t *testing.T) {
	for _, c := range []codec.Codec{codec.MsgPack, codec.JSON} {
		var out token
		err := c.Unmarshal([]byte{0xc1, '{'}, &out)
		if err == nil || !strings.Contains(err.Error(), "codec_test.token") {
			t.Errorf("%s: error %v should name the target type", c.Name(), err)
		}
	}
}

// FuzzUnmarshal feeds arbitrary bytes, as a peer could send, to both
// decoders: they must return an error or a value, never panic or hang.
// MessagePack is checked against the reflective decoder it wraps, used
// directly: input that fails the walk (which the reference must not see:
// it allocates what a header claims) is an error, and other input decodes
// as the reference decodes it, fast paths included, or fails as it does.
func FuzzUnmarshal(f *testing.F) {
	good, _ := codec.MsgPack.Marshal(nil, token{Text: "a", Index: 1, Meta: map[string]string{"a": "b"}})
	f.Add(good)
	f.Add([]byte(`{"text":"a","index":1}`))
	f.Add([]byte{0xdd, 0xff, 0xff, 0xff, 0xff}) // array32 claiming 4G elements
	f.Add([]byte{0xdb, 0x7f, 0xff, 0xff, 0xff}) // str32 claiming 2G bytes
	f.Add([]byte{0xa2, 'h', 'i'})
	f.Add([]byte{0xc4, 0})
	f.Add([]byte{0xc0})
	f.Fuzz(func(t *testing.T, data []byte) {
		var tok token
		_ = codec.JSON.Unmarshal(data, &tok)
		var s string
		var b []byte
		var anyv any
		wellFormed := mp.Check(data, codec.MaxDepth) == nil
		for _, target := range []struct {
			got, want any
		}{{&tok, new(token)}, {&s, new(string)}, {&b, new([]byte)}, {&anyv, new(any)}} {
			err := codec.MsgPack.Unmarshal(data, target.got)
			if !wellFormed {
				if err == nil {
					t.Fatalf("into %T: the codec decoded % x, which the walk refuses", target.got, data)
				}
				continue
			}
			werr := referenceDecode(data, target.want)
			switch {
			case (err == nil) != (werr == nil):
				t.Fatalf("into %T: % x: the codec says %v, the reference %v", target.got, data, err, werr)
			case err == nil && !sameValue(t, target.got, target.want):
				t.Fatalf("into %T: the codec decoded % x as %#v, the reference as %#v", target.got, data, target.got, target.want)
			}
		}
	})
}

// referenceDecode decodes data as the codec's general path does, without
// the codec: the reflective decoder reading json tags.
func referenceDecode(data []byte, v any) error {
	dec := msgpack.NewDecoder(bytes.NewReader(data))
	dec.SetCustomStructTag("json")
	return dec.Decode(v)
}

// sameValue reports whether a and b encode to the same bytes: equal
// values, NaNs included, whatever the order of map keys.
func sameValue(t *testing.T, a, b any) bool {
	enc := func(v any) []byte {
		var buf bytes.Buffer
		e := msgpack.NewEncoder(&buf)
		e.SetSortMapKeys(true)
		e.SetCustomStructTag("json")
		if err := e.Encode(v); err != nil {
			t.Fatalf("encode %#v: %v", v, err)
		}
		return buf.Bytes()
	}
	return bytes.Equal(enc(a), enc(b))
}

func BenchmarkMsgPack(b *testing.B) {
	in := token{Text: "hello", Index: 7}
	buf := make([]byte, 0, 64)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		buf, err = codec.MsgPack.Marshal(buf[:0], in)
		if err != nil {
			b.Fatal(err)
		}
		var out token
		if err := codec.MsgPack.Unmarshal(buf, &out); err != nil {
			b.Fatal(err)
		}
	}
}

func TestMsgPackRefusesHostileInput(t *testing.T) {
	deep := make([]byte, codec.MaxDepth+2)
	for i := range deep {
		deep[i] = 0x91 // fixarray of one element, nested
	}
	deep[len(deep)-1] = 0x01
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"an array claiming 4G elements", []byte{0xdd, 0xff, 0xff, 0xff, 0xff}, "longer than"},
		{"a string claiming more bytes than remain", []byte{0xd9, 0x02, 'a'}, "claims 2 bytes, 1 remain"},
		{"nesting deeper than MaxDepth", deep, "nested deeper"},
		{"bytes after the value", []byte{0x01, 0x02}, "trailing"},
		{"the reserved byte", []byte{0xc1}, "0xc1"},
		{"nothing", nil, "truncated"},
	}
	for _, tt := range tests {
		t.Run("refuses "+tt.name, func(t *testing.T) {
			var v any
			err := codec.MsgPack.Unmarshal(tt.data, &v)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

func TestMsgPackAcceptsWhatItEncodes(t *testing.T) {
	values := []any{
		nil, true, 1, -1, 300, -40000, 1 << 40, 3.5, float32(1.5), "", strings.Repeat("x", 70000),
		[]byte{1, 2, 3}, []any{1, "a", []any{nil}}, map[string]any{"a": map[string]any{"b": []int{1, 2}}},
		make([]int, 70000),
	}
	for _, v := range values {
		b, err := codec.MsgPack.Marshal(nil, v)
		if err != nil {
			t.Fatal(err)
		}
		var out any
		if err := codec.MsgPack.Unmarshal(b, &out); err != nil {
			t.Errorf("%T: %v", v, err)
		}
	}
}

// The fast paths for strings and byte slices must write exactly what the
// general encoder writes, and read what it reads.
func TestStringAndBytesFastPathsMatchTheGeneralEncoder(t *testing.T) {
	general := func(v any) []byte {
		var buf bytes.Buffer
		enc := msgpack.NewEncoder(&buf)
		if err := enc.Encode(v); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	for _, n := range []int{0, 1, 31, 32, 255, 256, 65535, 65536} {
		s := strings.Repeat("x", n)
		got, _ := codec.MsgPack.Marshal(nil, s)
		if want := general(s); !bytes.Equal(got, want) {
			t.Errorf("string of %d: fast path wrote % x..., encoder % x...", n, got[:min(8, len(got))], want[:min(8, len(want))])
		}
		var back string
		if err := codec.MsgPack.Unmarshal(got, &back); err != nil || back != s {
			t.Errorf("string of %d did not round-trip: %v", n, err)
		}
		b := []byte(s)
		got, _ = codec.MsgPack.Marshal(nil, &b)
		if want := general(b); !bytes.Equal(got, want) {
			t.Errorf("bytes of %d: fast path wrote % x..., encoder % x...", n, got[:min(8, len(got))], want[:min(8, len(want))])
		}
		var bb []byte
		if err := codec.MsgPack.Unmarshal(got, &bb); err != nil || !bytes.Equal(bb, b) {
			t.Errorf("bytes of %d did not round-trip: %v", n, err)
		}
	}
	var nilBytes []byte
	got, _ := codec.MsgPack.Marshal(nil, nilBytes)
	if want := general(nilBytes); !bytes.Equal(got, want) {
		t.Errorf("nil bytes: % x, want % x", got, want)
	}
	// A string sent to a []byte field, or truncated input, falls back to
	// the general decoder and its answer.
	var b []byte
	if err := codec.MsgPack.Unmarshal([]byte{0xa2, 'h', 'i'}, &b); err != nil || string(b) != "hi" {
		t.Errorf("str into []byte: %q, %v", b, err)
	}
	var s string
	if err := codec.MsgPack.Unmarshal([]byte{0xa5, 'h'}, &s); err == nil {
		t.Error("a truncated string decoded without error")
	}
}

// A header from AppendBytesHeader followed by the bytes is exactly what
// the encoder writes, for every length class and for nil; JSON has no
// such header.
func TestBytesHeaderAndBytesAreTheEncoding(t *testing.T) {
	for _, b := range [][]byte{nil, {}, []byte("x"), bytes.Repeat([]byte("y"), 255), bytes.Repeat([]byte("z"), 256),
		bytes.Repeat([]byte("w"), 65535), bytes.Repeat([]byte("v"), 65536)} {
		want, err := codec.MsgPack.Marshal(nil, b)
		if err != nil {
			t.Fatal(err)
		}
		h, ok := codec.AppendBytesHeader(codec.MsgPack, []byte("keep"), b)
		if !ok {
			t.Fatal("msgpack has no bytes header")
		}
		if got := append(h, b...); !bytes.Equal(got, append([]byte("keep"), want...)) {
			t.Errorf("%d bytes (nil %v): header and bytes % x..., encoder % x...", len(b), b == nil, got[4:min(12, len(got))], want[:min(8, len(want))])
		}
	}
	if dst, ok := codec.AppendBytesHeader(codec.JSON, []byte("keep"), []byte("x")); ok || string(dst) != "keep" {
		t.Errorf("json: AppendBytesHeader = %q, %v; want dst unchanged, false", dst, ok)
	}
}

func TestJSONValuesCrossToMessagePackAndBack(t *testing.T) {
	v, err := codec.ParseJSON([]byte(`{"n": 3, "f": 1.5, "list": [1, {"x": 2}], "s": "hi"}`))
	if err != nil {
		t.Fatal(err)
	}
	m := v.(map[string]any)
	if _, ok := m["n"].(int64); !ok {
		t.Errorf("a whole number became %T, want int64", m["n"])
	}
	if _, ok := m["f"].(float64); !ok {
		t.Errorf("1.5 became %T, want float64", m["f"])
	}
	b, err := codec.MsgPack.Marshal(nil, v)
	if err != nil {
		t.Fatal(err)
	}
	var back any
	if err := codec.MsgPack.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	out, err := json.Marshal(codec.JSONValue(back))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(out), `{"f":1.5,"list":[1,{"x":2}],"n":3,"s":"hi"}`; got != want {
		t.Fatalf("round trip printed %s, want %s", got, want)
	}
	if _, err := codec.ParseJSON([]byte(`{} {}`)); err == nil {
		t.Error("two values parsed")
	}
	if _, err := codec.ParseJSON([]byte(`{"a":`)); err == nil {
		t.Error("broken JSON parsed")
	}
	if got := codec.JSONValue(map[any]any{1: []byte{0xff}}); fmt.Sprint(got) != "map[1:[255]]" {
		t.Errorf("non-text bytes: %v", got)
	}
}

// Whole numbers decode into a handler's integer fields, up to the largest
// uint64; numbers with a fraction or an exponent into float fields.
func TestParseJSONNumbersDecodeIntoIntegerFields(t *testing.T) {
	v, err := codec.ParseJSON([]byte(`{"big": 18446744073709551615, "max": 9223372036854775807, "min": -9223372036854775808, "odd": 9007199254740993, "f": 2.5, "e": 1e3}`))
	if err != nil {
		t.Fatal(err)
	}
	b, err := codec.MsgPack.Marshal(nil, v)
	if err != nil {
		t.Fatal(err)
	}
	var out struct {
		Big uint64  `json:"big"`
		Max int64   `json:"max"`
		Min int64   `json:"min"`
		Odd int64   `json:"odd"`
		F   float64 `json:"f"`
		E   float64 `json:"e"`
	}
	if err := codec.MsgPack.Unmarshal(b, &out); err != nil {
		t.Fatalf("decode %v: %v", v, err)
	}
	if out.Big != math.MaxUint64 || out.Max != math.MaxInt64 || out.Min != math.MinInt64 || out.Odd != 9007199254740993 || out.F != 2.5 || out.E != 1000 {
		t.Fatalf("decoded %+v", out)
	}
	if m := v.(map[string]any); fmt.Sprintf("%T %T", m["max"], m["f"]) != "int64 float64" {
		t.Errorf("max is %T, f is %T; want int64 and float64", m["max"], m["f"])
	}
}

// point implements both fast-path interfaces, with pointer receivers that
// read the value, as a hot-path type does.
type point struct{ X int }

func (p *point) AppendMsgpack(dst []byte) ([]byte, bool) {
	return append(append(dst, 0x81, 0xa1, 'x'), byte(p.X)), p.X >= 0 && p.X < 128
}

func (p *point) ReadMsgpack(data []byte) bool {
	if len(data) != 4 || data[0] != 0x81 || data[1] != 0xa1 || data[2] != 'x' || data[3] >= 128 {
		return false
	}
	p.X = int(data[3])
	return true
}

// A nil pointer is encoded as the reflective encoder encodes it, nil, by
// the fast paths too; decoding into one is an error, not a panic.
func TestNilPointersAreNilNotAPanic(t *testing.T) {
	for _, v := range []any{(*string)(nil), (*[]byte)(nil), (*point)(nil), (*token)(nil)} {
		want, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		var got []byte
		func() {
			defer func() {
				if p := recover(); p != nil {
					t.Errorf("Marshal(%T(nil)) panicked: %v", v, p)
				}
			}()
			got, err = codec.MsgPack.Marshal([]byte("keep"), v)
		}()
		if err != nil || !bytes.Equal(got, append([]byte("keep"), want...)) {
			t.Errorf("Marshal(%T(nil)) = % x, %v; want keep and % x", v, got, err, want)
		}
		func() {
			defer func() {
				if p := recover(); p != nil {
					t.Errorf("Unmarshal into %T(nil) panicked: %v", v, p)
				}
			}()
			for _, data := range [][]byte{{0xa2, 'h', 'i'}, {0xc4, 1, 'b'}, {0x81, 0xa1, 'x', 7}} {
				if err := codec.MsgPack.Unmarshal(data, v); err == nil {
					t.Errorf("Unmarshal(% x) into %T(nil) succeeded", data, v)
				}
			}
		}()
	}
	// The fast paths still serve pointers that are not nil.
	p := &point{X: 5}
	b, err := codec.MsgPack.Marshal(nil, p)
	if err != nil || !bytes.Equal(b, []byte{0x81, 0xa1, 'x', 5}) {
		t.Fatalf("Marshal(&point{5}) = % x, %v", b, err)
	}
	var back point
	if err := codec.MsgPack.Unmarshal(b, &back); err != nil || back.X != 5 {
		t.Fatalf("Unmarshal = %+v, %v", back, err)
	}
}
