package codec

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// MaxDepth is how deeply MessagePack arrays and maps may nest in a decoded
// value. Deeper input is refused before decoding, so that hostile bytes
// cannot drive the decoder into deep recursion.
const MaxDepth = 256

var errTruncated = errors.New("truncated")

// checkMsgPack walks one MessagePack value in data without allocating and
// refuses anything a peer could use to make the decoder misbehave: a length
// that claims more bytes or elements than remain (the decoder would
// preallocate it), nesting deeper than MaxDepth, the reserved byte 0xc1, and
// bytes after the value.
func checkMsgPack(data []byte) error {
	// Elements still to read at each open level. Most messages nest a few
	// levels; a small array keeps the walk off the heap and, unlike a
	// MaxDepth-sized one, does not force every new goroutine's stack to grow.
	var small [16]int
	stack := small[:0]
	depth := 0
	pending := 1 // elements still to read at the current level
	i := 0
	for {
		for pending == 0 {
			if depth == 0 {
				if i != len(data) {
					return fmt.Errorf("%d trailing bytes after the value", len(data)-i)
				}
				return nil
			}
			depth--
			pending = stack[depth]
			stack = stack[:depth]
		}
		if i >= len(data) {
			return errTruncated
		}
		c := data[i]
		i++
		pending--
		var skip, elems int // bytes to skip, child elements to read
		switch {
		case c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3:
		case c >= 0x80 && c <= 0x8f:
			elems = 2 * int(c&0x0f)
		case c >= 0x90 && c <= 0x9f:
			elems = int(c & 0x0f)
		case c >= 0xa0 && c <= 0xbf:
			skip = int(c & 0x1f)
		case c == 0xc1:
			return fmt.Errorf("reserved byte 0xc1 at offset %d", i-1)
		case c == 0xc4 || c == 0xd9: // bin8, str8
			n, err := readLen(data, &i, 1)
			if err != nil {
				return err
			}
			skip = n
		case c == 0xc5 || c == 0xda: // bin16, str16
			n, err := readLen(data, &i, 2)
			if err != nil {
				return err
			}
			skip = n
		case c == 0xc6 || c == 0xdb: // bin32, str32
			n, err := readLen(data, &i, 4)
			if err != nil {
				return err
			}
			skip = n
		case c == 0xc7 || c == 0xc8 || c == 0xc9: // ext8/16/32: length, type, data
			n, err := readLen(data, &i, 1<<(c-0xc7))
			if err != nil {
				return err
			}
			skip = n + 1
		case c == 0xca || c == 0xce || c == 0xd2:
			skip = 4
		case c == 0xcb || c == 0xcf || c == 0xd3:
			skip = 8
		case c == 0xcc || c == 0xd0:
			skip = 1
		case c == 0xcd || c == 0xd1:
			skip = 2
		case c >= 0xd4 && c <= 0xd8: // fixext 1, 2, 4, 8, 16: type then data
			skip = 1 + 1<<(c-0xd4)
		case c == 0xdc || c == 0xde: // array16, map16
			n, err := readLen(data, &i, 2)
			if err != nil {
				return err
			}
			elems = n
			if c == 0xde {
				elems *= 2
			}
		case c == 0xdd || c == 0xdf: // array32, map32
			n, err := readLen(data, &i, 4)
			if err != nil {
				return err
			}
			elems = n
			if c == 0xdf {
				elems *= 2
			}
		}
		if skip > len(data)-i {
			return fmt.Errorf("value at offset %d claims %d bytes, %d remain", i-1, skip, len(data)-i)
		}
		i += skip
		if elems > 0 {
			// Every element takes at least one byte.
			if elems > len(data)-i {
				return fmt.Errorf("container at offset %d claims %d elements, %d bytes remain", i-1, elems, len(data)-i)
			}
			if depth == MaxDepth {
				return fmt.Errorf("nested deeper than %d levels", MaxDepth)
			}
			stack = append(stack, pending)
			depth++
			pending = elems
		}
	}
}

func readLen(data []byte, i *int, size int) (int, error) {
	if len(data)-*i < size {
		return 0, errTruncated
	}
	var n uint64
	switch size {
	case 1:
		n = uint64(data[*i])
	case 2:
		n = uint64(binary.BigEndian.Uint16(data[*i:]))
	case 4:
		n = uint64(binary.BigEndian.Uint32(data[*i:]))
	}
	*i += size
	if n > uint64(len(data)) {
		return 0, fmt.Errorf("length %d at offset %d is longer than the %d-byte message", n, *i-size, len(data))
	}
	return int(n), nil
}
