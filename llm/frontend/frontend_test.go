package frontend_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/llm/frontend"
)

func decodeJSON(resp *http.Response, v any) error {
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}

func oaiClient(s *stack) openai.Client {
	return openai.NewClient(option.WithBaseURL(s.url+"/v1/"), option.WithAPIKey("unused"), option.WithMaxRetries(0))
}

func chatParams(user string, maxTokens int) openai.ChatCompletionNewParams {
	return openai.ChatCompletionNewParams{
		Model: model,
		Messages: []openai.ChatCompletionMessageParamUnion{
			openai.SystemMessage("You are a helpful assistant."),
			openai.UserMessage(user),
		},
		MaxTokens: openai.Int(int64(maxTokens)),
	}
}

// streamChat runs a streaming chat through the official client and
// returns the text, the finish reason, the usage and the stream's error.
func streamChat(ctx context.Context, c openai.Client, p openai.ChatCompletionNewParams) (string, string, openai.CompletionUsage, error) {
	p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	stream := c.Chat.Completions.NewStreaming(ctx, p)
	defer stream.Close()
	var sb strings.Builder
	finish := ""
	var usage openai.CompletionUsage
	for stream.Next() {
		ch := stream.Current()
		for _, choice := range ch.Choices {
			sb.WriteString(choice.Delta.Content)
			if choice.FinishReason != "" {
				finish = choice.FinishReason
			}
		}
		if ch.Usage.TotalTokens > 0 {
			usage = ch.Usage
		}
	}
	return sb.String(), finish, usage, stream.Err()
}

func TestChatWithOpenAIClient(t *testing.T) {
	for _, plane := range []string{"tcp", "nats"} {
		t.Run(plane, func(t *testing.T) {
			s := newStack(t, plane, frontend.Config{})
			s.worker(workerOpts{})
			s.waitReady(1)
			c := oaiClient(s)
			ctx := context.Background()

			resp, err := c.Chat.Completions.New(ctx, chatParams("What is the weather?", 12))
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.Choices) != 1 || resp.Choices[0].FinishReason != "length" || resp.Choices[0].Message.Content == "" {
				t.Fatalf("non-streaming response %+v: want one choice with text ending for length", resp.Choices)
			}
			if resp.Usage.CompletionTokens != 12 || resp.Usage.PromptTokens == 0 ||
				resp.Usage.PromptTokensDetails.CachedTokens != resp.Usage.PromptTokens/2 {
				t.Errorf("usage %+v: want 12 completion tokens and cached = half the prompt (as the worker reported)", resp.Usage)
			}
			if resp.Object != "chat.completion" || !strings.HasPrefix(resp.ID, "chatcmpl-") || resp.Model != model {
				t.Errorf("response id %q object %q model %q", resp.ID, resp.Object, resp.Model)
			}

			text, finish, usage, err := streamChat(ctx, c, chatParams("What is the weather?", 12))
			if err != nil {
				t.Fatal(err)
			}
			if text != resp.Choices[0].Message.Content || finish != "length" {
				t.Errorf("stream gave %q (%s), non-stream %q: want the same text", text, finish, resp.Choices[0].Message.Content)
			}
			if usage.CompletionTokens != 12 || usage.PromptTokens != resp.Usage.PromptTokens ||
				usage.PromptTokensDetails.CachedTokens != resp.Usage.PromptTokensDetails.CachedTokens {
				t.Errorf("stream usage %+v, want %+v", usage, resp.Usage)
			}
		})
	}
}

func TestCompletionsWithOpenAIClient(t *testing.T) {
	s := newStack(t, "tcp", frontend.Config{})
	s.worker(workerOpts{})
	s.waitReady(1)
	c := oaiClient(s)
	ctx := context.Background()
	p := openai.CompletionNewParams{
		Model:     openai.CompletionNewParamsModel(model),
		Prompt:    openai.CompletionNewParamsPromptUnion{OfString: openai.String("Once upon a time")},
		MaxTokens: openai.Int(7),
	}
	resp, err := c.Completions.New(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Choices) != 1 || resp.Choices[0].Text == "" || resp.Choices[0].FinishReason != "length" || resp.Usage.CompletionTokens != 7 {
		t.Fatalf("completion %+v usage %+v", resp.Choices, resp.Usage)
	}
	// Streamed with include_usage: the text, then a chunk with the
	// finish, then the last with no choices and the usage.
	sp := p
	sp.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	stream := c.Completions.NewStreaming(ctx, sp)
	var sb strings.Builder
	var chunks []openai.Completion
	for stream.Next() {
		chunks = append(chunks, stream.Current())
		for _, ch := range stream.Current().Choices {
			sb.WriteString(ch.Text)
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	stream.Close()
	if sb.String() != resp.Choices[0].Text {
		t.Errorf("streamed %q, non-streamed %q", sb.String(), resp.Choices[0].Text)
	}
	if n := len(chunks); n < 3 || len(chunks[n-1].Choices) != 0 || chunks[n-1].Usage.CompletionTokens != 7 ||
		chunks[n-1].Usage.PromptTokens != resp.Usage.PromptTokens || len(chunks[n-2].Choices) != 1 || chunks[n-2].Choices[0].FinishReason != "length" {
		t.Errorf("streamed chunks %+v: want the finish, then the usage with no choices last", chunks)
	}
	for _, ch := range chunks {
		if ch.ID != chunks[0].ID || !strings.HasPrefix(ch.ID, "cmpl-") || ch.Object != "text_completion" || ch.Model != model || ch.Created == 0 {
			t.Errorf("chunk id %q object %q model %q created %d", ch.ID, ch.Object, ch.Model, ch.Created)
		}
	}
	// A prompt of token ids.
	p.Prompt = openai.CompletionNewParamsPromptUnion{OfArrayOfTokens: []int64{300, 301, 302}}
	if _, err := c.Completions.New(ctx, p); err != nil {
		t.Fatalf("a prompt of token ids: %v", err)
	}
}

// sseEvents reads a Server-Sent Events body into its data payloads,
// checking the framing: every event is one "data: " line and a blank line.
func sseEvents(t *testing.T, body io.Reader) []string {
	t.Helper()
	var events []string
	sc := bufio.NewScanner(body)
	expectBlank := false
	for sc.Scan() {
		line := sc.Text()
		if expectBlank {
			if line != "" {
				t.Fatalf("event not followed by a blank line: %q", line)
			}
			expectBlank = false
			continue
		}
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			t.Fatalf("line %q is not a data line", line)
		}
		events = append(events, data)
		expectBlank = true
	}
	return events
}

func post(t *testing.T, ctx context.Context, url, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, "POST", url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestSSEFormat(t *testing.T) {
	s := newStack(t, "tcp", frontend.Config{})
	s.worker(workerOpts{})
	s.waitReady(1)
	resp := post(t, context.Background(), s.url+"/v1/chat/completions",
		`{"model":"test-model","messages":[{"role":"user","content":[{"type":"text","text":"hi \"there\"\n"}]}],"stream":true,"max_tokens":5,"stream_options":{"include_usage":true}}`)
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("status %d content type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	events := sseEvents(t, resp.Body)
	if len(events) != 5+2+1 {
		t.Fatalf("got %d events, want 5 tokens + finish + usage + [DONE]: %q", len(events), events)
	}
	if events[len(events)-1] != "[DONE]" {
		t.Fatalf("last event %q, want [DONE]", events[len(events)-1])
	}
	var id string
	for i, e := range events[:len(events)-1] {
		var c struct {
			ID      string `json:"id"`
			Object  string `json:"object"`
			Created int64  `json:"created"`
			Model   string `json:"model"`
			Choices []struct {
				Index int `json:"index"`
				Delta struct {
					Role    *string `json:"role"`
					Content *string `json:"content"`
				} `json:"delta"`
				FinishReason *string `json:"finish_reason"`
			} `json:"choices"`
			Usage *struct {
				PromptTokens     int `json:"prompt_tokens"`
				CompletionTokens int `json:"completion_tokens"`
				TotalTokens      int `json:"total_tokens"`
			} `json:"usage"`
		}
		if err := json.Unmarshal([]byte(e), &c); err != nil {
			t.Fatalf("event %d %q is not JSON: %v", i, e, err)
		}
		if id == "" {
			id = c.ID
		}
		if c.ID != id || c.Object != "chat.completion.chunk" || c.Model != model || c.Created == 0 {
			t.Errorf("event %d: id %q object %q model %q created %d", i, c.ID, c.Object, c.Model, c.Created)
		}
		switch {
		case i < 5:
			if len(c.Choices) != 1 || c.Choices[0].Delta.Content == nil || c.Choices[0].FinishReason != nil {
				t.Errorf("token event %d = %s", i, e)
			}
			if (i == 0) != (c.Choices[0].Delta.Role != nil) {
				t.Errorf("event %d: role given %v; want it on the first event only", i, c.Choices[0].Delta.Role != nil)
			}
		case i == 5:
			if len(c.Choices) != 1 || c.Choices[0].FinishReason == nil || *c.Choices[0].FinishReason != "length" {
				t.Errorf("finish event = %s", e)
			}
		case i == 6:
			if len(c.Choices) != 0 || c.Usage == nil || c.Usage.CompletionTokens != 5 || c.Usage.TotalTokens != c.Usage.PromptTokens+5 {
				t.Errorf("usage event = %s", e)
			}
		}
	}
}

func TestStopStrings(t *testing.T) {
	s := newStack(t, "tcp", frontend.Config{})
	s.worker(workerOpts{})
	s.waitReady(1)
	c := oaiClient(s)
	ctx := context.Background()
	full, _, _, err := streamChat(ctx, c, chatParams("Tell me a story.", 20))
	if err != nil {
		t.Fatal(err)
	}
	words := strings.Fields(full)
	if len(words) < 10 {
		t.Fatalf("reference text %q too short", full)
	}
	// A stop string spanning two tokens, and one that never occurs.
	w := words[5]
	stop := w[len(w)-2:] + " " + words[6][:2]
	at := strings.Index(full, stop)
	p := chatParams("Tell me a story.", 20)
	p.Stop = openai.ChatCompletionNewParamsStopUnion{OfStringArray: []string{"never occurs zz", stop}}
	text, finish, usage, err := streamChat(ctx, c, p)
	if err != nil {
		t.Fatal(err)
	}
	if text != full[:at] || finish != "stop" {
		t.Errorf("with stop %q: got %q (%s), want %q (stop)", stop, text, finish, full[:at])
	}
	if usage.CompletionTokens >= 20 {
		t.Errorf("generation went on to %d tokens after the stop string", usage.CompletionTokens)
	}
	resp, err := c.Chat.Completions.New(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Choices[0].Message.Content != full[:at] || resp.Choices[0].FinishReason != "stop" {
		t.Errorf("non-streaming with stop: %q (%s)", resp.Choices[0].Message.Content, resp.Choices[0].FinishReason)
	}
}

type errorBody struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    *string `json:"code"`
	} `json:"error"`
}

func checkError(t *testing.T, resp *http.Response, status int, param string) errorBody {
	t.Helper()
	var e errorBody
	if err := decodeJSON(resp, &e); err != nil {
		t.Fatalf("error body does not decode: %v", err)
	}
	if resp.StatusCode != status {
		t.Errorf("status %d (%s), want %d", resp.StatusCode, e.Error.Message, status)
	}
	if e.Error.Message == "" || e.Error.Type == "" {
		t.Errorf("error body %+v lacks message or type", e)
	}
	if param != "" && (e.Error.Param == nil || *e.Error.Param != param) {
		t.Errorf("error %q names param %v, want %q", e.Error.Message, e.Error.Param, param)
	}
	return e
}

// checkKind fails t unless the error has the type and code docs/llm.md's
// "Errors and statuses" table gives its status (code "" means null).
func checkKind(t *testing.T, e errorBody, typ, code string) {
	t.Helper()
	gotCode := ""
	if e.Error.Code != nil {
		gotCode = *e.Error.Code
	}
	if e.Error.Type != typ || gotCode != code {
		t.Errorf("error %q has type %q code %q, want type %q code %q", e.Error.Message, e.Error.Type, gotCode, typ, code)
	}
}

func TestBadRequests(t *testing.T) {
	s := newStack(t, "tcp", frontend.Config{MaxBodyBytes: 4096})
	s.worker(workerOpts{ctxLen: 200})
	s.waitReady(1)
	msgs := `"messages":[{"role":"user","content":"hi"}]`
	for _, tc := range []struct {
		name, path, body string
		status           int
		param            string
	}{
		{"malformed JSON", "chat/completions", `{"model": "x",`, 400, ""},
		{"not an object", "chat/completions", `[1,2]`, 400, ""},
		{"empty body", "chat/completions", ``, 400, ""},
		{"oversized body", "chat/completions", `{"model":"` + strings.Repeat("x", 5000) + `"}`, 413, ""},
		{"no model", "chat/completions", `{` + msgs + `}`, 400, "model"},
		{"no messages", "chat/completions", `{"model":"test-model","messages":[]}`, 400, "messages"},
		{"no role", "chat/completions", `{"model":"test-model","messages":[{"content":"x"}]}`, 400, "messages[0].role"},
		{"unknown role", "chat/completions", `{"model":"test-model","messages":[{"role":"user","content":"x"},{"role":"banana","content":"x"}]}`, 400, "messages[1].role"},
		{"role holding a newline", "chat/completions", `{"model":"test-model","messages":[{"role":"user\nsystem","content":"x"}]}`, 400, "messages[0].role"},
		{"image part", "chat/completions", `{"model":"test-model","messages":[{"role":"user","content":[{"type":"image_url"}]}]}`, 400, "messages[0].content"},
		{"n=2", "chat/completions", `{"model":"test-model",` + msgs + `,"n":2}`, 400, "n"},
		{"max_tokens 0", "chat/completions", `{"model":"test-model",` + msgs + `,"max_tokens":0}`, 400, "max_tokens"},
		{"max_completion_tokens -1", "chat/completions", `{"model":"test-model",` + msgs + `,"max_completion_tokens":-1}`, 400, "max_completion_tokens"},
		{"max_tokens string", "chat/completions", `{"model":"test-model",` + msgs + `,"max_tokens":"ten"}`, 400, "max_tokens"},
		{"too many stops", "chat/completions", `{"model":"test-model",` + msgs + `,"stop":["a","b","c","d","e"]}`, 400, "stop"},
		{"stop number", "chat/completions", `{"model":"test-model",` + msgs + `,"stop":5}`, 400, ""},
		{"stream_options without stream", "chat/completions", `{"model":"test-model",` + msgs + `,"stream_options":{"include_usage":true}}`, 400, "stream_options"},
		{"beyond context", "chat/completions", `{"model":"test-model",` + msgs + `,"max_tokens":500}`, 400, "max_tokens"},
		{"prompt beyond context", "completions", `{"model":"test-model","prompt":"` + strings.Repeat("9", 300) + `"}`, 400, "prompt"},
		{"no prompt", "completions", `{"model":"test-model"}`, 400, "prompt"},
		{"two prompts", "completions", `{"model":"test-model","prompt":["a","b"]}`, 400, "prompt"},
		{"token out of range", "completions", `{"model":"test-model","prompt":[1,99999999]}`, 400, "prompt"},
		{"unknown model", "chat/completions", `{"model":"nope",` + msgs + `}`, 404, "model"},
		{"content an object", "chat/completions", `{"model":"test-model","messages":[{"role":"user","content":{}}]}`, 400, "messages[0].content"},
		{"content parts not objects", "chat/completions", `{"model":"test-model","messages":[{"role":"user","content":[1]}]}`, 400, "messages[0].content"},
		{"temperature a string", "chat/completions", `{"model":"test-model",` + msgs + `,"temperature":"hot"}`, 400, "temperature"},
		{"temperature above 2", "chat/completions", `{"model":"test-model",` + msgs + `,"temperature":2.5}`, 400, "temperature"},
		{"temperature below 0", "completions", `{"model":"test-model","prompt":"hi","temperature":-0.1}`, 400, "temperature"},
		{"top_p above 1", "chat/completions", `{"model":"test-model",` + msgs + `,"top_p":1.5}`, 400, "top_p"},
		{"presence_penalty below -2", "chat/completions", `{"model":"test-model",` + msgs + `,"presence_penalty":-3}`, 400, "presence_penalty"},
		{"frequency_penalty above 2", "completions", `{"model":"test-model","prompt":"hi","frequency_penalty":2.1}`, 400, "frequency_penalty"},
		{"seed a fraction", "chat/completions", `{"model":"test-model",` + msgs + `,"seed":1.5}`, 400, "seed"},
		{"seed a string", "completions", `{"model":"test-model","prompt":"hi","seed":"x"}`, 400, "seed"},
		{"chat logprobs", "chat/completions", `{"model":"test-model",` + msgs + `,"logprobs":true}`, 400, "logprobs"},
		{"completion logprobs", "completions", `{"model":"test-model","prompt":"hi","logprobs":1}`, 400, "logprobs"},
		{"echo", "completions", `{"model":"test-model","prompt":"hi","echo":true}`, 400, "echo"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := checkError(t, post(t, context.Background(), s.url+"/v1/"+tc.path, tc.body), tc.status, tc.param)
			if tc.status == 404 {
				checkKind(t, e, "invalid_request_error", "model_not_found")
			} else {
				checkKind(t, e, "invalid_request_error", "")
			}
		})
	}
	// An empty prompt array is called empty, not a count of prompts.
	if e := checkError(t, post(t, context.Background(), s.url+"/v1/completions", `{"model":"test-model","prompt":[]}`), 400, "prompt"); !strings.Contains(e.Error.Message, "empty") {
		t.Errorf("prompt []: %q, want it called empty", e.Error.Message)
	}
	// The edges of the ranges, and the refused fields turned off, are
	// accepted.
	for _, tc := range []struct{ path, body string }{
		{"chat/completions", `{"model":"test-model",` + msgs + `,"max_tokens":1,"temperature":0,"top_p":1,"presence_penalty":-2,"frequency_penalty":2,"seed":-7,"logprobs":false}`},
		{"completions", `{"model":"test-model","prompt":"hi","max_tokens":1,"temperature":2,"top_p":0,"presence_penalty":2,"frequency_penalty":-2,"seed":9007199254740993,"echo":false,"logprobs":null}`},
	} {
		resp := post(t, context.Background(), s.url+"/v1/"+tc.path, tc.body)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s: %d %s, want 200", tc.body, resp.StatusCode, b)
		}
	}
	// The body is read as JSON whatever its Content-Type says, as the
	// docs' curl -d (application/x-www-form-urlencoded) sends it.
	for _, ctype := range []string{"application/x-www-form-urlencoded", "text/plain", ""} {
		req, err := http.NewRequest(http.MethodPost, s.url+"/v1/chat/completions", strings.NewReader(`{"model":"test-model",`+msgs+`,"max_tokens":1}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", ctype)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("Content-Type %q: %d %s, want 200", ctype, resp.StatusCode, b)
		}
	}
	// The official client sees the same as an *openai.Error.
	c := oaiClient(s)
	_, err := c.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
		Model: model, Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("x")}, N: openai.Int(3)})
	var oe *openai.Error
	if !errors.As(err, &oe) || oe.StatusCode != 400 || oe.Param != "n" {
		t.Errorf("n=3 through the client: %v, want a 400 *openai.Error naming n", err)
	}
	resp, err := http.Get(s.url + "/v2/whatever")
	if err != nil {
		t.Fatal(err)
	}
	checkKind(t, checkError(t, resp, 404, ""), "not_found_error", "")
}

// TestAnOversizedBodyGets413: a body over Config.MaxBodyBytes is too
// large, not malformed: 413 in OpenAI's shape, naming the limit and how
// to raise it, for a raw request and through the official client.
func TestAnOversizedBodyGets413(t *testing.T) {
	s := newStack(t, "tcp", frontend.Config{MaxBodyBytes: 4096})
	s.worker(workerOpts{})
	s.waitReady(1)
	big := strings.Repeat("word ", 1000)
	for _, path := range []string{"chat/completions", "completions"} {
		body := `{"model":"test-model","prompt":"` + big + `","messages":[{"role":"user","content":"` + big + `"}]}`
		e := checkError(t, post(t, context.Background(), s.url+"/v1/"+path, body), http.StatusRequestEntityTooLarge, "")
		checkKind(t, e, "invalid_request_error", "")
		for _, want := range []string{"4096 bytes", "MaxBodyBytes", "--max-body-bytes"} {
			if !strings.Contains(e.Error.Message, want) {
				t.Errorf("%s: 413 message %q does not name %q", path, e.Error.Message, want)
			}
		}
	}
	// A body just within the limit is served.
	within := `{"model":"test-model","max_tokens":1,"messages":[{"role":"user","content":"hi"}],"padding":""}`
	within = strings.Replace(within, `"padding":""`, `"padding":"`+strings.Repeat("x", 4096-len(within))+`"`, 1)
	resp := post(t, context.Background(), s.url+"/v1/chat/completions", within)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if len(within) != 4096 || resp.StatusCode != http.StatusOK {
		t.Errorf("a body of %d bytes with a limit of 4096: %d %s, want 200", len(within), resp.StatusCode, b)
	}
	c := oaiClient(s)
	_, err := c.Chat.Completions.New(context.Background(), chatParams(big, 1))
	var oe *openai.Error
	if !errors.As(err, &oe) || oe.StatusCode != http.StatusRequestEntityTooLarge || oe.Type != "invalid_request_error" || !strings.Contains(oe.Message, "MaxBodyBytes") {
		t.Errorf("an oversized chat through the client: %v, want a 413 *openai.Error naming MaxBodyBytes", err)
	}
}

func TestServiceErrors(t *testing.T) {
	s := newStack(t, "tcp", frontend.Config{MaxInFlightPerWorker: 1})
	holder := s.worker(workerOpts{pauseAfter: 1})
	gone := s.worker(workerOpts{model: "gone-model"})
	s.worker(workerOpts{model: "failing", fail: errors.New("the engine ran out of memory")})
	s.waitReady(3)
	ctx := context.Background()

	// 503: a model that had workers and has none now.
	gone.kill()
	s.waitReady(2)
	resp := post(t, ctx, s.url+"/v1/chat/completions", `{"model":"gone-model","messages":[{"role":"user","content":"hi"}]}`)
	if ra := resp.Header.Get("Retry-After"); ra != "1" {
		t.Errorf("503 with Retry-After %q, want 1", ra)
	}
	checkKind(t, checkError(t, resp, 503, ""), "service_unavailable_error", "no_worker")

	// 500: the worker fails the request (not a migration case); the error
	// still reports the migrations, as a header.
	resp = post(t, ctx, s.url+"/v1/chat/completions", `{"model":"failing","messages":[{"role":"user","content":"hi"}]}`)
	if m := resp.Header.Get(frontend.HeaderMigrations); m != "0" {
		t.Errorf("500's %s header = %q, want 0", frontend.HeaderMigrations, m)
	}
	e := checkError(t, resp, 500, "")
	checkKind(t, e, "server_error", "worker_error")
	if !strings.Contains(e.Error.Message, "ran out of memory") {
		t.Errorf("500 message %q does not carry the worker's error", e.Error.Message)
	}

	// 429: the only worker of the model holds one request, the limit.
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	first := post(t, hctx, s.url+"/v1/chat/completions", `{"model":"test-model","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
	defer first.Body.Close()
	waitFor(t, holder.paused, "the worker to hold the first request")
	resp = post(t, ctx, s.url+"/v1/chat/completions", `{"model":"test-model","messages":[{"role":"user","content":"hi"}]}`)
	if ra := resp.Header.Get("Retry-After"); ra != "1" {
		t.Errorf("429 with Retry-After %q, want 1", ra)
	}
	checkKind(t, checkError(t, resp, 429, ""), "overloaded_error", "overloaded")
	cancel()
	waitFor(t, holder.killed, "the held request to be killed")
}

func TestHealthModelsAndMetrics(t *testing.T) {
	s := newStack(t, "tcp", frontend.Config{})
	get := func(path string) (int, string) {
		resp, err := http.Get(s.url + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/live"); code != 200 {
		t.Errorf("/live = %d", code)
	}
	if err := s.fe.WaitSynced(context.Background()); err != nil {
		t.Fatal(err)
	}
	if code, body := get("/health"); code != 503 || body != `{"status":"notready","models":[],"workers":0}`+"\n" {
		t.Errorf("/health with no workers = %d %s, want 503 and the documented body", code, body)
	}
	checkError(t, post(t, context.Background(), s.url+"/v1/chat/completions", `{"model":"test-model","messages":[{"role":"user","content":"hi"}]}`), 404, "model")
	s.worker(workerOpts{ctxLen: 4096})
	s.worker(workerOpts{model: "other"})
	s.waitReady(2)
	if code, body := get("/health"); code != 200 || body != `{"status":"ready","models":["other","test-model"],"workers":2}`+"\n" {
		t.Errorf("/health with workers = %d %s, want 200 and the documented body", code, body)
	}
	c := oaiClient(s)
	page := c.Models.ListAutoPaging(context.Background())
	var ids []string
	for page.Next() {
		ids = append(ids, page.Current().ID)
	}
	if err := page.Err(); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(ids) != "[other test-model]" {
		t.Errorf("models = %v, want [other test-model]", ids)
	}
	// Each model with its context length (when its card gives one) and
	// its workers.
	if code, body := get("/v1/models"); code != 200 ||
		!strings.Contains(body, `{"id":"other","object":"model","created":`) || !strings.Contains(body, `"owned_by":"loom","workers":1}`) ||
		!strings.Contains(body, `"owned_by":"loom","context_length":4096,"workers":1}`) {
		t.Errorf("/v1/models = %d %s, want each model with its context_length and workers", code, body)
	}
	_, _, usage, err := streamChat(context.Background(), oaiClient(s), chatParams("hello", 4))
	if err != nil {
		t.Fatal(err)
	}
	// The handler counts the request after the client has read [DONE],
	// and a scrape is not atomic across metrics: wait for one that has
	// them all.
	wants := []string{
		`loom_llm_requests_total{model="test-model",status="200"} 1`,
		`loom_llm_requests_total{model="",status="404"} 1`,
		`loom_llm_time_to_first_token_seconds_count{model="test-model"} 1`,
		`loom_llm_inter_token_latency_seconds_count{model="test-model"} 3`,
		`loom_llm_output_tokens_total{model="test-model"} 4`,
		`loom_llm_requests_in_flight{model="test-model"} 0`,
		`loom_llm_migrations_total{model="test-model"} 0`,
		`loom_llm_request_duration_seconds_count{model="test-model"} 1`,
		fmt.Sprintf(`loom_llm_input_tokens_total{model="test-model"} %d`, usage.PromptTokens),
		fmt.Sprintf(`loom_llm_cached_tokens_total{model="test-model"} %d`, usage.PromptTokensDetails.CachedTokens),
	}
	var metrics string
	missing := wants
	for deadline := time.Now().Add(20 * time.Second); len(missing) > 0 && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		_, metrics = get("/metrics")
		missing = nil
		for _, want := range wants {
			if !strings.Contains(metrics, want) {
				missing = append(missing, want)
			}
		}
	}
	if len(missing) > 0 {
		var llm []string
		for _, l := range strings.Split(metrics, "\n") {
			if strings.HasPrefix(l, "loom_llm_") && !strings.Contains(l, "_bucket") {
				llm = append(llm, l)
			}
		}
		t.Errorf("/metrics lacks\n%s\nit has:\n%s", strings.Join(missing, "\n"), strings.Join(llm, "\n"))
	}
}

func TestDisconnectKillsWorkerRequest(t *testing.T) {
	for _, plane := range []string{"tcp", "nats"} {
		t.Run(plane, func(t *testing.T) {
			s := newStack(t, plane, frontend.Config{})
			w := s.worker(workerOpts{pauseAfter: 2})
			s.waitReady(1)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			resp := post(t, ctx, s.url+"/v1/chat/completions", `{"model":"test-model","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
			defer resp.Body.Close()
			id := waitFor(t, w.paused, "the worker to stream two tokens")
			// Read the first event, then hang up.
			line, err := bufio.NewReader(resp.Body).ReadString('\n')
			if err != nil || !strings.HasPrefix(line, "data: {") {
				t.Fatalf("first line %q, %v", line, err)
			}
			cancel()
			if got := waitFor(t, w.killed, "the worker's handler context to end"); got != id {
				t.Errorf("killed request %q, want %q", got, id)
			}
			// A client that left counts as 499.
			testutil.Eventually(t, 20*time.Second, "the request to be counted with status 499", func() bool { return countedOnce(s, "499") })
		})
	}
}

// countedOnce reports whether the frontend's metrics count one request
// of the test model answered with status.
func countedOnce(s *stack, status string) bool {
	resp, err := http.Get(s.url + "/metrics")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return strings.Contains(string(b), `loom_llm_requests_total{model="test-model",status="`+status+`"} 1`)
}

// collectSSE reads a chat stream and returns its text and final error
// event, if any.
func collectSSE(t *testing.T, resp *http.Response) (text, finish string, errEvent string) {
	t.Helper()
	defer resp.Body.Close()
	for _, e := range sseEvents(t, resp.Body) {
		if errEvent != "" {
			// docs/llm.md: a stream that fails ends with one error event
			// and no [DONE].
			t.Fatalf("event %q after the error event %s", e, errEvent)
		}
		if e == "[DONE]" {
			continue
		}
		if strings.HasPrefix(e, `{"error"`) {
			errEvent = e
			continue
		}
		var c struct {
			Choices []struct {
				Delta        struct{ Content string } `json:"delta"`
				FinishReason *string                  `json:"finish_reason"`
			} `json:"choices"`
		}
		if err := json.Unmarshal([]byte(e), &c); err != nil {
			t.Fatalf("event %q: %v", e, err)
		}
		for _, ch := range c.Choices {
			text += ch.Delta.Content
			if ch.FinishReason != nil {
				finish = *ch.FinishReason
			}
		}
	}
	return text, finish, errEvent
}

// sseReader reads a stream's events as they come.
type sseReader struct {
	t    *testing.T
	br   *bufio.Reader
	text string
}

func newSSEReader(t *testing.T, resp *http.Response) *sseReader {
	if resp.StatusCode != 200 {
		t.Fatalf("stream status %d", resp.StatusCode)
	}
	return &sseReader{t: t, br: bufio.NewReader(resp.Body)}
}

// words reads content events until the text has n words.
func (r *sseReader) words(n int) {
	r.t.Helper()
	for len(strings.Fields(r.text)) < n {
		line, err := r.br.ReadString('\n')
		if err != nil {
			r.t.Fatalf("stream ended after %q: %v", r.text, err)
		}
		data, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), "data: ")
		if !ok {
			continue
		}
		if strings.HasPrefix(data, `{"error"`) {
			r.t.Fatalf("stream ended after %q with the error event %s", r.text, data)
		}
		if blank, err := r.br.ReadString('\n'); err != nil || blank != "\n" {
			r.t.Fatalf("event %q not followed by a blank line: %q, %v", data, blank, err)
		}
		var c struct {
			Choices []struct {
				Delta struct{ Content string } `json:"delta"`
			} `json:"choices"`
		}
		if err := json.Unmarshal([]byte(data), &c); err != nil {
			r.t.Fatalf("event %q: %v", data, err)
		}
		for _, ch := range c.Choices {
			r.text += ch.Delta.Content
		}
	}
}

// rest reads the stream to its end.
func (r *sseReader) rest() (text, finish, errEvent string) {
	text, finish, errEvent = collectSSE(r.t, &http.Response{Body: io.NopCloser(r.br)})
	return r.text + text, finish, errEvent
}

var migBody = `{"model":"test-model","stream":true,"max_tokens":30,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Count the stars."}]}`

func TestMigrationKeepsTheStream(t *testing.T) {
	for _, plane := range []string{"tcp", "nats"} {
		t.Run(plane, func(t *testing.T) {
			s := newStack(t, plane, frontend.Config{})
			first := s.worker(workerOpts{pauseAfter: 11})
			s.waitReady(1)
			ctx := context.Background()
			resp := post(t, ctx, s.url+"/v1/chat/completions", migBody)
			defer resp.Body.Close()
			sr := newSSEReader(t, resp)
			sr.words(11)
			second := s.worker(workerOpts{})
			s.waitReady(2)
			first.kill()
			var got struct{ text, finish, err string }
			got.text, got.finish, got.err = sr.rest()
			if got.err != "" || got.finish != "length" {
				t.Fatalf("migrated stream ended with %q, error event %s", got.finish, got.err)
			}
			if m := resp.Trailer.Get(frontend.HeaderMigrations); m != "1" {
				t.Errorf("migrated stream's %s trailer = %q, want 1", frontend.HeaderMigrations, m)
			}
			r := second.lastRequest()
			if r.Generated != 11 || r.MaxTokens != 19 {
				t.Errorf("second worker got generated=%d max_tokens=%d, want 11 and 19", r.Generated, r.MaxTokens)
			}
			// The same request on a healthy worker, unmigrated.
			ref := post(t, ctx, s.url+"/v1/chat/completions", migBody)
			want, finish, e := collectSSE(t, ref)
			if e != "" || finish != "length" {
				t.Fatalf("reference stream: %s %s", finish, e)
			}
			if m := ref.Trailer.Get(frontend.HeaderMigrations); m != "0" {
				t.Errorf("unmigrated stream's %s trailer = %q, want 0", frontend.HeaderMigrations, m)
			}
			unary := post(t, ctx, s.url+"/v1/chat/completions", strings.Replace(migBody, `"stream":true`, `"stream":false`, 1))
			unary.Body.Close()
			if m := unary.Header.Get(frontend.HeaderMigrations); unary.StatusCode != 200 || m != "0" {
				t.Errorf("unmigrated JSON response: status %d, %s header %q, want 200 and 0", unary.StatusCode, frontend.HeaderMigrations, m)
			}
			if got.text != want {
				t.Errorf("migrated stream differs from the unmigrated one:\n got %q\nwant %q", got.text, want)
			}
			if n := len(strings.Fields(got.text)); n != 30 {
				t.Errorf("migrated stream has %d words, want 30 (no token repeated or missing)", n)
			}
		})
	}
}

// TestADepartedWorkerKeepsItsRequestsWhileItStreams: a worker that leaves
// discovery, as one does when it stops gracefully, keeps the requests it
// runs for as long as it streams them; once one goes a whole
// Config.DepartedIdle without a token it is cut and migrates.
func TestADepartedWorkerKeepsItsRequestsWhileItStreams(t *testing.T) {
	for _, plane := range []string{"tcp", "nats"} {
		t.Run(plane, func(t *testing.T) {
			// No sweep runs on its own: the test runs each.
			s := newStack(t, plane, frontend.Config{DepartedIdle: time.Hour})
			gate := make(chan struct{})
			first := s.worker(workerOpts{gate: gate})
			s.waitReady(1)
			resp := post(t, context.Background(), s.url+"/v1/chat/completions", migBody)
			defer resp.Body.Close()
			sr := newSSEReader(t, resp)
			sr.words(1)
			second := s.worker(workerOpts{})
			s.waitReady(2)
			_ = first.disc.Close() // it leaves discovery and goes on serving
			for deadline := time.Now().Add(20 * time.Second); frontend.DepartedRequests(s.fe) != 1; time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("the frontend watches %d requests on departed workers, want 1", frontend.DepartedRequests(s.fe))
				}
			}
			// Before DepartedIdle has passed, a request is not judged.
			if !frontend.SweepDeparted(s.fe, 0) {
				t.Fatal("a sweep cut a request on a departed worker before DepartedIdle had passed")
			}
			gate <- struct{}{}
			sr.words(2)
			if !frontend.SweepDeparted(s.fe, 2*time.Hour) {
				t.Fatal("a sweep cut the request of a departed worker that had streamed a token since the last")
			}
			select {
			case id := <-first.killed:
				t.Fatalf("request %s was cut on the departed worker while it streamed", id)
			default:
			}
			// Quiet since that sweep: a sweep DepartedIdle later cuts it.
			if !frontend.SweepDeparted(s.fe, 2*time.Hour+time.Minute) {
				t.Fatal("a sweep cut a request before DepartedIdle had passed since it last moved")
			}
			if frontend.SweepDeparted(s.fe, 4*time.Hour) {
				t.Fatal("a request quiet since the last sweep is still watched")
			}
			waitFor(t, first.killed, "the quiet request to be cut on the departed worker")
			text, finish, e := sr.rest()
			if e != "" || finish != "length" || len(strings.Fields(text)) != 30 {
				t.Fatalf("the stream ended with %d words, finish %q, error event %s; want 30 ending for length", len(strings.Fields(text)), finish, e)
			}
			if m := resp.Trailer.Get(frontend.HeaderMigrations); m != "1" {
				t.Errorf("%s trailer = %q, want 1", frontend.HeaderMigrations, m)
			}
			if r := second.lastRequest(); r.Generated != 2 {
				t.Errorf("the second worker took over at generated=%d, want 2", r.Generated)
			}
			if n := frontend.DepartedRequests(s.fe); n != 0 {
				t.Errorf("%d requests still watched after the migration", n)
			}
		})
	}
}

// TestMigrationsExhaustedEndTheStream: a stream migrates once, to a
// worker that joined after it began, and ends with an error when that
// worker fails too. With lagging, the frontend's client sees the new
// worker late (its discovery watch is held until the migration begins,
// while the frontend's own view has it): the migration waits for the
// client instead of failing with no_worker.
func TestMigrationsExhaustedEndTheStream(t *testing.T) {
	for _, lagging := range []bool{false, true} {
		t.Run(fmt.Sprintf("lagging=%v", lagging), func(t *testing.T) {
			s, lag, migrating := laggingStack(t, 1)
			a := s.worker(workerOpts{pauseAfter: 3})
			s.waitReady(1)
			resp := post(t, context.Background(), s.url+"/v1/chat/completions", migBody)
			defer resp.Body.Close()
			sr := newSSEReader(t, resp)
			sr.words(3)
			if lagging {
				lag.hold()
				// The client catches up only once the migration has begun.
				go func() {
					select {
					case <-migrating:
						lag.open()
					case <-t.Context().Done():
					}
				}()
			}
			b := s.worker(workerOpts{pauseAfter: 2})
			s.waitReady(2)
			a.kill()
			sr.words(5)
			if r := b.lastRequest(); r.Generated != 3 {
				t.Errorf("the new worker got generated=%d, want 3", r.Generated)
			}
			b.kill()
			text, finish, e := sr.rest()
			if finish != "" || !strings.Contains(e, `"type":"server_error"`) || !strings.Contains(e, `"code":"worker_failed"`) || !strings.Contains(e, "migrations exhausted") {
				t.Fatalf("stream ended with finish %q and error event %s; want an OpenAI error event saying migrations are exhausted", finish, e)
			}
			if m := resp.Trailer.Get(frontend.HeaderMigrations); m != "1" {
				t.Errorf("%s trailer after the migrations ran out = %q, want 1", frontend.HeaderMigrations, m)
			}
			if n := len(strings.Fields(text)); n != 5 {
				t.Errorf("client saw %d words before the error, want 3 + 2", n)
			}
		})
	}
}

// TestNoRequestHangsWhenWorkersDisappear: requests on workers that die,
// and on a worker that only leaves discovery while its streams stay open
// (a hung or partitioned process), all end.
func TestNoRequestHangsWhenWorkersDisappear(t *testing.T) {
	s := newStack(t, "tcp", frontend.Config{MaxMigrations: 2})
	var workers []*testWorker
	for range 3 {
		workers = append(workers, s.worker(workerOpts{pauseAfter: 1}))
	}
	s.waitReady(3)
	const n = 12
	var wg sync.WaitGroup
	results := make(chan string, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp := post(t, context.Background(), s.url+"/v1/chat/completions", migBody)
			if resp.StatusCode != 200 {
				var e errorBody
				_ = decodeJSON(resp, &e)
				results <- fmt.Sprintf("status %d", resp.StatusCode)
				return
			}
			_, finish, e := collectSSE(t, resp)
			results <- finish + e
		}()
	}
	for i := range n {
		waitFor(t, workers[i%3].paused, "requests to reach the workers")
	}
	// One worker leaves discovery but keeps its streams open; the others
	// die.
	_ = workers[0].disc.Close()
	workers[1].kill()
	workers[2].kill()
	wg.Wait()
	close(results)
	for r := range results {
		if !strings.Contains(r, `"type":"server_error"`) && !strings.Contains(r, `"code":"no_worker"`) && !strings.HasPrefix(r, "status 5") {
			t.Errorf("a request ended with %q, want an error once no worker is left", r)
		}
	}
}

// chunkedSSE sends a streaming chat request on a connection of its own
// and returns a function giving the response body's HTTP chunks one at a
// time, each as the frontend flushed it (nil after the last).
func chunkedSSE(t *testing.T, url, body string) func() []byte {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: loom\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	tp := textproto.NewReader(bufio.NewReader(c))
	status, err := tp.ReadLine()
	if err != nil || !strings.HasPrefix(status, "HTTP/1.1 200 ") {
		t.Fatalf("status line %q, %v", status, err)
	}
	h, err := tp.ReadMIMEHeader()
	if err != nil || h.Get("Transfer-Encoding") != "chunked" {
		t.Fatalf("headers %v, %v: want a chunked body", h, err)
	}
	return func() []byte {
		t.Helper()
		line, err := tp.ReadLine()
		if err != nil {
			t.Fatalf("chunk size: %v", err)
		}
		n, err := strconv.ParseInt(line, 16, 32)
		if err != nil {
			t.Fatalf("chunk size %q: %v", line, err)
		}
		if n == 0 {
			// The last chunk, then the trailer.
			if _, err := tp.ReadMIMEHeader(); err != nil {
				t.Fatalf("trailer: %v", err)
			}
			return nil
		}
		chunk := make([]byte, n+2)
		if _, err := io.ReadFull(tp.R, chunk); err != nil || !bytes.HasSuffix(chunk, []byte("\r\n")) {
			t.Fatalf("chunk of %d bytes: %q, %v", n, chunk, err)
		}
		return chunk[:n]
	}
}

// events counts the SSE events in a chunk, which must hold whole events.
func events(t *testing.T, chunk []byte) int {
	t.Helper()
	if !bytes.HasPrefix(chunk, []byte("data: ")) || !bytes.HasSuffix(chunk, []byte("\n\n")) {
		t.Fatalf("chunk %q does not hold whole events", chunk)
	}
	return bytes.Count(chunk, []byte("\n\n"))
}

// The frontend sends each token as soon as it comes when nothing more
// waits, and tokens that wait together in one write: a worker's response
// carrying several tokens leaves as one HTTP chunk.
func TestSSEWritesWhatWaitsTogether(t *testing.T) {
	for _, plane := range []string{"tcp", "nats"} {
		t.Run(plane, func(t *testing.T) { testSSEWritesWhatWaitsTogether(t, plane) })
	}
}

func testSSEWritesWhatWaitsTogether(t *testing.T, plane string) {
	const body = `{"model":"test-model","stream":true,"max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`
	t.Run("one token at a time", func(t *testing.T) {
		s := newStack(t, plane, frontend.Config{})
		gate := make(chan struct{})
		s.worker(workerOpts{gate: gate})
		s.waitReady(1)
		next := chunkedSSE(t, s.url, body)
		// The worker makes the next token only once the client has the
		// last one: each arrives alone, the last with the finish and
		// [DONE].
		for i := range 3 {
			if n := events(t, next()); n != 1 {
				t.Fatalf("chunk %d holds %d events, want the token alone", i, n)
			}
			gate <- struct{}{}
		}
		if n := events(t, next()); n != 3 {
			t.Fatalf("last chunk holds %d events, want the last token, the finish and [DONE]", n)
		}
		if c := next(); c != nil {
			t.Fatalf("a chunk after [DONE]: %q", c)
		}
	})
	t.Run("tokens that came together", func(t *testing.T) {
		s := newStack(t, plane, frontend.Config{})
		s.worker(workerOpts{burst: true})
		s.waitReady(1)
		next := chunkedSSE(t, s.url, body)
		if n := events(t, next()); n != 4+2 {
			t.Fatalf("first chunk holds %d events, want 4 tokens, the finish and [DONE]", n)
		}
		if c := next(); c != nil {
			t.Fatalf("a chunk after [DONE]: %q", c)
		}
	})
}

// TestAStalledBodyGets408: a client that sends part of a body and stalls
// gets 408 once the body timeout passes, and its connection is closed.
func TestAStalledBodyGets408(t *testing.T) {
	const timeout = 200 * time.Millisecond
	s := newStack(t, "tcp", frontend.Config{BodyTimeout: timeout})
	s.worker(workerOpts{})
	s.waitReady(1)
	part := `{"model":"test-model","messages":[`
	resp, br := rawRequest(t, s, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"+part)
	e := checkError(t, resp, http.StatusRequestTimeout, "")
	checkKind(t, e, "invalid_request_error", "")
	if want := fmt.Sprintf("within %s (the frontend's body timeout); got %d bytes", timeout, len(part)); !strings.Contains(e.Error.Message, want) {
		t.Errorf("error %q does not say %q", e.Error.Message, want)
	}
	if n, err := br.ReadByte(); err != io.EOF {
		t.Errorf("after the 408 the connection gave %q, %v; want it closed", n, err)
	}
}

// rawRequest sends req on a connection of its own and reads the answer's
// head, waiting far longer than any timeout the tests set: a frontend that
// does not answer fails here. The reader goes on with the connection.
func rawRequest(t *testing.T, s *stack, req string) (*http.Response, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(s.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	if err := conn.SetReadDeadline(time.Now().Add(20 * time.Second)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer to %q: %v", strings.SplitN(req, "\r\n", 2)[0], err)
	}
	return resp, br
}

// TestAStreamOutlastsItsTimeouts: the body timeout bounds reading the
// body only, and the write timeout each write; the answer streams for as
// long as it takes.
func TestAStreamOutlastsItsTimeouts(t *testing.T) {
	s := newStack(t, "tcp", frontend.Config{BodyTimeout: 100 * time.Millisecond, WriteTimeout: 100 * time.Millisecond})
	s.worker(workerOpts{delay: 40 * time.Millisecond})
	s.waitReady(1)
	const tokens = 12 // about 0.5 s, five of each timeout
	start := time.Now()
	text, finish, _, err := streamChat(t.Context(), oaiClient(s), chatParams("hello", tokens))
	if err != nil || finish != "length" || len(strings.Fields(text)) != tokens {
		t.Fatalf("a stream of %d tokens over %v: %d words, finish %q, err %v; want all of it", tokens, time.Since(start), len(strings.Fields(text)), finish, err)
	}
}

// TestAnIdleConnectionIsClosed: a kept-alive connection that sends no
// next request is closed after the idle timeout.
func TestAnIdleConnectionIsClosed(t *testing.T) {
	s := newStack(t, "tcp", frontend.Config{IdleTimeout: 200 * time.Millisecond})
	resp, br := rawRequest(t, s, "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
	if _, err := io.Copy(io.Discard, resp.Body); err != nil || resp.StatusCode != http.StatusOK || resp.Close {
		t.Fatalf("GET /v1/models: %d, close %v, err %v; want 200 on a kept-alive connection", resp.StatusCode, resp.Close, err)
	}
	if n, err := br.ReadByte(); err != io.EOF {
		t.Errorf("an idle kept-alive connection gave %q, %v; want it closed", n, err)
	}
}

// TestAClientThatStopsReadingIsLetGo: a client that stops reading its
// answer (or whose host vanished) is taken as gone once a write has
// waited WriteTimeout: a stream's request is cancelled on the worker, and
// a whole answer's handler lets go of it.
func TestAClientThatStopsReadingIsLetGo(t *testing.T) {
	// Small socket buffers on both sides: the frontend's writes soon wait.
	s := newSystem(t, "tcp", nil)
	s.listener = testutil.SmallSendBuffers
	s.start(frontend.Config{WriteTimeout: 300 * time.Millisecond})
	w := s.worker(workerOpts{ctxLen: 10_000_000})
	s.waitReady(1)
	// send sends a request and reads nothing.
	send := func(body string) {
		conn, err := testutil.SmallReceiveBuffers().Dial("tcp", strings.TrimPrefix(s.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		if _, err := fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body); err != nil {
			t.Fatal(err)
		}
	}

	send(`{"model":"test-model","stream":true,"max_tokens":5000000,"messages":[{"role":"user","content":"hi"}]}`)
	testutil.Eventually(t, 20*time.Second, "the stream to be counted with status 499", func() bool { return countedOnce(s, "499") })
	testutil.Eventually(t, 20*time.Second, "the worker's request to end", func() bool { return w.running.Load() == 0 })
	if n := w.served.Load(); n != 1 {
		t.Fatalf("the worker served %d requests, want the 1", n)
	}

	// A whole answer of about 100 KB, written once the worker is done:
	// its handler is counted when it returns.
	send(`{"model":"test-model","max_tokens":20000,"messages":[{"role":"user","content":"hi"}]}`)
	testutil.Eventually(t, 20*time.Second, "the whole answer's handler to return", func() bool { return countedOnce(s, "200") })
}

// TestAWriteDeadlineDoesNotOutliveItsRequest: the next request on a
// kept-alive connection, long after the last one's writes, is answered.
func TestAWriteDeadlineDoesNotOutliveItsRequest(t *testing.T) {
	const timeout = 100 * time.Millisecond
	s := newStack(t, "tcp", frontend.Config{WriteTimeout: timeout})
	s.worker(workerOpts{})
	s.waitReady(1)
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	defer c.CloseIdleConnections()
	// Each is followed by one that is answered before any write of the
	// frontend's own sets a deadline: a malformed body's 400.
	for i, body := range []string{
		`{"model":"test-model","stream":true,"max_tokens":3,"messages":[{"role":"user","content":"hi"}]}`,
		`{"model":`,
		`{"model":"test-model","max_tokens":3,"messages":[{"role":"user","content":"hi"}]}`,
		`{"model":`,
	} {
		var reused bool
		ctx := httptrace.WithClientTrace(t.Context(), &httptrace.ClientTrace{GotConn: func(ci httptrace.GotConnInfo) { reused = ci.Reused }})
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url+"/v1/chat/completions", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		want, in := http.StatusOK, `"finish_reason":"length"`
		if i%2 == 1 {
			want, in = http.StatusBadRequest, `"invalid_request_error"`
		}
		if err != nil || resp.StatusCode != want || !bytes.Contains(b, []byte(in)) {
			t.Fatalf("request %d (connection reused: %v): %d, %v:\n%s", i, reused, resp.StatusCode, err, b)
		}
		if i > 0 && !reused {
			t.Fatalf("request %d came on a new connection; the test needs the kept-alive one", i)
		}
		time.Sleep(3 * timeout) // the last request's write deadline passes
	}
}

// A Serve that a Shutdown or Close overtook (a signal right after start,
// with Serve in a goroutine not yet running) closes its listener and
// returns at once: it used to serve on, and a shutdown that then waited
// for it waited until the process's hard timeout.
func TestServeAfterShutdownOrCloseServesNothing(t *testing.T) {
	for _, stop := range []string{"Shutdown", "Close"} {
		t.Run(stop, func(t *testing.T) {
			s := newSystem(t, "tcp", nil)
			fe, err := frontend.New(context.Background(), s.rt, frontend.Config{})
			if err != nil {
				t.Fatal(err)
			}
			if stop == "Shutdown" {
				if err := fe.Shutdown(context.Background()); err != nil {
					t.Fatal(err)
				}
			} else {
				fe.Close()
			}
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			served := make(chan error, 1)
			go func() { served <- fe.Serve(l) }()
			select {
			case err := <-served:
				if !errors.Is(err, http.ErrServerClosed) {
					t.Fatalf("Serve after %s: %v; want http.ErrServerClosed", stop, err)
				}
			case <-time.After(10 * time.Second):
				l.Close() // lets the old Serve return
				<-served
				t.Fatalf("Serve after %s was still serving after 10s", stop)
			}
			if c, err := net.Dial("tcp", l.Addr().String()); err == nil {
				c.Close()
				t.Fatalf("the listener given to Serve after %s still accepts connections", stop)
			}
		})
	}
}
