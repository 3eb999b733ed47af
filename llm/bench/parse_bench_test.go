package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"testing"
)

// BenchmarkReadStream measures the generator's cost of reading one
// streamed answer of 64 tokens (SSE parsing and chunk decoding), without
// the network.
func BenchmarkReadStream(b *testing.B) {
	var body bytes.Buffer
	for i := range 64 {
		fmt.Fprintf(&body, "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" word%d\"},\"finish_reason\":null}]}\n\n", i)
	}
	body.WriteString("data: {\"id\":\"chatcmpl-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":100,\"completion_tokens\":64,\"prompt_tokens_details\":{\"cached_tokens\":64}}}\n\ndata: [DONE]\n\n")
	c := &client{}
	b.ReportAllocs()
	b.SetBytes(int64(body.Len()))
	for b.Loop() {
		var o Outcome
		c.readStream(context.Background(), &http.Response{Body: io.NopCloser(bytes.NewReader(body.Bytes()))}, &o)
		if o.OutputTokens != 64 {
			b.Fatal(o.ErrKind, o.Err)
		}
	}
}
