package codec

import "encoding/binary"

// The MessagePack encodings of strings and byte slices, written and read
// directly. Anything these do not recognise (nil, other types, a string
// encoded as bin, malformed input) falls back to the general decoder, which
// gives the same result or the same error.

func appendStr(dst []byte, s string) []byte {
	n := len(s)
	switch {
	case n < 32:
		dst = append(dst, 0xa0|byte(n))
	case n < 1<<8:
		dst = append(dst, 0xd9, byte(n))
	case n < 1<<16:
		dst = append(dst, 0xda, byte(n>>8), byte(n))
	default:
		dst = append(dst, 0xdb)
		dst = binary.BigEndian.AppendUint32(dst, uint32(n))
	}
	return append(dst, s...)
}

func appendBin(dst []byte, b []byte) []byte {
	if b == nil {
		return append(dst, 0xc0) // nil, as the general encoder writes it
	}
	n := len(b)
	switch {
	case n < 1<<8:
		dst = append(dst, 0xc4, byte(n))
	case n < 1<<16:
		dst = append(dst, 0xc5, byte(n>>8), byte(n))
	default:
		dst = append(dst, 0xc6)
		dst = binary.BigEndian.AppendUint32(dst, uint32(n))
	}
	return append(dst, b...)
}

// header reads a str or bin header and returns the payload it announces,
// if data is exactly that header and payload.
func header(data []byte, str bool) ([]byte, bool) {
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

func readStr(data []byte) (string, bool) {
	p, ok := header(data, true)
	return string(p), ok
}

func readBin(data []byte) ([]byte, bool) {
	p, ok := header(data, false)
	if !ok {
		return nil, false
	}
	return append([]byte{}, p...), true
}
