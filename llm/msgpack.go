package llm

import (
	"math"

	mp "github.com/loomrt/loom/internal/msgpack"
)

// Request and Response cross the request plane once per request and once
// per token. They write and read their own MessagePack encoding, the bytes
// the codec's reflective encoder gives (see codec.MsgpackAppender), so
// that neither side spends its time in reflection. Input in any other form
// (an unknown key is fine; a nil, a float or a key twice is not) is left
// to the reflective decoder.

// AppendMsgpack appends r's MessagePack encoding to dst. It reports false,
// leaving dst as it was, for a negative count, which the reflective
// encoder writes.
func (r *Request) AppendMsgpack(dst []byte) ([]byte, bool) {
	if r.Generated < 0 || r.MaxTokens < 0 {
		return dst, false
	}
	n := 4
	if r.Generated != 0 {
		n++
	}
	if len(r.StopTokenIDs) > 0 {
		n++
	}
	dst = mp.AppendMapLen(dst, n)
	dst = mp.AppendStr(append(dst, 0xa2, 'i', 'd'), r.ID)
	dst = mp.AppendStr(append(dst, 0xa5, 'm', 'o', 'd', 'e', 'l'), r.Model)
	dst = appendTokens(append(dst, 0xa9, 't', 'o', 'k', 'e', 'n', '_', 'i', 'd', 's'), r.TokenIDs)
	if r.Generated != 0 {
		dst = mp.AppendUint(append(dst, 0xa9, 'g', 'e', 'n', 'e', 'r', 'a', 't', 'e', 'd'), uint64(r.Generated))
	}
	dst = mp.AppendUint(append(dst, 0xaa, 'm', 'a', 'x', '_', 't', 'o', 'k', 'e', 'n', 's'), uint64(r.MaxTokens))
	if len(r.StopTokenIDs) > 0 {
		dst = appendTokens(append(dst, 0xae, 's', 't', 'o', 'p', '_', 't', 'o', 'k', 'e', 'n', '_', 'i', 'd', 's'), r.StopTokenIDs)
	}
	return dst, true
}

// ReadMsgpack decodes data into r, as the reflective decoder would, if
// data is a map in the form AppendMsgpack writes (its keys in any order,
// unknown ones skipped); it reports false otherwise, leaving r as it was.
func (r *Request) ReadMsgpack(data []byte) bool {
	t, rd := *r, mp.NewReader(data)
	if !readMap(&rd, func(key []byte) (uint8, bool) {
		switch string(key) {
		case "id":
			return 1, readString(&rd, &t.ID)
		case "model":
			return 2, readString(&rd, &t.Model)
		case "token_ids":
			return 4, readTokens(&rd, &t.TokenIDs)
		case "generated":
			return 8, readCount(&rd, &t.Generated)
		case "max_tokens":
			return 16, readCount(&rd, &t.MaxTokens)
		case "stop_token_ids":
			return 32, readTokens(&rd, &t.StopTokenIDs)
		}
		return 0, rd.Skip(maxSkipDepth) == nil
	}) {
		return false
	}
	*r = t
	return true
}

// AppendMsgpack appends r's MessagePack encoding to dst. It reports false,
// leaving dst as it was, for negative cached tokens, which the reflective
// encoder writes.
func (r *Response) AppendMsgpack(dst []byte) ([]byte, bool) {
	if r.CachedTokens < 0 {
		return dst, false
	}
	n := 1
	if r.FinishReason != "" {
		n++
	}
	if r.Worker != 0 {
		n++
	}
	if r.CachedTokens != 0 {
		n++
	}
	dst = mp.AppendMapLen(dst, n)
	dst = appendTokens(append(dst, 0xa9, 't', 'o', 'k', 'e', 'n', '_', 'i', 'd', 's'), r.TokenIDs)
	if r.FinishReason != "" {
		dst = mp.AppendStr(append(dst, 0xad, 'f', 'i', 'n', 'i', 's', 'h', '_', 'r', 'e', 'a', 's', 'o', 'n'), r.FinishReason)
	}
	if r.Worker != 0 {
		dst = mp.AppendUint(append(dst, 0xa6, 'w', 'o', 'r', 'k', 'e', 'r'), r.Worker)
	}
	if r.CachedTokens != 0 {
		dst = mp.AppendUint(append(dst, 0xad, 'c', 'a', 'c', 'h', 'e', 'd', '_', 't', 'o', 'k', 'e', 'n', 's'), uint64(r.CachedTokens))
	}
	return dst, true
}

// ReadMsgpack decodes data into r as Request.ReadMsgpack does.
func (r *Response) ReadMsgpack(data []byte) bool {
	t, rd := *r, mp.NewReader(data)
	if !readMap(&rd, func(key []byte) (uint8, bool) {
		switch string(key) {
		case "token_ids":
			return 1, readTokens(&rd, &t.TokenIDs)
		case "finish_reason":
			return 2, readString(&rd, &t.FinishReason)
		case "worker":
			v, err := rd.Uint()
			t.Worker = v
			return 4, err == nil
		case "cached_tokens":
			return 8, readCount(&rd, &t.CachedTokens)
		}
		return 0, rd.Skip(maxSkipDepth) == nil
	}) {
		return false
	}
	*r = t
	return true
}

// readMap reads what rd holds, one whole map whose keys are strings,
// each at most once. For each key, field reads the value from rd and
// returns the key's bit in the set of keys seen (0 for a key it skips)
// and whether it read it.
func readMap(rd *mp.Reader, field func(key []byte) (bit uint8, ok bool)) bool {
	n, array, err := rd.Container()
	if err != nil || array {
		return false
	}
	var seen uint8
	for range n {
		key, err := rd.Str()
		if err != nil {
			return false
		}
		bit, ok := field(key)
		if !ok || seen&bit != 0 {
			return false
		}
		seen |= bit
	}
	return rd.Remaining() == 0
}

// maxSkipDepth bounds the nesting of an unknown key's value, as the
// codec bounds every value it decodes (codec.MaxDepth).
const maxSkipDepth = 256

// appendTokens appends ids as an array of unsigned integers, nil as nil.
func appendTokens(dst []byte, ids []uint32) []byte {
	if ids == nil {
		return append(dst, mp.Nil)
	}
	dst = mp.AppendArrayLen(dst, len(ids))
	for _, id := range ids {
		dst = mp.AppendUint(dst, uint64(id))
	}
	return dst
}

// readString reads a str into s.
func readString(rd *mp.Reader, s *string) bool {
	b, err := rd.Str()
	if err != nil {
		return false
	}
	*s = string(b)
	return true
}

// readTokens reads nil, or an array of unsigned integers that fit in 32
// bits into a new slice.
func readTokens(rd *mp.Reader, ids *[]uint32) bool {
	if rd.Nil() {
		*ids = nil
		return true
	}
	n, array, err := rd.Container()
	if err != nil || !array {
		return false
	}
	out := make([]uint32, n)
	for i := range out {
		v, err := rd.Uint()
		if err != nil || v > math.MaxUint32 {
			return false
		}
		out[i] = uint32(v)
	}
	*ids = out
	return true
}

// readCount reads a non-negative integer that fits in an int.
func readCount(rd *mp.Reader, n *int) bool {
	v, err := rd.Uint()
	if err != nil || v > math.MaxInt {
		return false
	}
	*n = int(v)
	return true
}
