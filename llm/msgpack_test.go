package llm_test

import (
	"bytes"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/loomrt/loom/codec"
	"github.com/loomrt/loom/llm"
)

// plainRequest and plainResponse have Request's and Response's fields and
// tags but not their methods: the codec encodes and decodes them by
// reflection, the reference the hand-written encodings are held to.
type (
	plainRequest  llm.Request
	plainResponse llm.Response
)

func toPlainRequest(r llm.Request) plainRequest    { return plainRequest(r) }
func toPlainResponse(r llm.Response) plainResponse { return plainResponse(r) }

// handWritten is a type that writes and reads its own MessagePack.
type handWritten[T any] interface {
	*T
	codec.MsgpackAppender
	codec.MsgpackReader
}

// encodesAsReflection checks that v encodes to the bytes the reflective
// codec writes for its plain twin, and reads them back as the reflective
// decoder does.
func encodesAsReflection[T, P any, PT handWritten[T]](t *testing.T, v T, plain func(T) P) {
	t.Helper()
	fast, err := codec.MsgPack.Marshal(nil, PT(&v))
	if err != nil {
		t.Fatal(err)
	}
	p := plain(v)
	want, err := codec.MsgPack.Marshal(nil, &p)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(fast, want) {
		t.Fatalf("%T: %x\nthe reflective encoder writes %x", v, fast, want)
	}
	var back T
	if !PT(&back).ReadMsgpack(want) {
		t.Fatalf("%T not read: %x", v, want)
	}
	var ref P
	if err := codec.MsgPack.Unmarshal(want, &ref); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(plain(back), ref) {
		t.Fatalf("read as %+v; the reflective decoder reads %+v", back, ref)
	}
}

// readsAsReflection checks that reading data by hand over start gives
// what the reflective decoder gives over the same value, or, if the hand
// does not read it, leaves the value as start. fresh copies start so that
// the copy shares no memory with it.
func readsAsReflection[T, P any, PT handWritten[T]](t *testing.T, data []byte, start T, fresh func(T) T, plain func(T) P) {
	t.Helper()
	fast, ref := fresh(start), plain(fresh(start))
	if PT(&fast).ReadMsgpack(data) {
		if err := codec.MsgPack.Unmarshal(data, &ref); err != nil {
			t.Fatalf("read %+v by hand; the reflective decoder fails: %v", fast, err)
		}
		if !reflect.DeepEqual(plain(fast), ref) {
			t.Fatalf("read %+v by hand; the reflective decoder reads %+v", fast, ref)
		}
	} else if !reflect.DeepEqual(fast, start) {
		t.Fatalf("not read, yet changed: %+v", fast)
	}
}

func tokens(rng *rand.Rand) []uint32 {
	switch rng.IntN(6) {
	case 0:
		return nil
	case 1:
		return []uint32{}
	}
	n := []int{1, 15, 16, 300, 70000}[rng.IntN(5)]
	out := make([]uint32, n)
	for i := range out {
		out[i] = []uint32{uint32(rng.IntN(128)), uint32(rng.IntN(256)), uint32(rng.IntN(70000)), rng.Uint32(), math.MaxUint32}[rng.IntN(5)]
	}
	return out
}

func text(rng *rand.Rand) string {
	return strings.Repeat("x", []int{0, 1, 31, 32, 255, 256, 70000}[rng.IntN(7)])
}

func count(rng *rand.Rand) int {
	return []int{0, 1, 127, 128, 255, 256, 65536, math.MaxInt}[rng.IntN(8)]
}

func randomRequest(rng *rand.Rand) llm.Request {
	return llm.Request{ID: text(rng), Model: text(rng), TokenIDs: tokens(rng), Generated: count(rng),
		MaxTokens: count(rng), StopTokenIDs: tokens(rng)}
}

func randomResponse(rng *rand.Rand) llm.Response {
	return llm.Response{TokenIDs: tokens(rng), FinishReason: text(rng),
		Worker: []uint64{0, 1, 200, math.MaxUint32 + 1, math.MaxUint64}[rng.IntN(5)], CachedTokens: count(rng)}
}

// Request and Response write the bytes the reflective encoder writes, and
// read them back as it does.
func TestMsgpackMatchesTheReflectiveCodec(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	// 100 values reach every size and value class the generators offer
	// (the hand-written code, internal/msgpack and codec are covered
	// exactly as by 500); more only adds time, and under -race each value
	// of 70000 tokens costs a fifth of a second.
	for range 100 {
		encodesAsReflection(t, randomRequest(rng), toPlainRequest)
		encodesAsReflection(t, randomResponse(rng), toPlainResponse)
	}
	// Negative counts are left to the reflective encoder, which the codec
	// then uses.
	neg := llm.Response{CachedTokens: -1}
	if _, ok := neg.AppendMsgpack(nil); ok {
		t.Fatal("a negative count was written by hand")
	}
	got, err := codec.MsgPack.Marshal(nil, &neg)
	plain := plainResponse(neg)
	want, _ := codec.MsgPack.Marshal(nil, &plain)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("a negative count: %x, %v; want %x", got, err, want)
	}
}

// Forms the hand-written reader does not take are left to the reflective
// decoder: the codec still reads them.
func TestMsgpackOtherFormsStillDecode(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
		read bool
	}{
		{"keys in another order, an unknown key", []byte("\x83\xa6worker\x05\xa5extra\x92\x01\xa0\xa9token_ids\x91\x07"), true},
		{"a signed encoding of a count", []byte("\x82\xa9token_ids\x90\xadcached_tokens\xd0\x05"), true},
		{"a key twice", []byte("\x82\xa6worker\x01\xa6worker\x02"), false},
		{"nil for a count", []byte("\x81\xadcached_tokens\xc0"), false},
		{"a negative count", []byte("\x81\xadcached_tokens\xff"), false},
		{"a float token", []byte("\x81\xa9token_ids\x91\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00"), false},
		{"a token above 32 bits", []byte("\x81\xa9token_ids\x91\xcf\x00\x00\x00\x01\x00\x00\x00\x00"), false},
		{"a bin key", []byte("\x81\xc4\x06worker\x01"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var fast llm.Response
			if got := fast.ReadMsgpack(tc.data); got != tc.read {
				t.Fatalf("read by hand: %v, want %v", got, tc.read)
			}
			if !tc.read && !reflect.DeepEqual(fast, llm.Response{}) {
				t.Fatalf("not read, yet changed: %+v", fast)
			}
			var viaCodec llm.Response
			var ref plainResponse
			errFast := codec.MsgPack.Unmarshal(tc.data, &viaCodec)
			errRef := codec.MsgPack.Unmarshal(tc.data, &ref)
			if (errFast == nil) != (errRef == nil) || !reflect.DeepEqual(viaCodec, llm.Response(ref)) {
				t.Fatalf("through the codec: %+v, %v; the reflective decoder: %+v, %v", viaCodec, errFast, ref, errRef)
			}
		})
	}
}

// Whatever the bytes, a Request or Response the hand-written reader reads
// is what the reflective decoder reads, into a zero value or over one
// already set; input it does not read leaves the value as it was.
func FuzzMsgpackRead(f *testing.F) {
	rng := rand.New(rand.NewPCG(3, 5))
	for range 8 {
		req, resp := randomRequest(rng), randomResponse(rng)
		req.TokenIDs, resp.TokenIDs = req.TokenIDs[:min(len(req.TokenIDs), 20)], resp.TokenIDs[:min(len(resp.TokenIDs), 20)]
		req.ID, req.Model, resp.FinishReason = req.ID[:min(len(req.ID), 40)], "m", resp.FinishReason[:min(len(resp.FinishReason), 40)]
		b, _ := req.AppendMsgpack(nil)
		f.Add(b)
		b, _ = resp.AppendMsgpack(nil)
		f.Add(b)
	}
	f.Add([]byte("\x83\xa6worker\x05\xa5extra\x92\x01\xa0\xa9token_ids\x91\x07"))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, start := range []llm.Request{{}, {ID: "old", TokenIDs: []uint32{9}, MaxTokens: 3}} {
			readsAsReflection(t, data, start, func(r llm.Request) llm.Request {
				r.TokenIDs = slices.Clone(r.TokenIDs)
				return r
			}, toPlainRequest)
		}
		for _, start := range []llm.Response{{}, {TokenIDs: []uint32{9}, Worker: 4}} {
			readsAsReflection(t, data, start, func(r llm.Response) llm.Response {
				r.TokenIDs = slices.Clone(r.TokenIDs)
				return r
			}, toPlainResponse)
		}
	})
}

// Reading a Response allocates its token slice and nothing else: the
// stream of a request decodes one per token.
func TestMsgpackReadAllocatesOnlyTheTokens(t *testing.T) {
	resp := llm.Response{TokenIDs: []uint32{5}, Worker: 3, CachedTokens: 2}
	data, _ := resp.AppendMsgpack(nil)
	if n := testing.AllocsPerRun(1000, func() {
		var r llm.Response
		if !r.ReadMsgpack(data) {
			t.Fatal("not read")
		}
	}); n != 1 {
		t.Fatalf("reading a one-token response allocates %v times, want 1", n)
	}
}
