package workqueue

import (
	"encoding/json"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/codec"
)

type fuzzJob struct {
	ID    int               `json:"id"`
	Text  string            `json:"text"`
	Tags  []string          `json:"tags"`
	Attrs map[string]string `json:"attrs"`
}

// FuzzDecodeJob: the bytes of a message, from whoever published to the
// queue's subject, decode as a job or fail with an error, never a panic
// or an allocation the bytes do not pay for; what decodes encodes again;
// and loom queue's view of them (Message.JSON) is JSON or an error.
func FuzzDecodeJob(f *testing.F) {
	for _, c := range []codec.Codec{codec.MsgPack, codec.JSON} {
		b, err := c.Marshal(nil, fuzzJob{ID: 7, Text: "prefill", Tags: []string{"a"}, Attrs: map[string]string{"k": "v"}})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"id": 1, "text": "x"}`))
	f.Add([]byte(`[1, 2, {"a": null}]`))
	f.Add([]byte{0xdd, 0xff, 0xff, 0xff, 0xff})       // an array of 4 billion elements
	f.Add([]byte{0xdf, 0x7f, 0xff, 0xff, 0xff, 0xa1}) // a map of 2 billion pairs
	f.Add([]byte{0xc6, 0xff, 0xff, 0xff, 0xf0})       // a 4 GiB bin
	f.Add([]byte{0xd7, 0xff, 0, 0, 0, 0, 0, 0, 0, 0}) // a timestamp
	f.Add([]byte{0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 1}) // NaN
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, c := range []codec.Codec{codec.MsgPack, codec.JSON} {
			q := &Queue[fuzzJob]{cfg: Config{Name: "fuzz", Codec: c}}
			if v, err := q.decode(data); err == nil {
				if _, err := q.encode(v); err != nil {
					t.Errorf("%s: %x decodes as %+v, which does not encode: %v", c.Name(), data, v, err)
				}
			}
			out, err := Message{Data: data, Codec: c.Name(), Header: nats.Header{}}.JSON()
			if err == nil && !json.Valid(out) {
				t.Errorf("%s: %x shows as %q, not JSON", c.Name(), data, out)
			}
		}
	})
}
