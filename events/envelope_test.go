package events_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"runtime"
	"testing"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/loomrt/loom/codec"
	"github.com/loomrt/loom/events"
)

func sampleEnvelope() events.Envelope {
	return events.Envelope{PublisherID: 0x1a2b3c, InstanceID: 42, Sequence: 7, PublishedAt: 1_700_000_000_123_456_789,
		Topic: "kv_events", Payload: []byte(`{"hashes":[1,2]}`)}
}

func TestEnvelopeRoundTripsInBothCodecs(t *testing.T) {
	for _, name := range []string{codec.MsgPackName, codec.JSONName} {
		t.Run(name, func(t *testing.T) {
			e := sampleEnvelope()
			b, err := e.Append(nil, name)
			if err != nil {
				t.Fatal(err)
			}
			var got events.Envelope
			gotName, err := events.DecodeEnvelope(b, &got)
			if err != nil || gotName != name {
				t.Fatalf("decode: %v (codec %q)", err, gotName)
			}
			if got.PublisherID != e.PublisherID || got.InstanceID != e.InstanceID || got.Sequence != e.Sequence ||
				got.PublishedAt != e.PublishedAt || got.Topic != e.Topic || !bytes.Equal(got.Payload, e.Payload) {
				t.Fatalf("got %+v, want %+v", got, e)
			}
		})
	}
}

// TestMsgPackEnvelopeIsPlainMessagePack checks the wire format against an
// independent MessagePack decoder, as a Python or Rust tool would read it:
// Dynamo's named map by default, the positional array in compact form.
func TestMsgPackEnvelopeIsPlainMessagePack(t *testing.T) {
	e := sampleEnvelope()
	var m map[string]any
	if err := msgpack.Unmarshal(e.AppendMsgPack(nil), &m); err != nil {
		t.Fatal(err)
	}
	if len(m) != 7 || m["topic"] != "kv_events" || !bytes.Equal(m["payload"].([]byte), e.Payload) ||
		fmt.Sprint(m["publisher_id"], m["sequence"], m["published_at"], m["published_at_ns"], m["instance_id"]) != "1715004 7 1700000000123 1700000000123456789 42" {
		t.Fatalf("decoded as %#v", m)
	}
	var a []any
	if err := msgpack.Unmarshal(e.AppendMsgPackCompact(nil), &a); err != nil {
		t.Fatal(err)
	}
	if len(a) != 6 || a[3] != "kv_events" || !bytes.Equal(a[4].([]byte), e.Payload) || fmt.Sprint(a[0], a[1], a[2], a[5]) != "1715004 7 1700000000123456789 42" {
		t.Fatalf("compact form decoded as %#v", a)
	}
	e.InstanceID = 0
	var b []any
	if err := msgpack.Unmarshal(e.AppendMsgPackCompact(nil), &b); err != nil || len(b) != 5 {
		t.Fatalf("without an instance id: %#v %v", b, err)
	}
	clear(m)
	if err := msgpack.Unmarshal(e.AppendMsgPack(nil), &m); err != nil || len(m) != 6 || m["instance_id"] != nil {
		t.Fatalf("map without an instance id: %#v %v", m, err)
	}
	var j map[string]any
	if err := json.Unmarshal(e.AppendJSON(nil), &j); err != nil {
		t.Fatal(err)
	}
	if j["topic"] != "kv_events" || j["payload"].(map[string]any)["hashes"] == nil || j["published_at"] != 1700000000123.0 {
		t.Fatalf("JSON envelope decoded as %v", j)
	}
}

// dynamoEnvelope is Dynamo's envelope struct: encoded by field name, in
// its field order, published_at in milliseconds.
type dynamoEnvelope struct {
	Topic       string `msgpack:"topic"`
	PublisherID uint64 `msgpack:"publisher_id"`
	Sequence    uint64 `msgpack:"sequence"`
	PublishedAt uint64 `msgpack:"published_at"`
	Payload     []byte `msgpack:"payload"`
}

func TestDynamoEnvelopesDecodeWithTheirTimeInMilliseconds(t *testing.T) {
	b := mustMsgPack(t, dynamoEnvelope{Topic: "kv_events", PublisherID: 99, Sequence: 3, PublishedAt: 1_763_740_000_123, Payload: []byte{0x81, 0xa1, 'x', 1}})
	var e events.Envelope
	if _, err := events.DecodeEnvelope(b, &e); err != nil {
		t.Fatal(err)
	}
	if e.PublishedAt != 1_763_740_000_123_000_000 || e.PublisherID != 99 || e.Sequence != 3 || e.Topic != "kv_events" || len(e.Payload) != 4 {
		t.Fatalf("got %+v", e)
	}
	// Through the general path (keys in another order) the same.
	b = mustMsgPack(t, map[string]any{"payload": []byte{1}, "published_at": uint64(1_763_740_000_123), "sequence": 3, "publisher_id": 99, "topic": "kv_events"})
	if _, err := events.DecodeEnvelope(b, &e); err != nil || e.PublishedAt != 1_763_740_000_123_000_000 {
		t.Fatalf("general path: %+v %v", e, err)
	}
	// Loom's earlier map and JSON held nanoseconds in published_at: too
	// large to be milliseconds, they are read as they are.
	b = mustMsgPack(t, map[string]any{"payload": []byte{1}, "published_at": int64(1_763_740_000_123_456_789), "sequence": 3, "publisher_id": 99, "topic": "t"})
	if _, err := events.DecodeEnvelope(b, &e); err != nil || e.PublishedAt != 1_763_740_000_123_456_789 {
		t.Fatalf("earlier map: %+v %v", e, err)
	}
	if _, err := events.DecodeEnvelope([]byte(`{"publisher_id":1,"sequence":0,"published_at":1763740000123456789,"topic":"t","payload":1}`), &e); err != nil || e.PublishedAt != 1_763_740_000_123_456_789 {
		t.Fatalf("earlier JSON: %+v %v", e, err)
	}
	if _, err := events.DecodeEnvelope([]byte(`{"publisher_id":1,"sequence":0,"published_at":1763740000123,"topic":"t","payload":1}`), &e); err != nil || e.PublishedAt != 1_763_740_000_123_000_000 {
		t.Fatalf("JSON in milliseconds: %+v %v", e, err)
	}
}

// TestLoomEnvelopeDecodesAsDynamosStruct decodes Loom's default envelope
// into Dynamo's struct with a decoder that, like Dynamo's, fails on
// missing fields and skips unknown ones.
func TestLoomEnvelopeDecodesAsDynamosStruct(t *testing.T) {
	e := sampleEnvelope()
	var d dynamoEnvelope
	dec := msgpack.NewDecoder(bytes.NewReader(e.AppendMsgPack(nil)))
	if err := dec.Decode(&d); err != nil {
		t.Fatal(err)
	}
	if d.Topic != e.Topic || d.PublisherID != e.PublisherID || d.Sequence != e.Sequence || d.PublishedAt != 1_700_000_000_123 || !bytes.Equal(d.Payload, e.Payload) {
		t.Fatalf("Dynamo's struct got %+v", d)
	}
}

func TestDecodeEnvelopeAcceptsLongerArraysFromLaterVersions(t *testing.T) {
	b, err := msgpack.Marshal([]any{uint64(5), 1, 2, "t", []byte("p"), uint64(9), "a later field", map[string]int{"x": 1}})
	if err != nil {
		t.Fatal(err)
	}
	var e events.Envelope
	if _, err := events.DecodeEnvelope(b, &e); err != nil || e.InstanceID != 9 || string(e.Payload) != "p" {
		t.Fatalf("got %+v %v", e, err)
	}
}

func TestDecodeEnvelopeAcceptsOtherKeyOrdersAndUnknownKeys(t *testing.T) {
	b, err := msgpack.Marshal(map[string]any{
		"topic": "load_metrics", "payload": []byte{1, 2}, "sequence": int8(3), "publisher_id": uint64(1) << 40,
		"published_at": -5, "future_field": map[string]any{"a": []any{1, "x", 2.5, nil, true}},
	})
	if err != nil {
		t.Fatal(err)
	}
	var e events.Envelope
	if _, err := events.DecodeEnvelope(b, &e); err != nil {
		t.Fatal(err)
	}
	if e.Topic != "load_metrics" || e.Sequence != 3 || e.PublisherID != 1<<40 || e.PublishedAt != -5_000_000 {
		t.Fatalf("got %+v", e)
	}
}

func TestDecodeEnvelopeRefusesMalformedInput(t *testing.T) {
	good := sampleEnvelope()
	for name, data := range map[string][]byte{
		"empty":             nil,
		"short array":       {0x93, 1, 2, 3},
		"not a container":   {0xa3, 'a', 'b', 'c'},
		"cut short":         good.AppendMsgPack(nil)[:20],
		"trailing bytes":    append(good.AppendMsgPack(nil), 0),
		"missing payload":   mustMsgPack(t, map[string]any{"publisher_id": 1, "sequence": 0, "topic": "t"}),
		"publisher id 0":    mustMsgPack(t, map[string]any{"publisher_id": 0, "sequence": 0, "topic": "t", "payload": []byte{}}),
		"negative sequence": mustMsgPack(t, map[string]any{"publisher_id": 1, "sequence": -1, "topic": "t", "payload": []byte{}}),
		"huge map count":    {0xdf, 0xff, 0xff, 0xff, 0xff},
		"huge bin":          append([]byte{0x81, 0xa7}, append([]byte("payload"), 0xc6, 0xff, 0xff, 0xff, 0xff)...),
		"deep nesting":      append(append([]byte{0x81, 0xa1, 'x'}, bytes.Repeat([]byte{0x91}, 100)...), 0xc0),
		"reserved byte":     {0x81, 0xa1, 'x', 0xc1},
		"bad JSON":          []byte(`{"publisher_id":1,`),
		"JSON no payload":   []byte(`{"publisher_id":1,"sequence":0,"topic":"t"}`),
	} {
		var e events.Envelope
		if _, err := events.DecodeEnvelope(data, &e); !errors.Is(err, events.ErrEnvelope) {
			t.Errorf("%s: got %v, want an error wrapping ErrEnvelope", name, err)
		}
	}
}

func mustMsgPackF(v any) []byte {
	b, err := msgpack.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func mustMsgPack(t *testing.T, v any) []byte {
	t.Helper()
	b, err := msgpack.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestJSONEnvelopeNeedsAJSONPayload(t *testing.T) {
	e := sampleEnvelope()
	e.Payload = []byte{0xff, 0x00}
	if _, err := e.Append(nil, codec.JSONName); err == nil {
		t.Fatal("a JSON envelope took a payload that is not JSON")
	}
}

func FuzzDecodeEnvelope(f *testing.F) {
	e := sampleEnvelope()
	f.Add(e.AppendMsgPack(nil))
	f.Add(e.AppendMsgPackCompact(nil))
	f.Add(e.AppendJSON(nil))
	f.Add(mustMsgPackF(dynamoEnvelope{Topic: "kv_events", PublisherID: 9, Sequence: 1, PublishedAt: 1_763_740_000_123, Payload: []byte{1}}))
	e.InstanceID, e.PublishedAt, e.Payload = 0, -1, bytes.Repeat([]byte{7}, 300)
	f.Add(e.AppendMsgPack(nil))
	f.Add(e.AppendMsgPackCompact(nil))
	f.Add([]byte{0xdf, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte(`{"publisher_id":1,"sequence":2,"topic":"t","payload":null}`))
	f.Add([]byte(`{"publisher_id":1,"sequence":0,"topic":"\u0000\"\u00e9","payload":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var got events.Envelope
		name, err := events.DecodeEnvelope(data, &got)
		if err != nil {
			if !errors.Is(err, events.ErrEnvelope) {
				t.Fatalf("error %v does not wrap ErrEnvelope", err)
			}
			return
		}
		// What decodes re-encodes and decodes to the same.
		b, err := got.Append(nil, name)
		if err != nil {
			t.Fatalf("re-encode of %+v: %v", got, err)
		}
		var again events.Envelope
		if _, err := events.DecodeEnvelope(b, &again); err != nil {
			t.Fatalf("decode of re-encoded %x: %v", b, err)
		}
		if again.PublisherID != got.PublisherID || again.Sequence != got.Sequence || again.Topic != got.Topic ||
			again.PublishedAt != got.PublishedAt || again.InstanceID != got.InstanceID || !bytes.Equal(again.Payload, got.Payload) {
			t.Fatalf("round trip changed %+v into %+v", got, again)
		}
	})
}

// FuzzEnvelopeEncoding checks that every envelope the encoder can write
// decodes to itself (the fast path and the general one agree).
func FuzzEnvelopeEncoding(f *testing.F) {
	f.Add(uint64(1), uint64(0), uint64(0), int64(0), "kv_events", []byte("x"))
	f.Add(uint64(math.MaxUint64), uint64(math.MaxUint64), uint64(1<<40), int64(math.MinInt64), "a", make([]byte, 70000))
	f.Fuzz(func(t *testing.T, pub, inst, seq uint64, at int64, topic string, payload []byte) {
		if pub == 0 || len(topic) > 128 {
			return
		}
		e := events.Envelope{PublisherID: pub, InstanceID: inst, Sequence: seq, PublishedAt: at, Topic: topic, Payload: payload}
		for _, b := range [][]byte{e.AppendMsgPack(nil), e.AppendMsgPackCompact(nil)} {
			var got events.Envelope
			if _, err := events.DecodeEnvelope(b, &got); err != nil {
				t.Fatal(err)
			}
			if got.PublisherID != pub || got.InstanceID != inst || got.Sequence != seq || got.PublishedAt != at || got.Topic != topic || !bytes.Equal(got.Payload, payload) {
				t.Fatalf("got %+v, want %+v", got, e)
			}
		}
	})
}

func TestFrameRoundTripsAndRefusesBadHeaders(t *testing.T) {
	b := events.AppendFrame(nil, []byte("abc"))
	b = events.AppendFrame(b, nil)
	if !bytes.Equal(b[:5], []byte{1, 0, 0, 0, 3}) {
		t.Fatalf("header %x, want version 1 and length 3 big-endian", b[:5])
	}
	p, rest, err := events.ParseFrame(b, 16)
	if err != nil || string(p) != "abc" || len(rest) != 5 {
		t.Fatalf("%q %d %v", p, len(rest), err)
	}
	fr := events.NewFrameReader(bytes.NewReader(b), 16)
	for _, want := range []string{"abc", ""} {
		if p, err := fr.Next(); err != nil || string(p) != want {
			t.Fatalf("reader: %q %v, want %q", p, err, want)
		}
	}
	if _, err := fr.Next(); err != io.EOF {
		t.Fatalf("at the end: %v, want io.EOF", err)
	}
	for name, data := range map[string][]byte{
		"short header": {1, 0, 0},
		"version 2":    {2, 0, 0, 0, 0},
		"over the max": {1, 0, 0, 1, 0},
		"claims 4 GiB": {1, 0xff, 0xff, 0xff, 0xff},
		"body cut":     {1, 0, 0, 0, 4, 'a'},
		"version 0":    {0, 0, 0, 0, 1, 'x'},
	} {
		if _, _, err := events.ParseFrame(data, 16); !errors.Is(err, events.ErrFrame) {
			t.Errorf("%s: %v, want ErrFrame", name, err)
		}
	}
	if _, err := events.NewFrameReader(bytes.NewReader([]byte{1, 0, 0, 0, 4, 'a'}), 16).Next(); err != io.ErrUnexpectedEOF {
		t.Errorf("reader on a cut frame: %v, want io.ErrUnexpectedEOF", err)
	}
}

func FuzzParseFrame(f *testing.F) {
	f.Add(events.AppendFrame(nil, []byte("hello")))
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{9, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		const max = 1 << 16
		p, rest, err := events.ParseFrame(data, max)
		if err != nil {
			if !errors.Is(err, events.ErrFrame) {
				t.Fatalf("error %v does not wrap ErrFrame", err)
			}
		} else if !bytes.Equal(events.AppendFrame(nil, p), data[:len(data)-len(rest)]) {
			t.Fatal("frame does not re-encode to its bytes")
		}
		// The stream reader agrees frame by frame and never reads past
		// what a header may claim.
		fr := events.NewFrameReader(bytes.NewReader(data), max)
		for i := 0; ; i++ {
			q, err := fr.Next()
			if err != nil {
				break
			}
			if len(q) > max {
				t.Fatalf("frame of %d bytes over the max", len(q))
			}
			if i == 0 && p != nil && !bytes.Equal(p, q) {
				t.Fatalf("FrameReader read %x, ParseFrame %x", q, p)
			}
		}
	})
}

// TestEnvelopeSizes pins the sizes docs/events.md gives: a 128-byte
// payload from a runtime (a 53-bit publisher id, an instance id, a time of
// now) in each form.
func TestEnvelopeSizes(t *testing.T) {
	e := events.Envelope{PublisherID: 1<<52 + 12345, InstanceID: 1<<52 + 678, Sequence: 0,
		PublishedAt: 1_763_740_000_123_456_789, Topic: "kv_events", Payload: make([]byte, 128)}
	if n := len(e.AppendMsgPack(nil)); n != 255 {
		t.Errorf("Dynamo's map: %d bytes, docs say 255", n)
	}
	if n := len(e.AppendMsgPackCompact(nil)); n != 169 {
		t.Errorf("compact array: %d bytes, docs say 169", n)
	}
}

// BenchmarkEnvelope encodes and decodes each MessagePack form, the work a
// publisher and a subscriber do per event besides the payload's codec.
func BenchmarkEnvelope(b *testing.B) {
	e := sampleEnvelope()
	for _, form := range []struct {
		name   string
		append func([]byte) []byte
	}{
		{"dynamo map", e.AppendMsgPack},
		{"compact", e.AppendMsgPackCompact},
	} {
		data := form.append(nil)
		b.Run("encode "+form.name, func(b *testing.B) {
			buf := make([]byte, 0, 256)
			b.ReportAllocs()
			for b.Loop() {
				buf = form.append(buf[:0])
			}
		})
		b.Run("decode "+form.name, func(b *testing.B) {
			var d events.Envelope
			b.ReportAllocs()
			for b.Loop() {
				if _, err := events.DecodeEnvelope(data, &d); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestFrameReaderAllocatesWhatArrivesNotWhatAHeaderClaims holds the
// docs' "never an allocation of the claimed length" for FrameReader: a
// header claiming the maximum with a few bytes behind it costs about
// those bytes, not the maximum.
func TestFrameReaderAllocatesWhatArrivesNotWhatAHeaderClaims(t *testing.T) {
	const max = 64 << 20
	data := append([]byte{events.FrameVersion, 0x04, 0, 0, 0}, make([]byte, 100)...) // claims 64 MiB
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := events.NewFrameReader(bytes.NewReader(data), max).Next()
	runtime.ReadMemStats(&after)
	if err != io.ErrUnexpectedEOF {
		t.Fatalf("a frame cut short: %v, want io.ErrUnexpectedEOF", err)
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > 4<<20 {
		t.Fatalf("reading a header that claims 64 MiB followed by 100 bytes allocated %d bytes", n)
	}
}
