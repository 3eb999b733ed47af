package loom_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"iter"
	"net"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/loomrt/loom/discovery"
)

// TestProtocolDocAsAForeignClientReadsIt follows docs/protocol.md with
// bytes written by hand, as a client in another language would: the
// address from the discovery record, the preface, an OPEN whose codec
// overrides the instance's (an empty one means msgpack), and the END codes
// for an unknown path and for a body that does not decode.
func TestProtocolDocAsAForeignClientReadsIt(t *testing.T) {
	c := newClusterOn(t, "tcp")
	rt := c.runtime()
	type req struct {
		N int `json:"n" msgpack:"n"`
	}
	serve(t, rt, "proto/doc/add", func(_ context.Context, r req) iter.Seq2[int, error] {
		return func(yield func(int, error) bool) { yield(r.N+1, nil) }
	})
	recs, err := rt.Discovery().List(t.Context(), discovery.Query{Namespace: "proto", Component: "doc", Endpoint: "add"})
	if err != nil || len(recs) != 1 || recs[0].Transport != "tcp" || recs[0].Codec != "msgpack" {
		t.Fatalf("record %+v %v", recs, err)
	}
	conn, err := net.DialTimeout("tcp", recs[0].Address, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	preface := []byte("LOOM\x01\x00\x00\x40\x00\x00\x00\x04\x00\x00")
	if _, err := conn.Write(preface); err != nil {
		t.Fatal(err)
	}
	theirs := make([]byte, 14)
	if _, err := io.ReadFull(conn, theirs); err != nil || string(theirs[:5]) != "LOOM\x01" {
		t.Fatalf("server preface %x %v", theirs, err)
	}
	open := func(stream uint32, path, codec string, body []byte) {
		var p []byte
		p = binary.BigEndian.AppendUint64(p, uint64(2*time.Second))
		p = binary.BigEndian.AppendUint16(p, uint16(len(path)))
		p = append(p, path...)
		p = append(p, byte(len(codec)))
		p = append(p, codec...)
		p = append(p, 0, 0, 0)
		p = append(p, body...)
		f := []byte{0x01, 0x00}
		f = binary.BigEndian.AppendUint32(f, stream)
		f = binary.BigEndian.AppendUint32(f, uint32(len(p)))
		if _, err := conn.Write(append(f, p...)); err != nil {
			t.Fatal(err)
		}
	}
	// next reads frames of stream until its END: the DATA payloads and
	// the END's code.
	next := func(stream uint32) ([][]byte, uint16) {
		var data [][]byte
		for {
			h := make([]byte, 10)
			if _, err := io.ReadFull(conn, h); err != nil {
				t.Fatal(err)
			}
			p := make([]byte, binary.BigEndian.Uint32(h[6:]))
			if _, err := io.ReadFull(conn, p); err != nil {
				t.Fatal(err)
			}
			if binary.BigEndian.Uint32(h[2:]) != stream {
				continue // CREDIT, PING and the like
			}
			switch h[0] {
			case 0x02:
				data = append(data, p)
			case 0x03:
				return data, binary.BigEndian.Uint16(p)
			}
		}
	}
	open(1, "proto/doc/add", "json", []byte(`{"n":41}`))
	if data, code := next(1); code != 0 || len(data) != 1 || string(data[0]) != "42" {
		t.Fatalf("json OPEN to a msgpack instance: %q, code %d; want 42 in JSON", data, code)
	}
	body, _ := msgpack.Marshal(map[string]int{"n": 1})
	open(3, "proto/doc/add", "", body)
	if data, code := next(3); code != 0 || len(data) != 1 || !bytes.Equal(data[0], []byte{0x02}) {
		t.Fatalf("empty codec: %x, code %d; want 2 in MessagePack", data, code)
	}
	open(5, "proto/doc/add", "json", []byte(`not json`))
	if _, code := next(5); code != 9 {
		t.Fatalf("a body that does not decode: code %d, want 9 (BadRequest)", code)
	}
	open(7, "proto/doc/nothing", "json", []byte(`{}`))
	if _, code := next(7); code != 2 {
		t.Fatalf("an unknown path: code %d, want 2 (NotFound)", code)
	}
	open(9, "proto/doc/add", "gob", []byte(`{}`))
	if _, code := next(9); code != 9 {
		t.Fatalf("an unknown codec: code %d, want 9 (BadRequest)", code)
	}
}
