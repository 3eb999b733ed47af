package wire

import (
	"bytes"
	"errors"
	"io"
	"maps"
	"testing"
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
	f.Fuzz(func(t *testing.T, in []byte) {
		r := NewReader(bytes.NewReader(in), fuzzMaxFrame)
		for {
			fr, err := r.ReadFrame()
			if cap(r.buf) > max(readerInitSize, HeaderSize+fuzzMaxFrame) {
				t.Fatalf("buffer grew to %d bytes, above the frame limit", cap(r.buf))
			}
			if err != nil {
				if err != io.EOF && !errors.Is(err, ErrProtocol) {
					t.Fatalf("unexpected error kind: %v", err)
				}
				return
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
		out, err := AppendOpen(nil, &h, o.Payload)
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
		if h.Path != h2.Path || h.Codec != h2.Codec || h.RequestID != h2.RequestID || h.TraceParent != h2.TraceParent || h.Timeout != h2.Timeout || !maps.Equal(h.Headers, h2.Headers) || !bytes.Equal(o.Payload, o2.Payload) {
			t.Fatalf("fields changed in a round trip:\n%+v\n%+v", h, h2)
		}
	})
}

func headerOf(o *Open) OpenHeader {
	h := OpenHeader{Path: string(o.Path), Codec: string(o.Codec), RequestID: string(o.RequestID), TraceParent: string(o.TraceParent), Timeout: o.Timeout}
	if o.NumHeaders() > 0 {
		h.Headers = map[string]string{}
		for k, v := range o.Headers() {
			h.Headers[string(k)] = string(v)
		}
	}
	return h
}
