package bench

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// sseServer is a small OpenAI-compatible streaming server for the
// generator's tests: it counts words as tokens, remembers system prompts
// it has seen (a later request with the same one reports them as cached),
// and alternates between two worker names.
type sseServer struct {
	*httptest.Server
	mu      sync.Mutex
	seen    map[string]bool
	reqs    []chatRequest
	n       atomic.Int64
	status  func(n int64) int    // HTTP status for the n-th request (from 1); 0 = 200
	hang    func(n int64) bool   // never end the n-th request's stream
	broken  func(n int64) string // replace the n-th request's stream with this body
	release chan struct{}        // closed when the test ends, ending hung streams
}

func newSSEServer(t *testing.T) *sseServer {
	s := &sseServer{seen: map[string]bool{}, release: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/models", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"object":"list","data":[{"id":"mock-model","object":"model"}]}`)
	})
	mux.HandleFunc("POST /v1/chat/completions", s.chat)
	s.Server = httptest.NewServer(mux)
	t.Cleanup(func() { close(s.release); s.Close() })
	return s
}

func (s *sseServer) chat(w http.ResponseWriter, r *http.Request) {
	n := s.n.Add(1)
	var req chatRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || !req.Stream || req.Model != "mock-model" {
		http.Error(w, `{"error":{"message":"bad request","type":"invalid_request_error"}}`, http.StatusBadRequest)
		return
	}
	if s.status != nil {
		if code := s.status(n); code != 0 {
			w.WriteHeader(code)
			fmt.Fprint(w, `{"error":{"message":"overloaded","type":"overloaded"}}`)
			return
		}
	}
	prompt, cached := 0, 0
	s.mu.Lock()
	s.reqs = append(s.reqs, req)
	for _, m := range req.Messages {
		k := len(strings.Fields(m.Content))
		prompt += k
		if m.Role == "system" {
			if s.seen[m.Content] {
				cached += k
			}
			s.seen[m.Content] = true
		}
	}
	s.mu.Unlock()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set(headerWorker, fmt.Sprintf("w%d", n%2))
	// Every fourth request says it migrated, as Loom's frontend does: a
	// trailer after the stream.
	w.Header().Set("Trailer", headerMigrations)
	fl := w.(http.Flusher)
	if s.broken != nil {
		if body := s.broken(n); body != "" {
			fmt.Fprint(w, body)
			return
		}
	}
	if s.hang != nil && s.hang(n) {
		fmt.Fprint(w, "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n")
		fl.Flush()
		select {
		case <-r.Context().Done():
		case <-s.release:
		}
		return
	}
	for i := range req.MaxTokens {
		fmt.Fprintf(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"t%d \"},\"finish_reason\":null}]}\n\n", i)
		fl.Flush()
	}
	fmt.Fprint(w, "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n")
	fmt.Fprintf(w, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"prompt_tokens_details\":{\"cached_tokens\":%d}}}\n\n", prompt, req.MaxTokens, cached)
	fmt.Fprint(w, "data: [DONE]\n\n")
	migrations := "0"
	if n%4 == 0 {
		migrations = "1"
	}
	w.Header().Set(headerMigrations, migrations)
}

func (s *sseServer) requests() []chatRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]chatRequest(nil), s.reqs...)
}
