package frontend

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/loomrt/loom/llm/tokenizer"
)

// FuzzRequestBody: an OpenAI request body comes from the network. Decoding
// and checking it, as a chat or a completion request, gives either
// parameters a worker can run (a model, a prompt of token ids inside the
// vocabulary) or a 400 with a message, never a panic.
func FuzzRequestBody(f *testing.F) {
	for _, s := range []string{
		`{"model":"m","messages":[{"role":"user","content":"hi"}]}`,
		`{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"stream":true,"stream_options":{"include_usage":true}}`,
		`{"model":"m","messages":[{"role":"system","content":null}],"max_completion_tokens":3,"stop":["a","b"]}`,
		`{"model":"m","prompt":"hello","max_tokens":8,"stop":"x","stop_token_ids":[2]}`,
		`{"model":"m","prompt":[[1,2,3]],"n":1}`,
		`{"model":"m","prompt":["one"],"stream_options":{}}`,
		`{"model":"m","prompt":[-1]}`,
		`{"model":"m","prompt":"x","temperature":3,"top_p":0.5,"seed":1.5,"echo":true,"logprobs":2}`,
		`{"model":"m","messages":[{"role":"user","content":[1]}],"logprobs":true,"presence_penalty":-2}`,
		`{"model":"","prompt":"x","max_tokens":0}`,
		`{"prompt":` + "\"\xff\"" + `}`,
		`[]`, `null`, `{"model":1}`, `{`,
	} {
		f.Add(s)
	}
	tok := tokenizer.Default()
	vocab := tok.VocabSize()
	f.Fuzz(func(t *testing.T, body string) {
		check := func(kind string, p params, e *apiError) {
			t.Helper()
			if e != nil {
				if e.Status != http.StatusBadRequest || e.Message == "" {
					t.Fatalf("%s: error %+v for %q: want a 400 with a message", kind, e, body)
				}
				return
			}
			if p.model == "" || len(p.prompt) == 0 || p.maxTokens < 0 {
				t.Fatalf("%s: accepted %q as model %q, %d prompt tokens, max_tokens %d", kind, body, p.model, len(p.prompt), p.maxTokens)
			}
			for i, id := range p.prompt {
				if int(id) >= vocab {
					t.Fatalf("%s: accepted %q with prompt[%d] = %d, outside the vocabulary of %d", kind, body, i, id, vocab)
				}
			}
			for i, id := range p.stopIDs {
				if int(id) >= vocab {
					t.Fatalf("%s: accepted %q with stop id %d = %d, outside the vocabulary of %d", kind, body, i, id, vocab)
				}
			}
		}
		decode := func(kind string, req interface {
			params(*tokenizer.Tokenizer) (params, *apiError)
		}) {
			if err := json.Unmarshal([]byte(body), req); err != nil {
				check(kind, params{}, decodeError(err))
				return
			}
			p, e := req.params(tok)
			check(kind, p, e)
		}
		decode("chat", &chatRequest{})
		decode("completion", &completionRequest{})
	})
}
