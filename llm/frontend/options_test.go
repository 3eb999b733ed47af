package frontend_test

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/loomrt/loom/llm/frontend"
	"github.com/loomrt/loom/llm/tokenizer"
)

// TestRequestOptionsThroughTheOpenAIClient holds docs/llm.md's request
// claims: fields the frontend does not use (temperature, top_p, seed,
// user, fields it does not know, ...) are accepted and ignored;
// max_completion_tokens bounds the answer and wins over max_tokens;
// stop_token_ids reach the worker; a request without max_tokens may
// generate DefaultMaxTokens (1,024) tokens, within the model's context
// length.
func TestRequestOptionsThroughTheOpenAIClient(t *testing.T) {
	s := newStack(t, "tcp", frontend.Config{})
	long := s.worker(workerOpts{})
	short := s.worker(workerOpts{model: "short", ctxLen: 64})
	s.waitReady(2)
	c := oaiClient(s)
	ctx := context.Background()
	p := openai.ChatCompletionNewParams{
		Model:            model,
		Messages:         []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
		Temperature:      openai.Float(0.7),
		TopP:             openai.Float(0.9),
		Seed:             openai.Int(42),
		User:             openai.String("someone"),
		PresencePenalty:  openai.Float(0.5),
		FrequencyPenalty: openai.Float(0.5),
	}
	resp, err := c.Chat.Completions.New(ctx, p, option.WithJSONSet("stop_token_ids", []int{5, 6}),
		option.WithJSONSet("a_field_no_one_knows", map[string]any{"nested": []int{1}}))
	if err != nil {
		t.Fatalf("a chat with sampling fields: %v; want them accepted and ignored", err)
	}
	if resp.Usage.CompletionTokens != frontend.DefaultDefaultMaxTokens || resp.Choices[0].FinishReason != "length" {
		t.Errorf("without max_tokens: %d tokens (%s), want %d (length)", resp.Usage.CompletionTokens, resp.Choices[0].FinishReason, frontend.DefaultDefaultMaxTokens)
	}
	r := long.lastRequest()
	if r.MaxTokens != frontend.DefaultDefaultMaxTokens {
		t.Errorf("the worker got max_tokens %d, want %d", r.MaxTokens, frontend.DefaultDefaultMaxTokens)
	}
	if !slices.Contains(r.StopTokenIDs, 5) || !slices.Contains(r.StopTokenIDs, 6) || !slices.Contains(r.StopTokenIDs, tokenizer.ImEnd) {
		t.Errorf("the worker got stop_token_ids %v, want 5, 6 and the chat template's end", r.StopTokenIDs)
	}

	// max_completion_tokens bounds the answer as max_tokens does, and
	// wins over it when both are given.
	for _, tc := range []struct {
		maxTokens, maxCompletion int64
		want                     int64
	}{{0, 3, 3}, {5, 2, 2}, {2, 0, 2}} {
		q := openai.ChatCompletionNewParams{Model: model, Messages: p.Messages}
		if tc.maxTokens > 0 {
			q.MaxTokens = openai.Int(tc.maxTokens)
		}
		if tc.maxCompletion > 0 {
			q.MaxCompletionTokens = openai.Int(tc.maxCompletion)
		}
		resp, err := c.Chat.Completions.New(ctx, q)
		if err != nil || resp.Usage.CompletionTokens != tc.want || resp.Choices[0].FinishReason != "length" {
			t.Errorf("max_tokens %d, max_completion_tokens %d: %v, %+v; want %d tokens ending for length", tc.maxTokens, tc.maxCompletion, err, resp, tc.want)
		}
	}

	// A model with a context length: the default stops at it.
	p.Model = "short"
	resp, err = c.Chat.Completions.New(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	room := 64 - int(resp.Usage.PromptTokens)
	if room <= 0 || room >= frontend.DefaultDefaultMaxTokens {
		t.Fatalf("prompt of %d tokens: the test needs it within the context of 64", resp.Usage.PromptTokens)
	}
	if got := short.lastRequest().MaxTokens; got != room || int(resp.Usage.CompletionTokens) != room {
		t.Errorf("without max_tokens on a model of context 64: the worker got max_tokens %d and made %d tokens, want %d (the room the prompt leaves)",
			got, resp.Usage.CompletionTokens, room)
	}
}

// TestCompletionPromptForms: /v1/completions takes a string, one string in
// an array, token ids, or one array of token ids, and the same prompt in
// any form gets the same answer.
func TestCompletionPromptForms(t *testing.T) {
	s := newStack(t, "tcp", frontend.Config{})
	s.worker(workerOpts{})
	s.waitReady(1)
	c := oaiClient(s)
	ctx := context.Background()
	complete := func(prompt openai.CompletionNewParamsPromptUnion) string {
		t.Helper()
		resp, err := c.Completions.New(ctx, openai.CompletionNewParams{Model: openai.CompletionNewParamsModel(model), Prompt: prompt, MaxTokens: openai.Int(6)})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Choices) != 1 || resp.Choices[0].Text == "" || resp.Object != "text_completion" {
			t.Fatalf("completion %+v", resp)
		}
		return resp.Choices[0].Text
	}
	text := "Once upon a time"
	ids := tokenizer.Default().Encode(nil, text)
	ids64 := make([]int64, len(ids))
	for i, id := range ids {
		ids64[i] = int64(id)
	}
	want := complete(openai.CompletionNewParamsPromptUnion{OfString: openai.String(text)})
	for name, p := range map[string]openai.CompletionNewParamsPromptUnion{
		"one string in an array": {OfArrayOfStrings: []string{text}},
		"token ids":              {OfArrayOfTokens: ids64},
		"one array of token ids": {OfArrayOfTokenArrays: [][]int64{ids64}},
	} {
		if got := complete(p); got != want {
			t.Errorf("prompt as %s answered %q, as a string %q", name, got, want)
		}
	}
}

// TestTheResponsesIDNamesTheRequestEverywhere: the completion's id is the
// X-Request-Id header and the id of the request its worker got, streamed
// or not, and the header comes with an error too.
func TestTheResponsesIDNamesTheRequestEverywhere(t *testing.T) {
	s := newStack(t, "tcp", frontend.Config{})
	w := s.worker(workerOpts{})
	s.waitReady(1)
	c := oaiClient(s)
	var raw *http.Response
	resp, err := c.Chat.Completions.New(context.Background(), chatParams("hi", 3), option.WithResponseInto(&raw))
	if err != nil {
		t.Fatal(err)
	}
	if h := raw.Header.Get(frontend.HeaderRequestID); h != resp.ID || w.lastRequest().ID != resp.ID {
		t.Errorf("completion %q: header %q, the worker's request %q; want all the same", resp.ID, h, w.lastRequest().ID)
	}
	stream := c.Chat.Completions.NewStreaming(context.Background(), chatParams("hi", 3), option.WithResponseInto(&raw))
	id := ""
	for stream.Next() {
		id = stream.Current().ID
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	stream.Close()
	if h := raw.Header.Get(frontend.HeaderRequestID); id == "" || h != id || w.lastRequest().ID != id {
		t.Errorf("streamed completion %q: header %q, the worker's request %q; want all the same", id, h, w.lastRequest().ID)
	}
	// A request its worker fails still names itself.
	bad := s.worker(workerOpts{model: "failing", fail: errors.New("out of memory")})
	s.waitReady(2)
	p := chatParams("hi", 3)
	p.Model = "failing"
	if _, err := c.Chat.Completions.New(context.Background(), p, option.WithResponseInto(&raw)); err == nil {
		t.Fatal("a request its worker failed succeeded")
	}
	if h := raw.Header.Get(frontend.HeaderRequestID); !strings.HasPrefix(h, "chatcmpl-") || h != bad.lastRequest().ID {
		t.Errorf("the 500's %s header is %q, the worker's request %q; want the completion's id", frontend.HeaderRequestID, h, bad.lastRequest().ID)
	}
}
