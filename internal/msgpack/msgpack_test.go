package msgpack_test

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"testing"

	vm "github.com/vmihailenco/msgpack/v5"

	"github.com/loomrt/loom/internal/msgpack"
)

// reflective encodes v as the general encoder does with compact integers.
func reflective(t testing.TB, v any) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc := vm.NewEncoder(&buf)
	enc.UseCompactInts(true)
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestWritersWriteWhatTheReflectiveEncoderWrites(t *testing.T) {
	for _, v := range []uint64{0, 1, 127, 128, 255, 256, math.MaxUint16, math.MaxUint16 + 1, math.MaxUint32, math.MaxUint32 + 1, math.MaxUint64} {
		if got, want := msgpack.AppendUint(nil, v), reflective(t, v); !bytes.Equal(got, want) {
			t.Errorf("AppendUint(%d) = %x, want %x", v, got, want)
		}
		if v <= math.MaxInt64 {
			if got, want := msgpack.AppendInt(nil, int64(v)), reflective(t, v); !bytes.Equal(got, want) {
				t.Errorf("AppendInt(%d) = %x, want %x", v, got, want)
			}
		}
	}
	for _, n := range []int{0, 1, 31, 32, 255, 256, math.MaxUint16, math.MaxUint16 + 1} {
		s := strings.Repeat("x", n)
		if got, want := msgpack.AppendStr(nil, s), reflective(t, s); !bytes.Equal(got, want) {
			t.Errorf("AppendStr(%d bytes) = %x..., want %x...", n, got[:min(len(got), 8)], want[:min(len(want), 8)])
		}
		b := []byte(s)
		if got, want := msgpack.AppendBin(nil, b), reflective(t, b); !bytes.Equal(got, want) {
			t.Errorf("AppendBin(%d bytes) = %x..., want %x...", n, got[:min(len(got), 8)], want[:min(len(want), 8)])
		}
	}
	for _, n := range []int{0, 15, 16, math.MaxUint16, math.MaxUint16 + 1} {
		want := reflective(t, make([]bool, n))
		if got := msgpack.AppendArrayLen(nil, n); !bytes.HasPrefix(want, got) || len(want)-len(got) != n {
			t.Errorf("AppendArrayLen(%d) = %x, want the header of %x...", n, got, want[:min(len(want), 8)])
		}
	}
	if got := msgpack.AppendMapLen(nil, 7); !bytes.Equal(got, []byte{0x87}) {
		t.Errorf("AppendMapLen(7) = %x", got)
	}
	if got := msgpack.AppendMapLen(nil, 16); !bytes.Equal(got, []byte{0xde, 0, 16}) {
		t.Errorf("AppendMapLen(16) = %x", got)
	}
	if got := msgpack.AppendMapLen(nil, 1<<16); !bytes.Equal(got, []byte{0xdf, 0, 1, 0, 0}) {
		t.Errorf("AppendMapLen(65536) = %x", got)
	}
	if got := msgpack.AppendInt(nil, -1); !bytes.Equal(got, []byte{0xd3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}) {
		t.Errorf("AppendInt(-1) = %x, want int64", got)
	}
	if got := msgpack.AppendBin(nil, nil); !bytes.Equal(got, []byte{0xc4, 0}) {
		t.Errorf("AppendBin(nil) = %x, want an empty bin", got)
	}
}

func TestReaderReadsEveryIntegerForm(t *testing.T) {
	for _, v := range []int64{0, 1, -1, -32, -33, 127, 128, -128, -129, math.MaxInt16, math.MinInt16, math.MaxInt32, math.MinInt32, math.MaxInt64, math.MinInt64} {
		data := reflective(t, v)
		r := msgpack.NewReader(data)
		got, err := r.Int()
		if err != nil || got != v || r.Remaining() != 0 {
			t.Errorf("Int() of %x = %d, %v; want %d", data, got, err, v)
		}
		r = msgpack.NewReader(data)
		u, err := r.Uint()
		if v >= 0 && (err != nil || u != uint64(v)) {
			t.Errorf("Uint() of %x = %d, %v; want %d", data, u, err, v)
		}
		if v < 0 && err == nil {
			t.Errorf("Uint() of %x (%d) = %d, want an error", data, v, u)
		}
	}
	r := msgpack.NewReader([]byte{0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	if _, err := r.Int(); err == nil {
		t.Error("Int() of a uint64 above MaxInt64 did not fail")
	}
}

func TestMalformedInputIsAnError(t *testing.T) {
	deep := append(bytes.Repeat([]byte{0x91}, 40), 0xc0)
	for _, tt := range []struct {
		name string
		data []byte
		read func(r *msgpack.Reader) error
		want string
	}{
		{"an empty input", nil, func(r *msgpack.Reader) error { _, err := r.Uint(); return err }, "truncated"},
		{"a uint16 cut short", []byte{0xcd, 1}, func(r *msgpack.Reader) error { _, err := r.Uint(); return err }, "truncated"},
		{"a string where an integer belongs", []byte{0xa1, 'x'}, func(r *msgpack.Reader) error { _, err := r.Int(); return err }, "want an integer, got type byte 0xa1"},
		{"bytes where a string belongs", []byte{0xc4, 0}, func(r *msgpack.Reader) error { _, err := r.Str(); return err }, "want a string"},
		{"a str claiming 4 GiB", []byte{0xdb, 0xff, 0xff, 0xff, 0xff, 'x'}, func(r *msgpack.Reader) error { _, err := r.Str(); return err }, "truncated"},
		{"a map claiming more pairs than bytes", []byte{0xdf, 0, 0, 1, 0}, func(r *msgpack.Reader) error { _, _, err := r.Container(); return err }, "truncated"},
		{"a map whose pairs the bytes cannot hold", []byte{0x82, 0x01, 0x02, 0x03}, func(r *msgpack.Reader) error { _, _, err := r.Container(); return err }, "truncated"},
		{"a map32 whose pairs the bytes cannot hold", []byte{0xdf, 0, 0, 0, 2, 0x01, 0x02, 0x03}, func(r *msgpack.Reader) error { _, _, err := r.Container(); return err }, "truncated"},
		{"not a container", []byte{0x01}, func(r *msgpack.Reader) error { _, _, err := r.Container(); return err }, "want an array or a map"},
		{"nesting deeper than allowed", deep, func(r *msgpack.Reader) error { return r.Skip(32) }, "nested deeper than 32"},
		{"the reserved byte", []byte{0x92, 0x01, 0xc1}, func(r *msgpack.Reader) error { return r.Skip(32) }, "reserved byte 0xc1"},
		{"an ext claiming more than remains", []byte{0xc7, 9, 1, 2}, func(r *msgpack.Reader) error { return r.Skip(32) }, "longer than the 4-byte message"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := msgpack.NewReader(tt.data)
			if err := tt.read(&r); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
	// Errors give the offset where the offending value starts.
	for _, tt := range []struct {
		data []byte
		want string
	}{
		{[]byte{0x92, 0x01, 0xd9, 0x05, 'a'}, "value at offset 2 claims 5 bytes, 1 remain"},
		{[]byte{0x92, 0x01, 0xc6, 0, 0, 0, 3, 'a'}, "value at offset 2 claims 3 bytes, 1 remain"},
		{[]byte{0x91, 0xdc, 0, 3, 0x01}, "container at offset 1 claims 3 elements, 1 bytes remain"},
		{[]byte{0x91, 0xdf, 0, 0, 0, 2, 0x01, 0x01, 0x01}, "container at offset 1 claims 4 elements, 3 bytes remain"},
		{[]byte{0x91, 0x82, 0x01}, "container at offset 1 claims 4 elements, 1 bytes remain"},
	} {
		if err := msgpack.Check(tt.data, 8); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Check(% x) = %v, want an error containing %q", tt.data, err, tt.want)
		}
	}
	if err := msgpack.Check([]byte{0x01, 0x02}, 8); err == nil || !strings.Contains(err.Error(), "1 trailing bytes") {
		t.Errorf("Check of two values: %v", err)
	}
	if err := msgpack.Check([]byte{0x92, 0x91, 0x01}, 8); !errors.Is(err, msgpack.ErrShort) {
		t.Errorf("Check of an array without its second element: %v, want ErrShort", err)
	}
}

// FuzzReader feeds arbitrary bytes to every reader: none may panic, the
// fast readers agree with the Reader wherever they accept, Skip agrees
// with Check, and whatever Check accepts the reflective decoder survives.
func FuzzReader(f *testing.F) {
	for _, seed := range [][]byte{
		{0x01}, {0xcc, 0xff}, {0xd3, 1, 2, 3, 4, 5, 6, 7, 8}, {0xa3, 'a', 'b', 'c'}, {0xc4, 2, 1, 2},
		{0x92, 0xa1, 'x', 0xc0}, {0x81, 0xa1, 'k', 0x91, 0x01}, {0xdf, 0xff, 0xff, 0xff, 0xff},
		{0xc7, 1, 5, 0}, {0xd8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, {0xc1},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, read := range []func(r *msgpack.Reader) error{
			func(r *msgpack.Reader) error { _, err := r.Uint(); return err },
			func(r *msgpack.Reader) error { _, err := r.Int(); return err },
			func(r *msgpack.Reader) error { _, err := r.Str(); return err },
			func(r *msgpack.Reader) error { _, err := r.Bin(); return err },
			func(r *msgpack.Reader) error { _, err := r.StrOrBin(); return err },
			func(r *msgpack.Reader) error { _, _, err := r.Container(); return err },
			func(r *msgpack.Reader) error { return r.Skip(16) },
		} {
			r := msgpack.NewReader(data)
			if err := read(&r); err == nil && (r.Offset() > len(data) || r.Remaining() < 0) {
				t.Fatalf("a read past the input: offset %d of %d", r.Offset(), len(data))
			}
		}
		if v, next, ok := msgpack.ReadUint(data, 0); ok {
			r := msgpack.NewReader(data)
			w, err := r.Uint()
			if err != nil || w != v || r.Offset() != next {
				t.Fatalf("ReadUint = %d at %d; Reader.Uint = %d at %d, %v", v, next, w, r.Offset(), err)
			}
		}
		if p, next, ok := msgpack.ReadBin(data, 0); ok {
			r := msgpack.NewReader(data)
			q, err := r.Bin()
			if err != nil || !bytes.Equal(p, q) || r.Offset() != next {
				t.Fatalf("ReadBin = %x at %d; Reader.Bin = %x at %d, %v", p, next, q, r.Offset(), err)
			}
		}
		if p, next, ok := msgpack.ReadFixStr(data, 0); ok {
			r := msgpack.NewReader(data)
			q, err := r.Str()
			if err != nil || !bytes.Equal(p, q) || r.Offset() != next {
				t.Fatalf("ReadFixStr = %q at %d; Reader.Str = %q at %d, %v", p, next, q, r.Offset(), err)
			}
		}
		if p, ok := msgpack.Payload(data, false); ok {
			r := msgpack.NewReader(data)
			if q, err := r.Bin(); err != nil || !bytes.Equal(p, q) || r.Remaining() != 0 {
				t.Fatalf("Payload = %x; Reader.Bin = %x, %v, %d left", p, q, err, r.Remaining())
			}
		}
		r := msgpack.NewReader(data)
		skipErr := r.Skip(16)
		checkErr := msgpack.Check(data, 16)
		if (checkErr == nil) != (skipErr == nil && r.Remaining() == 0) {
			t.Fatalf("Check: %v; Skip: %v with %d bytes left", checkErr, skipErr, r.Remaining())
		}
		if checkErr == nil {
			// What Check lets through reaches the reflective decoder, which
			// may refuse it (a map with integer keys into an any) but must
			// not panic or allocate past the input.
			var v any
			_ = vm.Unmarshal(data, &v)
		}
	})
}

// FuzzRoundTrip writes values and reads them back.
func FuzzRoundTrip(f *testing.F) {
	f.Add(uint64(0), int64(0), "", []byte(nil))
	f.Add(uint64(math.MaxUint64), int64(math.MinInt64), strings.Repeat("s", 40), bytes.Repeat([]byte{1}, 300))
	f.Fuzz(func(t *testing.T, u uint64, i int64, s string, b []byte) {
		var buf []byte
		buf = msgpack.AppendArrayLen(buf, 4)
		buf = msgpack.AppendUint(buf, u)
		buf = msgpack.AppendInt(buf, i)
		buf = msgpack.AppendStr(buf, s)
		buf = msgpack.AppendBin(buf, b)
		if err := msgpack.Check(buf, 1); err != nil {
			t.Fatalf("Check of what the writers wrote: %v", err)
		}
		r := msgpack.NewReader(buf)
		n, array, err := r.Container()
		if err != nil || n != 4 || !array {
			t.Fatalf("Container = %d, %v, %v", n, array, err)
		}
		gu, err1 := r.Uint()
		gi, err2 := r.Int()
		gs, err3 := r.Str()
		gb, err4 := r.Bin()
		if err := errors.Join(err1, err2, err3, err4); err != nil || gu != u || gi != i || string(gs) != s || !bytes.Equal(gb, b) || r.Remaining() != 0 {
			t.Fatalf("read back %d %d %q %x (%v), %d bytes left; wrote %d %d %q %x", gu, gi, gs, gb, err, r.Remaining(), u, i, s, b)
		}
	})
}
