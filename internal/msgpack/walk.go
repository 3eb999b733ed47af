package msgpack

import (
	"encoding/binary"
	"fmt"
)

// Check reports whether data is exactly one well-formed MessagePack
// value: see Walk; bytes after the value are an error too.
func Check(data []byte, maxDepth int) error {
	end, err := Walk(data, 0, maxDepth)
	if err != nil {
		return err
	}
	if end != len(data) {
		return fmt.Errorf("msgpack: %d trailing bytes after the value", len(data)-end)
	}
	return nil
}

// Walk steps over the one value that starts at data[off:], without
// allocating, and returns the offset after it. It refuses what a peer
// could use to make a decoder misbehave: a length that claims more bytes
// or elements than remain (a decoder would preallocate it), containers
// nested more than maxDepth deep, and the reserved byte 0xc1.
func Walk(data []byte, off, maxDepth int) (int, error) {
	// Elements still to read at each open level. Most messages nest a few
	// levels; a small array keeps the walk off the heap and, unlike a
	// maxDepth-sized one, does not force every new goroutine's stack to
	// grow.
	var small [16]int
	stack := small[:0]
	pending := 1 // elements still to read at the current level
	i := off
	for {
		for pending == 0 {
			if len(stack) == 0 {
				return i, nil
			}
			pending = stack[len(stack)-1]
			stack = stack[:len(stack)-1]
		}
		if i >= len(data) {
			return 0, ErrShort
		}
		at, c := i, data[i]
		i++
		pending--
		var skip, elems int // bytes to skip, child elements to read
		var err error
		switch {
		case c <= 0x7f || c >= 0xe0 || c == Nil || c == 0xc2 || c == 0xc3:
		case c >= 0x80 && c <= 0x8f:
			elems = 2 * int(c&0x0f)
		case c >= 0x90 && c <= 0x9f:
			elems = int(c & 0x0f)
		case c >= 0xa0 && c <= 0xbf:
			skip = int(c & 0x1f)
		case c == 0xc1:
			return 0, fmt.Errorf("msgpack: reserved byte 0xc1 at offset %d", at)
		case c == 0xc4 || c == 0xd9: // bin8, str8
			skip, err = readLen(data, &i, 1)
		case c == 0xc5 || c == 0xda: // bin16, str16
			skip, err = readLen(data, &i, 2)
		case c == 0xc6 || c == 0xdb: // bin32, str32
			skip, err = readLen(data, &i, 4)
		case c == 0xc7 || c == 0xc8 || c == 0xc9: // ext8/16/32: length, type, data
			skip, err = readLen(data, &i, 1<<(c-0xc7))
			skip++
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
			elems, err = readLen(data, &i, 2)
			if c == 0xde {
				elems *= 2
			}
		case c == 0xdd || c == 0xdf: // array32, map32
			elems, err = readLen(data, &i, 4)
			if c == 0xdf {
				elems *= 2
			}
		}
		if err != nil {
			return 0, err
		}
		if skip > len(data)-i {
			return 0, fmt.Errorf("msgpack: value at offset %d claims %d bytes, %d remain", at, skip, len(data)-i)
		}
		i += skip
		if elems > 0 {
			// Every element takes at least one byte.
			if elems > len(data)-i {
				return 0, fmt.Errorf("msgpack: container at offset %d claims %d elements, %d bytes remain", at, elems, len(data)-i)
			}
			if len(stack) == maxDepth {
				return 0, fmt.Errorf("msgpack: nested deeper than %d levels", maxDepth)
			}
			stack = append(stack, pending)
			pending = elems
		}
	}
}

// readLen reads a big-endian length of size bytes at data[*i:].
func readLen(data []byte, i *int, size int) (int, error) {
	if len(data)-*i < size {
		return 0, ErrShort
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
		return 0, fmt.Errorf("msgpack: length %d at offset %d is longer than the %d-byte message", n, *i-size, len(data))
	}
	return int(n), nil
}
