package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"maps"
	"math"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"
	"time"
	"unicode/utf8"
)

func TestPreface(t *testing.T) {
	good := Preface{Version: Version, MaxFrameSize: 1 << 20, InitialWindow: 64 << 10}
	b := AppendPreface(nil, good)
	if len(b) != PrefaceSize {
		t.Fatalf("preface is %d bytes, want %d", len(b), PrefaceSize)
	}
	got, err := ReadPreface(bytes.NewReader(b))
	if err != nil || got != good {
		t.Fatalf("ReadPreface = %+v, %v; want %+v", got, err, good)
	}

	tests := []struct {
		name string
		b    []byte
		want string
	}{
		{"a peer that is not Loom is told so", []byte("GET / HTTP/1.1\r\n\r\n"), "not a Loom connection"},
		{"a peer of another version gets a version error", AppendPreface(nil, Preface{Version: 2, MaxFrameSize: 1 << 20, InitialWindow: 1}), "peer speaks protocol version 2"},
		{"a tiny max frame size is refused", AppendPreface(nil, Preface{Version: 1, MaxFrameSize: 10, InitialWindow: 1}), "max frame size 10"},
		{"a huge window is refused", AppendPreface(nil, Preface{Version: 1, MaxFrameSize: 1 << 20, InitialWindow: 1 << 31}), "initial window 2147483648"},
		{"a truncated preface is refused", []byte("LOOM\x01"), "inside the preface"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ReadPreface(bytes.NewReader(tt.b))
			if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, ErrProtocol) {
				t.Fatalf("err = %v, want a protocol error containing %q", err, tt.want)
			}
		})
	}
	var ve *VersionError
	if _, err := ParsePreface(AppendPreface(nil, Preface{Version: 9, MaxFrameSize: 1 << 20, InitialWindow: 1})); !errors.As(err, &ve) || ve.Got != 9 {
		t.Fatalf("err = %v, want *VersionError{Got: 9}", err)
	}
}

func TestWriterReaderRoundTrip(t *testing.T) {
	var w Writer
	h := &OpenHeader{Path: "ns/comp/ep", Codec: "json", RequestID: "r1", TraceParent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", Timeout: 1500 * time.Millisecond, Headers: map[string]string{"a": "1"}}
	if err := w.Open(1, h, []byte("req")); err != nil {
		t.Fatal(err)
	}
	w.Data(1, []byte("hello"))
	w.Data(1, nil)
	w.End(1, CodeApplication, "boom")
	w.Cancel(3, FlagStop)
	w.Cancel(5, FlagKill)
	w.Credit(1, 4096)
	w.Ping([8]byte{1, 2, 3, 4, 5, 6, 7, 8})
	w.Pong([8]byte{8, 7, 6, 5, 4, 3, 2, 1})
	w.GoAway(7, CodeDraining, "bye")

	r := NewReader(iotest.OneByteReader(bytes.NewReader(w.Bytes())), 1<<20)
	next := func(wantT Type, wantF Flags, wantS uint32) []byte {
		t.Helper()
		f, err := r.ReadFrame()
		if err != nil {
			t.Fatalf("ReadFrame: %v", err)
		}
		if f.Type != wantT || f.Flags != wantF || f.Stream != wantS {
			t.Fatalf("frame = %v/%x/%d, want %v/%x/%d", f.Type, f.Flags, f.Stream, wantT, wantF, wantS)
		}
		return f.Payload
	}
	o, err := ParseOpen(next(TypeOpen, 0, 1))
	if err != nil {
		t.Fatal(err)
	}
	if string(o.Path()) != h.Path || string(o.Codec()) != "json" || string(o.RequestID()) != "r1" || string(o.TraceParent()) != h.TraceParent || o.Timeout != h.Timeout || string(o.Payload()) != "req" {
		t.Fatalf("open = %+v", o)
	}
	if v, ok := o.Header("a"); !ok || string(v) != "1" {
		t.Fatalf("header a = %q, %v", v, ok)
	}
	if p := next(TypeData, 0, 1); string(p) != "hello" {
		t.Fatalf("data = %q", p)
	}
	if p := next(TypeData, 0, 1); len(p) != 0 {
		t.Fatalf("empty data = %q", p)
	}
	code, msg, err := ParseEnd(next(TypeEnd, 0, 1))
	if err != nil || code != CodeApplication || string(msg) != "boom" {
		t.Fatalf("end = %v %q %v", code, msg, err)
	}
	next(TypeCancel, FlagStop, 3)
	next(TypeCancel, FlagKill, 5)
	if n, err := ParseCredit(next(TypeCredit, 0, 1)); n != 4096 || err != nil {
		t.Fatalf("credit = %d, %v", n, err)
	}
	if p := next(TypePing, 0, 0); !bytes.Equal(p, []byte{1, 2, 3, 4, 5, 6, 7, 8}) {
		t.Fatalf("ping = %v", p)
	}
	next(TypePong, 0, 0)
	last, code, reason, err := ParseGoAway(next(TypeGoAway, 0, 0))
	if last != 7 || code != CodeDraining || string(reason) != "bye" || err != nil {
		t.Fatalf("goaway = %d %v %q %v", last, code, reason, err)
	}
	if _, err := r.ReadFrame(); err != io.EOF {
		t.Fatalf("at the end: %v, want io.EOF", err)
	}
}

func frame(t Type, f Flags, stream uint32, n uint32, payload []byte) []byte {
	b := []byte{byte(t), byte(f)}
	b = binary.BigEndian.AppendUint32(b, stream)
	b = binary.BigEndian.AppendUint32(b, n)
	return append(b, payload...)
}

func TestReaderRejects(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want string
	}{
		{"a 4 GiB length is a protocol error, not an allocation", frame(TypeData, 0, 1, 0xFFFFFFFF, nil), "4294967295-byte payload, above the maximum frame size 65536"},
		{"an unknown frame type is a protocol error", frame(0x42, 0, 1, 0, nil), "unknown frame type 0x42"},
		{"a DATA frame on stream 0 is a protocol error", frame(TypeData, 0, 0, 0, nil), "DATA frame on stream 0"},
		{"a PING on a stream is a protocol error", frame(TypePing, 0, 3, 8, make([]byte, 8)), "PING frame on stream 3"},
		{"a short PING is a protocol error", frame(TypePing, 0, 0, 4, make([]byte, 4)), "PING frame payload is 4 bytes, want 8"},
		{"a CANCEL with both flags is a protocol error", frame(TypeCancel, 3, 1, 0, nil), "want exactly one of stop"},
		{"flags on DATA are a protocol error", frame(TypeData, 1, 1, 0, nil), "has flags 0x01"},
		{"an END without a code is a protocol error", frame(TypeEnd, 0, 1, 1, []byte{0}), "END frame payload is 1 bytes"},
		{"a truncated frame is an unexpected EOF", frame(TypeData, 0, 1, 10, []byte("abc")), "ended inside a frame (13 of 20 bytes)"},
		{"a truncated header is an unexpected EOF", []byte{2, 0, 0}, "ended inside a frame (3 of 10 bytes)"},
		{"an OPEN on a stream id above 2^31-1 is a protocol error", frame(TypeOpen, 0, 1<<31, 0, nil), "OPEN frame on stream 2147483648, above the largest stream id 2147483647"},
		{"an END on stream 2^32-1 is a protocol error", frame(TypeEnd, 0, 0xFFFFFFFF, 2, []byte{0, 0}), "above the largest stream id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			r := NewReader(bytes.NewReader(tt.in), 64<<10)
			_, err := r.ReadFrame()
			runtime.ReadMemStats(&after)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, ErrProtocol) {
				t.Fatalf("err = %v, want a protocol error containing %q", err, tt.want)
			}
			if _, err2 := r.ReadFrame(); err2 != err {
				t.Fatalf("error is not sticky: %v then %v", err, err2)
			}
			if d := after.TotalAlloc - before.TotalAlloc; d > 256<<10 {
				t.Fatalf("rejecting the frame allocated %d bytes", d)
			}
		})
	}
}

// The largest stream id is a stream like any other.
func TestReaderAcceptsTheLargestStreamID(t *testing.T) {
	var w Writer
	w.Data(MaxStreamID, []byte("last"))
	w.End(MaxStreamID, CodeOK, "")
	r := NewReader(bytes.NewReader(w.Bytes()), 1<<20)
	for _, want := range []Type{TypeData, TypeEnd} {
		if f, err := r.ReadFrame(); err != nil || f.Type != want || f.Stream != MaxStreamID {
			t.Fatalf("frame on stream %d: %v %d, %v; want %v", MaxStreamID, f.Type, f.Stream, err, want)
		}
	}
}

func TestReaderGrowsAndShrinks(t *testing.T) {
	var w Writer
	big := bytes.Repeat([]byte("x"), 1<<20)
	w.Data(1, big)
	for range 2 * shrinkAfter {
		w.Data(1, []byte("small"))
	}
	r := NewReader(bytes.NewReader(w.Bytes()), 2<<20)
	f, err := r.ReadFrame()
	if err != nil || !bytes.Equal(f.Payload, big) {
		t.Fatalf("big frame: %v", err)
	}
	for range 2 * shrinkAfter {
		if f, err := r.ReadFrame(); err != nil || string(f.Payload) != "small" {
			t.Fatalf("small frame = %q, %v", f.Payload, err)
		}
	}
	if len(r.buf) > readerInitSize {
		t.Fatalf("buffer still %d bytes after %d small frames", len(r.buf), 2*shrinkAfter)
	}
}

func TestParseOpenRejects(t *testing.T) {
	good, err := AppendOpen(nil, &OpenHeader{Path: "a/b/c", Headers: map[string]string{"k": "v"}}, []byte("p"))
	if err != nil {
		t.Fatal(err)
	}
	dup := binary.BigEndian.AppendUint64(nil, 0)
	dup = append(dup, 0, 1, 'p', 0, 0, 0, 2, 1, 'k', 0, 0, 1, 'k', 0, 0)
	tests := []struct {
		name string
		in   []byte
		want string
	}{
		{"an empty payload names the timeout", nil, "truncated in timeout"},
		{"a missing path names the path", good[:11], "truncated in path at byte 10"},
		{"an empty path is refused", append(binary.BigEndian.AppendUint64(nil, 0), 0, 0, 0, 0, 0, 0), "path is empty"},
		{"a timeout above MaxInt64 is refused", append(binary.BigEndian.AppendUint64(nil, 1<<63), good[8:]...), "timeout 9223372036854775808"},
		{"a header cut short names the header", good[:len(good)-3], "truncated in header value"},
		{"a duplicate header key is refused", dup, `header key "k" appears twice`},
		{"too many headers are refused", append(binary.BigEndian.AppendUint64(nil, 0), 0, 1, 'p', 0, 0, 0, 65), "65 headers, limit 64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseOpen(tt.in)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestAppendOpenRejects(t *testing.T) {
	tests := []struct {
		name string
		h    OpenHeader
		want string
	}{
		{"an empty path", OpenHeader{}, "path is empty"},
		{"a long codec", OpenHeader{Path: "p", Codec: strings.Repeat("c", 256)}, "codec"},
		{"a negative timeout", OpenHeader{Path: "p", Timeout: -1}, "negative"},
		{"an empty header key", OpenHeader{Path: "p", Headers: map[string]string{"": "v"}}, "header key"},
	}
	for _, tt := range tests {
		t.Run("refuses "+tt.name, func(t *testing.T) {
			b, err := AppendOpen([]byte("x"), &tt.h, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) || string(b) != "x" {
				t.Fatalf("AppendOpen = %q, %v; want x and an error containing %q", b, err, tt.want)
			}
		})
	}
}

func TestEndMessageIsTruncatedAtARuneBoundary(t *testing.T) {
	var w Writer
	w.End(1, CodeInternal, strings.Repeat("é", MaxMessageLen))
	f, err := NewReader(bytes.NewReader(w.Bytes()), 1<<20).ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	_, msg, _ := ParseEnd(f.Payload)
	if len(msg) > MaxMessageLen || !strings.HasPrefix(strings.Repeat("é", MaxMessageLen), string(msg)) {
		t.Fatalf("message is %d bytes or split a rune", len(msg))
	}
}

func TestCodes(t *testing.T) {
	// The values are the protocol: this test is the guard against renumbering.
	want := map[Code]string{0: "OK", 1: "Application", 2: "NotFound", 3: "Overloaded", 4: "Draining", 5: "Cancelled", 6: "DeadlineExceeded", 7: "Internal", 8: "Protocol", 9: "BadRequest", 10: "Reset", 11: "Refused", 12: "TooLarge", 99: "Code(99)"}
	for c, s := range want {
		if c.String() != s {
			t.Errorf("Code(%d).String() = %q, want %q", c, c.String(), s)
		}
	}
	// docs/protocol.md's table: each constant has its number.
	for n, c := range []Code{CodeOK, CodeApplication, CodeNotFound, CodeOverloaded, CodeDraining, CodeCancelled, CodeDeadlineExceeded, CodeInternal, CodeProtocol, CodeBadRequest, CodeReset, CodeRefused, CodeTooLarge} {
		if c != Code(n) {
			t.Errorf("%v is %d, want %d", c, c, n)
		}
	}
	if !CodeOverloaded.Retryable() || !CodeDraining.Retryable() || CodeApplication.Retryable() {
		t.Error("only Overloaded and Draining are retryable")
	}
}

// loopReader replays b forever.
type loopReader struct {
	b   []byte
	off int
}

func (l *loopReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		c := copy(p[n:], l.b[l.off:])
		n += c
		l.off = (l.off + c) % len(l.b)
	}
	return n, nil
}

func TestReadAndWriteDataDoNotAllocate(t *testing.T) {
	var w Writer
	p := make([]byte, 64)
	for range 100 {
		w.Data(1, p)
	}
	r := NewReader(&loopReader{b: append([]byte(nil), w.Bytes()...)}, DefaultMaxFrameSize)
	if n := testing.AllocsPerRun(1000, func() {
		if _, err := r.ReadFrame(); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("ReadFrame allocates %v times per frame", n)
	}
	if n := testing.AllocsPerRun(1000, func() {
		if w.Len() > 1<<20 {
			w.Reset()
		}
		w.Data(1, p)
	}); n != 0 {
		t.Errorf("Writer.Data allocates %v times per frame", n)
	}
	h := &OpenHeader{Path: "a/b/c", Codec: "json", Headers: map[string]string{"k": "v"}}
	w.Reset()
	_ = w.Open(1, h, p)
	open := append([]byte(nil), w.Bytes()[HeaderSize:]...)
	if n := testing.AllocsPerRun(1000, func() {
		o, err := ParseOpen(open)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := o.Header("k"); !ok {
			t.Fatal("no header k")
		}
	}); n != 0 {
		t.Errorf("ParseOpen allocates %v times", n)
	}
}

func BenchmarkReadData64(b *testing.B) {
	var w Writer
	p := make([]byte, 64)
	for range 512 {
		w.Data(1, p)
	}
	r := NewReader(&loopReader{b: append([]byte(nil), w.Bytes()...)}, DefaultMaxFrameSize)
	b.SetBytes(HeaderSize + 64)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.ReadFrame(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkWriteData64(b *testing.B) {
	var w Writer
	p := make([]byte, 64)
	b.SetBytes(HeaderSize + 64)
	b.ReportAllocs()
	for b.Loop() {
		if w.Len() > 64<<10 {
			w.Reset()
		}
		w.Data(1, p)
	}
}

func BenchmarkParseOpen(b *testing.B) {
	h := &OpenHeader{Path: "ns/component/endpoint", Codec: "msgpack", RequestID: "0123456789abcdef", TraceParent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", Timeout: time.Second, Headers: map[string]string{"tenant": "a", "priority": "high"}}
	open, _ := AppendOpen(nil, h, make([]byte, 64))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseOpen(open); err != nil {
			b.Fatal(err)
		}
	}
}

// FrameBuffered says whether ReadFrame can return without reading: a
// whole frame is buffered, or an error is sticky. A header alone, or a
// frame cut short, is not enough.
func TestFrameBuffered(t *testing.T) {
	var w Writer
	w.Data(1, []byte("first"))
	w.Data(1, []byte("second"))
	all := w.Bytes()
	cut := len(all) - 3 // the second frame lacks its last 3 bytes
	pr, pw := io.Pipe()
	go func() {
		pw.Write(all[:cut])
		pw.Write(all[cut:])
		pw.Close()
	}()
	r := NewReader(pr, 1<<20)
	if r.FrameBuffered() {
		t.Fatal("FrameBuffered before anything was read")
	}
	if f, err := r.ReadFrame(); err != nil || string(f.Payload) != "first" {
		t.Fatalf("first frame: %q, %v", f.Payload, err)
	}
	if r.FrameBuffered() {
		t.Fatalf("FrameBuffered with %d bytes of a %d-byte frame", cut-(HeaderSize+5), len(all)-(HeaderSize+5))
	}
	if _, _, ok := r.Peek(); ok {
		t.Fatal("Peek saw a frame that is not read whole")
	}
	if f, err := r.ReadFrame(); err != nil || string(f.Payload) != "second" {
		t.Fatalf("second frame: %q, %v", f.Payload, err)
	}
	if _, err := r.ReadFrame(); err != io.EOF {
		t.Fatalf("after the frames: %v, want EOF", err)
	}
	if !r.FrameBuffered() {
		t.Fatal("FrameBuffered is false after a sticky error: ReadFrame would not block")
	}

	w.Reset()
	w.Data(1, []byte("whole"))
	w.Data(1, nil)
	w.End(9, CodeOK, "")
	r = NewReader(bytes.NewReader(w.Bytes()), 1<<20)
	if _, err := r.ReadFrame(); err != nil {
		t.Fatal(err)
	}
	if !r.FrameBuffered() {
		t.Fatal("an empty frame read with the one before it is not reported buffered")
	}
	for _, want := range []struct {
		t      Type
		stream uint32
	}{{TypeData, 1}, {TypeEnd, 9}} {
		typ, stream, ok := r.Peek()
		if !ok || typ != want.t || stream != want.stream {
			t.Fatalf("Peek = %v %d %v, want %v %d", typ, stream, ok, want.t, want.stream)
		}
		if f, err := r.ReadFrame(); err != nil || f.Type != want.t || f.Stream != want.stream {
			t.Fatalf("ReadFrame after Peek = %v %d, %v", f.Type, f.Stream, err)
		}
	}
}

// TestLimitsOfTheProtocolDoc holds the Limits table of docs/protocol.md:
// each field is accepted at its limit, written and read back, and refused
// one past it.
func TestLimitsOfTheProtocolDoc(t *testing.T) {
	headers := func(n int) map[string]string {
		m := map[string]string{}
		for i := range n {
			m[strings.Repeat("k", i+1)] = "v"
		}
		return m
	}
	for _, tt := range []struct {
		name        string
		atLimit     OpenHeader
		pastLimit   OpenHeader
		wantRefusal string
	}{
		{"path: 1 to 65535 bytes", OpenHeader{Path: strings.Repeat("p", 65535)}, OpenHeader{Path: strings.Repeat("p", 65536)}, "path is 65536 bytes, limit 65535"},
		{"codec: up to 255 bytes", OpenHeader{Path: "p", Codec: strings.Repeat("c", 255)}, OpenHeader{Path: "p", Codec: strings.Repeat("c", 256)}, "is 256 bytes, limit 255"},
		{"request id: up to 255 bytes", OpenHeader{Path: "p", RequestID: strings.Repeat("r", 255)}, OpenHeader{Path: "p", RequestID: strings.Repeat("r", 256)}, "request id is 256 bytes, limit 255"},
		{"traceparent: up to 255 bytes", OpenHeader{Path: "p", TraceParent: strings.Repeat("t", 255)}, OpenHeader{Path: "p", TraceParent: strings.Repeat("t", 256)}, "traceparent is 256 bytes, limit 255"},
		{"header key: up to 255 bytes", OpenHeader{Path: "p", Headers: map[string]string{strings.Repeat("k", 255): "v"}}, OpenHeader{Path: "p", Headers: map[string]string{strings.Repeat("k", 256): "v"}}, "is 256 bytes, want 1 to 255"},
		{"header value: up to 65535 bytes", OpenHeader{Path: "p", Headers: map[string]string{"k": strings.Repeat("v", 65535)}}, OpenHeader{Path: "p", Headers: map[string]string{"k": strings.Repeat("v", 65536)}}, "value is 65536 bytes, limit 65535"},
		{"headers per OPEN: 64", OpenHeader{Path: "p", Headers: headers(64)}, OpenHeader{Path: "p", Headers: headers(65)}, "65 headers, limit 64"},
		{"timeout: at most 2^63-1 ns, not negative", OpenHeader{Path: "p", Timeout: math.MaxInt64}, OpenHeader{Path: "p", Timeout: -1}, "negative"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b, err := AppendOpen(nil, &tt.atLimit, []byte("req"))
			if err != nil {
				t.Fatalf("at the limit: %v", err)
			}
			o, err := ParseOpen(b)
			if err != nil {
				t.Fatalf("at the limit, read back: %v", err)
			}
			if got := headerOf(&o); got.Path != tt.atLimit.Path || got.Codec != tt.atLimit.Codec || got.RequestID != tt.atLimit.RequestID ||
				got.TraceParent != tt.atLimit.TraceParent || got.Timeout != tt.atLimit.Timeout || !maps.Equal(got.Headers, tt.atLimit.Headers) || string(o.Payload()) != "req" {
				t.Fatal("at the limit, the fields did not round-trip")
			}
			if _, err := AppendOpen(nil, &tt.pastLimit, nil); err == nil || !strings.Contains(err.Error(), tt.wantRefusal) {
				t.Fatalf("past the limit: %v, want an error containing %q", err, tt.wantRefusal)
			}
		})
	}
	t.Run("max frame size: 4096 to 2^30; initial window: 0 to 2^31-1", func(t *testing.T) {
		for _, p := range []Preface{
			{Version: Version, MaxFrameSize: 4096, InitialWindow: 0},
			{Version: Version, MaxFrameSize: 1 << 30, InitialWindow: 1<<31 - 1},
		} {
			if got, err := ParsePreface(AppendPreface(nil, p)); err != nil || got != p {
				t.Errorf("preface %+v at the limits: %+v, %v", p, got, err)
			}
		}
		for _, p := range []Preface{
			{Version: Version, MaxFrameSize: 4095},
			{Version: Version, MaxFrameSize: 1<<30 + 1},
			{Version: Version, MaxFrameSize: 4096, InitialWindow: 1 << 31},
		} {
			if _, err := ParsePreface(AppendPreface(nil, p)); !errors.Is(err, ErrProtocol) {
				t.Errorf("preface %+v past the limits: %v, want a protocol error", p, err)
			}
		}
		b := AppendPreface(nil, Preface{Version: Version, MaxFrameSize: 4096})
		b[5] = 1
		if _, err := ParsePreface(b); err == nil || !strings.Contains(err.Error(), "reserved byte is 0x01") {
			t.Errorf("a preface with its reserved byte set: %v", err)
		}
	})
	t.Run("END message and GOAWAY reason: 1024 bytes, cut at a character boundary", func(t *testing.T) {
		var w Writer
		long := strings.Repeat("x", 2*MaxMessageLen)
		w.End(1, CodeApplication, strings.Repeat("y", MaxMessageLen))
		w.GoAway(1, CodeDraining, long)
		// "x" then 2-byte characters: byte 1024 is the second byte of one.
		w.GoAway(1, CodeDraining, "x"+strings.Repeat("é", MaxMessageLen))
		r := NewReader(bytes.NewReader(w.Bytes()), 1<<20)
		f, _ := r.ReadFrame()
		if _, msg, _ := ParseEnd(f.Payload); len(msg) != MaxMessageLen {
			t.Errorf("an END message of exactly %d bytes became %d", MaxMessageLen, len(msg))
		}
		f, _ = r.ReadFrame()
		if _, _, reason, _ := ParseGoAway(f.Payload); string(reason) != long[:MaxMessageLen] {
			t.Errorf("a long GOAWAY reason became %d bytes, want the first %d", len(reason), MaxMessageLen)
		}
		f, _ = r.ReadFrame()
		if _, _, reason, _ := ParseGoAway(f.Payload); len(reason) != MaxMessageLen-1 || !utf8.Valid(reason) {
			t.Errorf("a GOAWAY reason cut inside a character became %d bytes (valid UTF-8: %v), want %d", len(reason), utf8.Valid(reason), MaxMessageLen-1)
		}
	})
}

// A receiver keeps at most MaxMessageLen bytes of an END message or a
// GOAWAY reason, cut at a character boundary: a peer cannot make it log or
// hand its caller a message as long as a frame.
func TestReceiversCutLongMessages(t *testing.T) {
	long := "x" + strings.Repeat("é", 4<<10) // byte 1024 is inside a character
	end := append([]byte{0, 1}, long...)
	if _, msg, err := ParseEnd(end); err != nil || len(msg) != MaxMessageLen-1 || !utf8.Valid(msg) {
		t.Errorf("END message of %d bytes read as %d bytes (valid UTF-8: %v), %v; want %d", len(long), len(msg), utf8.Valid(msg), err, MaxMessageLen-1)
	}
	goAway := append([]byte{0, 0, 0, 1, 0, 8}, long...)
	if _, _, reason, err := ParseGoAway(goAway); err != nil || len(reason) != MaxMessageLen-1 || !utf8.Valid(reason) {
		t.Errorf("GOAWAY reason of %d bytes read as %d bytes (valid UTF-8: %v), %v; want %d", len(long), len(reason), utf8.Valid(reason), err, MaxMessageLen-1)
	}
	short := append([]byte{0, 1}, "boom"...)
	if _, msg, _ := ParseEnd(short); string(msg) != "boom" {
		t.Errorf("a short END message read as %q", msg)
	}
}
