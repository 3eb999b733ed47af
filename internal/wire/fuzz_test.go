package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"maps"
	"testing"
	"testing/iotest"
	"time"
)

const fuzzMaxFrame = 64 << 10

func FuzzReader(f *testing.F) {
	var w Writer
	_ = w.Open(1, &OpenHeader{Path: "a/b/c", Codec: "json", Timeout: time.Second, Headers: map[string]string{"k": "v"}}, []byte("req"))
	w.Data(1, []byte("data"))
	w.End(1, CodeOK, "")
	w.Cancel(1, FlagKill)
	w.Credit(1, 100)
	w.Ping([8]byte{1})
	w.Pong([8]byte{1})
	w.GoAway(1, CodeDraining, "bye")
	f.Add(w.Bytes())
	f.Add(frame(TypeData, 0, 1, 0xFFFFFFFF, nil))
	f.Add(frame(0x42, 0, 1, 0, nil))
	f.Add([]byte{})
	f.Add(append(frame(TypeData, 0, 1, 3, []byte("abc")), frame(TypeData, 0, MaxStreamID+1, 0, nil)...))
	f.Fuzz(func(t *testing.T, in []byte) {
		// The reference: the layout of docs/protocol.md, read by slicing.
		want, wantEnd := referenceFrames(in, fuzzMaxFrame)
		// The Reader fed a byte at a time, so its buffer handling is
		// exercised too.
		r := NewReader(iotest.OneByteReader(bytes.NewReader(in)), fuzzMaxFrame)
		for i := 0; ; i++ {
			fr, err := r.ReadFrame()
			if cap(r.buf) > max(readerInitSize, HeaderSize+fuzzMaxFrame) {
				t.Fatalf("buffer grew to %d bytes, above the frame limit", cap(r.buf))
			}
			if err != nil {
				if err != io.EOF && !errors.Is(err, ErrProtocol) {
					t.Fatalf("unexpected error kind: %v", err)
				}
				if i != len(want) || (err == io.EOF) != (wantEnd == io.EOF) {
					t.Fatalf("the Reader ended after %d frames with %v; the reference after %d with %v", i, err, len(want), wantEnd)
				}
				return
			}
			if i >= len(want) || fr.Type != want[i].Type || fr.Flags != want[i].Flags || fr.Stream != want[i].Stream || !bytes.Equal(fr.Payload, want[i].Payload) {
				t.Fatalf("frame %d: the Reader read %v/%x/%d % x; the reference %d frames, ending %v", i, fr.Type, fr.Flags, fr.Stream, fr.Payload, len(want), wantEnd)
			}
			if len(fr.Payload) > fuzzMaxFrame {
				t.Fatalf("payload of %d bytes", len(fr.Payload))
			}
			// Every payload parser must cope with whatever the header check let through.
			switch fr.Type {
			case TypeOpen:
				_, _ = ParseOpen(fr.Payload)
			case TypeEnd:
				_, _, _ = ParseEnd(fr.Payload)
			case TypeCredit:
				_, _ = ParseCredit(fr.Payload)
			case TypeGoAway:
				_, _, _, _ = ParseGoAway(fr.Payload)
			}
		}
	})
}

// referenceFrames parses in as docs/protocol.md lays frames out, without
// the Reader's buffering: the frames before the first violation or the
// end, and io.EOF for a clean end between frames.
func referenceFrames(in []byte, maxFrame uint32) ([]Frame, error) {
	var out []Frame
	for {
		if len(in) == 0 {
			return out, io.EOF
		}
		if len(in) < HeaderSize {
			return out, ErrProtocol
		}
		f := Frame{Type: Type(in[0]), Flags: Flags(in[1]), Stream: binary.BigEndian.Uint32(in[2:])}
		n := binary.BigEndian.Uint32(in[6:])
		if n > maxFrame || checkHeader(f.Type, f.Flags, f.Stream, n) != nil || uint64(len(in)-HeaderSize) < uint64(n) {
			return out, ErrProtocol
		}
		f.Payload = in[HeaderSize : HeaderSize+int(n)]
		out = append(out, f)
		in = in[HeaderSize+int(n):]
	}
}

func FuzzOpen(f *testing.F) {
	for _, h := range []*OpenHeader{
		{Path: "a"},
		{Path: "ns/comp/ep", Codec: "msgpack", RequestID: "r-1", TraceParent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", Timeout: time.Second, Headers: map[string]string{"a": "1", "b": ""}},
	} {
		b, err := AppendOpen(nil, h, []byte("payload"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		o, err := ParseOpen(in)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error does not wrap ErrProtocol: %v", err)
			}
			return
		}
		h := headerOf(&o)
		out, err := AppendOpen(nil, &h, o.Payload())
		if err != nil {
			t.Fatalf("parsed header %+v does not re-encode: %v", h, err)
		}
		if o.NumHeaders() <= 1 && !bytes.Equal(out, in) {
			t.Fatalf("re-encoding changed the bytes:\n in %x\nout %x", in, out)
		}
		o2, err := ParseOpen(out)
		if err != nil {
			t.Fatalf("re-encoded OPEN does not parse: %v", err)
		}
		h2 := headerOf(&o2)
		if h.Path != h2.Path || h.Codec != h2.Codec || h.RequestID != h2.RequestID || h.TraceParent != h2.TraceParent || h.Timeout != h2.Timeout || !maps.Equal(h.Headers, h2.Headers) || !bytes.Equal(o.Payload(), o2.Payload()) {
			t.Fatalf("fields changed in a round trip:\n%+v\n%+v", h, h2)
		}
	})
}

func headerOf(o *Open) OpenHeader {
	h := OpenHeader{Path: string(o.Path()), Codec: string(o.Codec()), RequestID: string(o.RequestID()), TraceParent: string(o.TraceParent()), Timeout: o.Timeout}
	if o.NumHeaders() > 0 {
		h.Headers = map[string]string{}
		for k, v := range o.Headers() {
			h.Headers[string(k)] = string(v)
		}
	}
	return h
}

// chunked returns at most k bytes per Read, so that frames arrive in
// pieces.
type chunked struct {
	b []byte
	k int
}

func (c *chunked) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), c.k)], c.b)
	c.b = c.b[n:]
	return n, nil
}

type parsed struct {
	t       Type
	f       Flags
	stream  uint32
	payload string
}

// FuzzDataRun checks DataRun against ReadFrame: a reader that takes the
// runs of DATA after each DATA frame sees the same frames, in the same
// order, and the same end, as one that reads frame by frame, however the
// bytes arrive and whatever the budget.
func FuzzDataRun(f *testing.F) {
	var w Writer
	w.Data(1, []byte("one"))
	w.Data(1, []byte("two"))
	w.Data(1, bytes.Repeat([]byte("x"), 100))
	w.Data(3, []byte("other"))
	w.Data(1, nil)
	w.End(1, CodeOK, "")
	w.Data(3, []byte("after"))
	f.Add(w.Bytes(), uint16(7), int64(50))
	f.Add(append(w.Bytes(), frame(TypeData, 1, 3, 0, nil)...), uint16(1000), int64(1<<20))
	f.Add(append(w.Bytes()[:40:40], frame(TypeData, 0, 1, 0xFFFFFFF, nil)...), uint16(3), int64(1))
	f.Fuzz(func(t *testing.T, in []byte, k uint16, budget int64) {
		read := func(runs bool) ([]parsed, error) {
			r := NewReader(&chunked{b: in, k: int(k%4096) + 1}, fuzzMaxFrame)
			var out []parsed
			for {
				fr, err := r.ReadFrame()
				if err != nil {
					return out, err
				}
				out = append(out, parsed{fr.Type, fr.Flags, fr.Stream, string(fr.Payload)})
				if !runs || fr.Type != TypeData {
					continue
				}
				run := r.DataRun(fr.Stream, budget)
				// The run is whole frames of the stream, with the
				// headers ReadFrame would have accepted.
				for len(run) > 0 {
					if len(run) < HeaderSize {
						t.Fatalf("run ends inside a header: % x", run)
					}
					n := binary.BigEndian.Uint32(run[6:])
					if Type(run[0]) != TypeData || run[1] != 0 || binary.BigEndian.Uint32(run[2:]) != fr.Stream || n > fuzzMaxFrame || len(run)-HeaderSize < int(n) {
						t.Fatalf("run holds a frame ReadFrame would not return as a DATA of stream %d: % x", fr.Stream, run[:HeaderSize])
					}
					out = append(out, parsed{TypeData, 0, fr.Stream, string(run[HeaderSize : HeaderSize+int(n)])})
					run = run[HeaderSize+int(n):]
				}
			}
		}
		want, werr := read(false)
		got, gerr := read(true)
		if len(got) != len(want) {
			t.Fatalf("with runs %d frames, frame by frame %d", len(got), len(want))
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("frame %d: with runs %+v, frame by frame %+v", i, got[i], want[i])
			}
		}
		if (werr == io.EOF) != (gerr == io.EOF) || errors.Is(werr, ErrProtocol) != errors.Is(gerr, ErrProtocol) {
			t.Fatalf("ends differ: with runs %v, frame by frame %v", gerr, werr)
		}
	})
}

// FuzzPreface: a preface is refused with a protocol error, or holds
// settings within the limits and is the bytes AppendPreface writes.
func FuzzPreface(f *testing.F) {
	f.Add(AppendPreface(nil, Preface{Version: Version, MaxFrameSize: MinMaxFrameSize, InitialWindow: 0}))
	f.Add(AppendPreface(nil, Preface{Version: Version, MaxFrameSize: MaxMaxFrameSize, InitialWindow: MaxWindow}))
	f.Add(AppendPreface(nil, Preface{Version: Version + 1, MaxFrameSize: MinMaxFrameSize}))
	f.Add(AppendPreface(nil, Preface{Version: Version, MaxFrameSize: MinMaxFrameSize - 1}))
	f.Add(AppendPreface(nil, Preface{Version: Version, MaxFrameSize: MaxMaxFrameSize + 1}))
	f.Add(AppendPreface(nil, Preface{Version: Version, MaxFrameSize: MinMaxFrameSize, InitialWindow: MaxWindow + 1}))
	f.Add([]byte(Magic))
	f.Add([]byte("GET / HTTP/1.1\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		p, err := ReadPreface(bytes.NewReader(in))
		if err != nil {
			if !errors.Is(err, ErrProtocol) && err != io.EOF {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		if p.Version != Version || p.MaxFrameSize < MinMaxFrameSize || p.MaxFrameSize > MaxMaxFrameSize || p.InitialWindow > MaxWindow {
			t.Fatalf("accepted %+v", p)
		}
		if back := AppendPreface(nil, p); !bytes.Equal(back, in[:PrefaceSize]) {
			t.Fatalf("accepted % x, which AppendPreface writes as % x", in[:PrefaceSize], back)
		}
	})
}
