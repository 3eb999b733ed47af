package frontend_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"

	"github.com/loomrt/loom/llm/frontend"
	"github.com/loomrt/loom/llm/tokenizer"
)

// benchBody is a chat request with a prompt of about 1,500 tokens (words
// of the tokenizer's vocabulary) and maxTokens output tokens.
func benchBody(maxTokens string, stream bool) string {
	out := tokenizer.Default().OutputVocab()
	var sb strings.Builder
	for i := range 1500 {
		s, _ := tokenizer.Default().Token(out[(i*37)%len(out)])
		sb.WriteString(s)
	}
	st := "false"
	if stream {
		st = "true"
	}
	return `{"model":"test-model","stream":` + st + `,"max_tokens":` + maxTokens + `,"stream_options":null,"messages":[` +
		`{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"` + sb.String() + `"}]}`
}

// benchFrontend measures one request through the frontend's handler, to a
// worker in the same process on the local fast path (it does nearly
// nothing), without an HTTP connection: the cost is the frontend's
// (parsing, tokenizing, routing, streaming the SSE chunks) plus the
// runtime's call. ns/op is CPU time per request while the machine is
// otherwise idle; allocs/op is exact.
func benchFrontend(b *testing.B, stream bool, maxTokens string) {
	s := newStack(b, "local", frontend.Config{})
	s.worker(workerOpts{})
	s.waitReady(1)
	h := s.fe.Handler()
	body := benchBody(maxTokens, stream)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	cpu0 := cpuTime()
	for b.Loop() {
		req := httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(body))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
	}
	// CPU time, unlike ns/op, does not count time spent waiting for the
	// cores on a busy machine.
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
}

// cpuTime is the process's user and system CPU time in nanoseconds.
func cpuTime() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

func BenchmarkChatStream(b *testing.B) { benchFrontend(b, true, "16") }
func BenchmarkChatUnary(b *testing.B)  { benchFrontend(b, false, "16") }

// BenchmarkChatStream64 differs from BenchmarkChatStream by 48 tokens: the
// difference in allocs/op is what each streamed token costs.
func BenchmarkChatStream64(b *testing.B) { benchFrontend(b, true, "64") }
