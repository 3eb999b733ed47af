// Package msgpack holds the MessagePack primitives Loom writes and reads
// by hand, where the reflective encoder (github.com/vmihailenko/msgpack)
// would cost more than the work: the codec's fast paths for strings and
// byte strings, the walk that checks input before the reflective decoder
// sees it, and the event envelope.
//
// Writers append to a []byte: non-negative integers, strings and byte
// strings in the shortest form, the bytes the reflective encoder writes
// with compact integers; negative integers always as int64. Readers check every length against what remains: malformed
// input is an error, never a panic, and nothing is allocated for a length
// the input cannot hold.
package msgpack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// Nil is the encoding of nil.
const Nil = 0xc0

// AppendUint appends v in the shortest unsigned form.
func AppendUint(dst []byte, v uint64) []byte {
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

// AppendInt appends v: as AppendUint if it is not negative, else as int64.
func AppendInt(dst []byte, v int64) []byte {
	if v >= 0 {
		return AppendUint(dst, uint64(v))
	}
	return binary.BigEndian.AppendUint64(append(dst, 0xd3), uint64(v))
}

// AppendStr appends s as a str.
func AppendStr(dst []byte, s string) []byte {
	switch n := len(s); {
	case n < 32:
		dst = append(dst, 0xa0|byte(n))
	case n <= math.MaxUint8:
		dst = append(dst, 0xd9, byte(n))
	case n <= math.MaxUint16:
		dst = binary.BigEndian.AppendUint16(append(dst, 0xda), uint16(n))
	default:
		dst = binary.BigEndian.AppendUint32(append(dst, 0xdb), uint32(n))
	}
	return append(dst, s...)
}

// AppendBin appends b as a bin; a nil b is an empty bin (write Nil for a
// nil value).
func AppendBin(dst, b []byte) []byte {
	return append(AppendBinHeader(dst, len(b)), b...)
}

// AppendBinHeader appends the header of a bin of n bytes, which follow
// it unchanged.
func AppendBinHeader(dst []byte, n int) []byte {
	switch {
	case n <= math.MaxUint8:
		return append(dst, 0xc4, byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(dst, 0xc5), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(dst, 0xc6), uint32(n))
}

// AppendArrayLen appends the header of an array of n elements.
func AppendArrayLen(dst []byte, n int) []byte {
	switch {
	case n < 16:
		return append(dst, 0x90|byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(dst, 0xdc), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(dst, 0xdd), uint32(n))
}

// AppendMapLen appends the header of a map of n key-value pairs.
func AppendMapLen(dst []byte, n int) []byte {
	switch {
	case n < 16:
		return append(dst, 0x80|byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(dst, 0xde), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(dst, 0xdf), uint32(n))
}

// ErrShort reports input that ends inside a value.
var ErrShort = errors.New("msgpack: truncated inside a value")

// Payload returns the bytes of data's one value, a str (str true) or a bin,
// if data is exactly that value: its header and payload, nothing more.
// The result aliases data.
func Payload(data []byte, str bool) ([]byte, bool) {
	if len(data) == 0 {
		return nil, false
	}
	c := data[0]
	var n, h int
	switch {
	case str && c >= 0xa0 && c <= 0xbf:
		n, h = int(c&0x1f), 1
	case (str && c == 0xd9) || (!str && c == 0xc4):
		if len(data) < 2 {
			return nil, false
		}
		n, h = int(data[1]), 2
	case (str && c == 0xda) || (!str && c == 0xc5):
		if len(data) < 3 {
			return nil, false
		}
		n, h = int(binary.BigEndian.Uint16(data[1:])), 3
	case (str && c == 0xdb) || (!str && c == 0xc6):
		if len(data) < 5 {
			return nil, false
		}
		n, h = int(binary.BigEndian.Uint32(data[1:])), 5
	default:
		return nil, false
	}
	if len(data)-h != n {
		return nil, false
	}
	return data[h:], true
}

// Reader reads MessagePack values from a byte slice, checking every
// length against what remains. What it returns aliases the slice.
type Reader struct {
	b   []byte
	off int
}

// NewReader returns a Reader of b from its start.
func NewReader(b []byte) Reader { return Reader{b: b} }

// Offset is how many bytes have been read.
func (r *Reader) Offset() int { return r.off }

// Remaining is how many bytes are left.
func (r *Reader) Remaining() int { return len(r.b) - r.off }

// Byte reads one byte: a value's type byte.
func (r *Reader) Byte() (byte, error) {
	if r.off >= len(r.b) {
		return 0, ErrShort
	}
	c := r.b[r.off]
	r.off++
	return c, nil
}

// Nil reads a nil if one is next, and reports whether it did.
func (r *Reader) Nil() bool {
	if r.off < len(r.b) && r.b[r.off] == Nil {
		r.off++
		return true
	}
	return false
}

// Next returns the next n bytes.
func (r *Reader) Next(n uint64) ([]byte, error) {
	if uint64(len(r.b)-r.off) < n {
		return nil, ErrShort
	}
	s := r.b[r.off : r.off+int(n) : r.off+int(n)]
	r.off += int(n)
	return s, nil
}

// UintN reads a big-endian unsigned integer of n bytes (1, 2, 4 or 8).
func (r *Reader) UintN(n int) (uint64, error) {
	if len(r.b)-r.off < n {
		return 0, ErrShort
	}
	s := r.b[r.off:]
	r.off += n
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

// Uint reads a non-negative integer in any integer encoding.
func (r *Reader) Uint() (uint64, error) {
	c, err := r.Byte()
	if err != nil {
		return 0, err
	}
	switch {
	case c < 0x80:
		return uint64(c), nil
	case c >= 0xcc && c <= 0xcf:
		return r.UintN(1 << (c - 0xcc))
	case c >= 0xd0 && c <= 0xd3:
		n := 1 << (c - 0xd0)
		v, err := r.UintN(n)
		if err != nil {
			return 0, err
		}
		if v>>(uint(n)*8-1)&1 == 1 {
			return 0, errors.New("msgpack: a negative number where an unsigned one belongs")
		}
		return v, nil
	}
	return 0, typeError("an integer", c)
}

// Int reads a signed integer in any integer encoding.
func (r *Reader) Int() (int64, error) {
	c, err := r.Byte()
	if err != nil {
		return 0, err
	}
	switch {
	case c < 0x80:
		return int64(c), nil
	case c >= 0xe0:
		return int64(int8(c)), nil
	case c >= 0xcc && c <= 0xcf:
		v, err := r.UintN(1 << (c - 0xcc))
		if err == nil && v > math.MaxInt64 {
			return 0, fmt.Errorf("msgpack: integer %d out of the int64 range", v)
		}
		return int64(v), err
	case c >= 0xd0 && c <= 0xd3:
		n := 1 << (c - 0xd0)
		v, err := r.UintN(n)
		shift := 64 - uint(n)*8
		return int64(v<<shift) >> shift, err
	}
	return 0, typeError("an integer", c)
}

// Str reads a str and returns its bytes.
func (r *Reader) Str() ([]byte, error) { return r.bytesOf(true, false) }

// Bin reads a bin and returns its bytes.
func (r *Reader) Bin() ([]byte, error) { return r.bytesOf(false, true) }

// StrOrBin reads a str or a bin and returns its bytes.
func (r *Reader) StrOrBin() ([]byte, error) { return r.bytesOf(true, true) }

func (r *Reader) bytesOf(str, bin bool) ([]byte, error) {
	c, err := r.Byte()
	if err != nil {
		return nil, err
	}
	var n uint64
	switch {
	case str && c&0xe0 == 0xa0:
		n = uint64(c & 0x1f)
	case str && c == 0xd9, bin && c == 0xc4:
		n, err = r.UintN(1)
	case str && c == 0xda, bin && c == 0xc5:
		n, err = r.UintN(2)
	case str && c == 0xdb, bin && c == 0xc6:
		n, err = r.UintN(4)
	default:
		want := "a string or bytes"
		if !bin {
			want = "a string"
		} else if !str {
			want = "bytes"
		}
		return nil, typeError(want, c)
	}
	if err != nil {
		return nil, err
	}
	return r.Next(n)
}

// Container reads the header of an array or a map: its element count (for
// a map, its key-value pairs) and which it is. A count the remaining
// bytes cannot hold (a byte per element, two per pair) is ErrShort.
func (r *Reader) Container() (n uint64, array bool, err error) {
	c, err := r.Byte()
	if err != nil {
		return 0, false, err
	}
	switch {
	case c&0xf0 == 0x80:
		n = uint64(c & 0x0f)
	case c&0xf0 == 0x90:
		n, array = uint64(c&0x0f), true
	case c == 0xdc, c == 0xde:
		n, err = r.UintN(2)
		array = c == 0xdc
	case c == 0xdd, c == 0xdf:
		n, err = r.UintN(4)
		array = c == 0xdd
	default:
		return 0, false, typeError("an array or a map", c)
	}
	need := n // every element takes at least a byte
	if !array {
		need = 2 * n // a key and a value
	}
	if err == nil && need > uint64(r.Remaining()) {
		err = ErrShort
	}
	return n, array, err
}

// Skip steps over one value of any type, refusing containers nested more
// than maxDepth deep.
func (r *Reader) Skip(maxDepth int) error {
	end, err := Walk(r.b, r.off, maxDepth)
	if err != nil {
		return err
	}
	r.off = end
	return nil
}

func typeError(want string, c byte) error {
	return fmt.Errorf("msgpack: want %s, got type byte %#x", want, c)
}

// The readers below are for hot paths that expect the forms the Append
// functions write: no error values, just false for anything else, so that
// the caller can fall back to a Reader, which reads every form and says
// what is wrong.

// ReadUint reads the unsigned integer at b[i:] in a form AppendUint writes
// and returns it with the offset after it.
func ReadUint(b []byte, i int) (v uint64, next int, ok bool) {
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

// ReadFixStr reads the str of fewer than 32 bytes at b[i:] and returns its
// bytes, aliasing b, with the offset after it.
func ReadFixStr(b []byte, i int) (s []byte, next int, ok bool) {
	if i >= len(b) || b[i]&0xe0 != 0xa0 {
		return nil, i, false
	}
	n := int(b[i] & 0x1f)
	i++
	if n > len(b)-i {
		return nil, i, false
	}
	return b[i : i+n : i+n], i + n, true
}

// ReadBin reads the bin at b[i:] and returns its bytes, aliasing b, with
// the offset after it.
func ReadBin(b []byte, i int) (p []byte, next int, ok bool) {
	if i >= len(b) {
		return nil, i, false
	}
	var n int
	switch b[i] {
	case 0xc4:
		if i+2 > len(b) {
			return nil, i, false
		}
		n, i = int(b[i+1]), i+2
	case 0xc5:
		if i+3 > len(b) {
			return nil, i, false
		}
		n, i = int(binary.BigEndian.Uint16(b[i+1:])), i+3
	case 0xc6:
		if i+5 > len(b) {
			return nil, i, false
		}
		n, i = int(binary.BigEndian.Uint32(b[i+1:])), i+5
	default:
		return nil, i, false
	}
	if n > len(b)-i {
		return nil, i, false
	}
	return b[i : i+n : i+n], i + n, true
}
