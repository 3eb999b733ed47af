package codec

import mp "github.com/loomrt/loom/internal/msgpack"

// MaxDepth is how deeply MessagePack arrays and maps may nest in a decoded
// value. Deeper input is refused before decoding, so that hostile bytes
// cannot drive the decoder into deep recursion.
const MaxDepth = 256

// The MessagePack encodings of strings and byte slices are written and
// read directly. Anything these do not recognise (nil, other types, a
// string encoded as bin, malformed input) falls back to the general
// decoder, which gives the same result or the same error.

// appendBin writes b as the general encoder does: nil as nil.
func appendBin(dst []byte, b []byte) []byte {
	if b == nil {
		return append(dst, mp.Nil)
	}
	return mp.AppendBin(dst, b)
}

func readStr(data []byte) (string, bool) {
	p, ok := mp.Payload(data, true)
	return string(p), ok
}

func readBin(data []byte) ([]byte, bool) {
	p, ok := mp.Payload(data, false)
	if !ok {
		return nil, false
	}
	return append([]byte{}, p...), true
}
