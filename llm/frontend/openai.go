package frontend

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"

	"github.com/loomrt/loom/llm/tokenizer"
)

// The request bodies of the OpenAI API that the frontend reads. Sampling
// fields it does not pass on (temperature, top_p, the penalties, seed) are
// checked as OpenAI checks them and otherwise ignored, as a mock engine
// has no sampling to tune; other fields it does not know are ignored.
// Fields that would change the answer's shape in ways it does not serve
// (echo, logprobs) are refused rather than ignored.

type chatRequest struct {
	Model               string         `json:"model"`
	Messages            []chatMessage  `json:"messages"`
	Stream              bool           `json:"stream"`
	StreamOptions       *streamOptions `json:"stream_options"`
	MaxTokens           *int           `json:"max_tokens"`
	MaxCompletionTokens *int           `json:"max_completion_tokens"`
	Stop                stopField      `json:"stop"`
	N                   *int           `json:"n"`
	StopTokenIDs        []uint32       `json:"stop_token_ids"`
	Logprobs            *bool          `json:"logprobs"`
	sampling
}

type completionRequest struct {
	Model         string          `json:"model"`
	Prompt        json.RawMessage `json:"prompt"`
	Stream        bool            `json:"stream"`
	StreamOptions *streamOptions  `json:"stream_options"`
	MaxTokens     *int            `json:"max_tokens"`
	Stop          stopField       `json:"stop"`
	N             *int            `json:"n"`
	StopTokenIDs  []uint32        `json:"stop_token_ids"`
	Echo          *bool           `json:"echo"`
	Logprobs      *int            `json:"logprobs"`
	sampling
}

// sampling holds the sampling fields the frontend checks and ignores.
type sampling struct {
	Temperature      *float64 `json:"temperature"`
	TopP             *float64 `json:"top_p"`
	PresencePenalty  *float64 `json:"presence_penalty"`
	FrequencyPenalty *float64 `json:"frequency_penalty"`
	Seed             *int64   `json:"seed"`
}

// check refuses values OpenAI's API refuses.
func (s *sampling) check() *apiError {
	for _, f := range []struct {
		name     string
		v        *float64
		min, max float64
	}{
		{"temperature", s.Temperature, 0, 2},
		{"top_p", s.TopP, 0, 1},
		{"presence_penalty", s.PresencePenalty, -2, 2},
		{"frequency_penalty", s.FrequencyPenalty, -2, 2},
	} {
		if f.v != nil && (*f.v < f.min || *f.v > f.max) {
			return badRequest(f.name, "%s: %g is outside [%g, %g]", f.name, *f.v, f.min, f.max)
		}
	}
	return nil
}

type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

type chatMessage struct {
	Role    string         `json:"role"`
	Content messageContent `json:"content"`
}

// messageContent is a message's content: a string, null, or an array of
// parts of which the text parts are joined.
type messageContent struct {
	text string
	err  error
}

func (m *messageContent) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch {
	case len(b) == 0 || string(b) == "null":
		return nil
	case b[0] == '"':
		if inner := b[1 : len(b)-1]; bytes.IndexByte(inner, '\\') < 0 {
			// No escapes: the decoder has checked the string already,
			// so its bytes are the text (decoding it again would scan
			// a long prompt twice more).
			m.text = string(inner)
			return nil
		}
		return json.Unmarshal(b, &m.text)
	case b[0] == '[':
		var parts []struct {
			Type string `json:"type"`
			Text string `json:"text"`
		}
		if err := json.Unmarshal(b, &parts); err != nil {
			m.err = errors.New("must be a string or an array of text parts ({\"type\":\"text\",\"text\":...})")
			return nil
		}
		var sb strings.Builder
		for i, p := range parts {
			if p.Type != "text" {
				m.err = fmt.Errorf("content part %d has type %q; this frontend takes only text parts", i, p.Type)
				return nil
			}
			sb.WriteString(p.Text)
		}
		m.text = sb.String()
		return nil
	}
	m.err = errors.New("must be a string or an array of text parts")
	return nil
}

// stopField is "stop": a string, an array of strings, or null.
type stopField []string

func (s *stopField) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch {
	case string(b) == "null":
		*s = nil
		return nil
	case len(b) > 0 && b[0] == '"':
		var one string
		if err := json.Unmarshal(b, &one); err != nil {
			return err
		}
		*s = stopField{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return errors.New("stop must be a string or an array of strings")
	}
	*s = many
	return nil
}

// maxStops is how many stop strings a request may give (as OpenAI allows).
const maxStops = 4

// params is what a request asks of the generation, after checking.
type params struct {
	model        string
	prompt       []uint32
	maxTokens    int // 0: not given
	maxParam     string
	stream       bool
	includeUsage bool
	stops        []string
	stopIDs      []uint32
	chat         bool
}

// decodeError turns a JSON decoding error into a 400 naming the field.
func decodeError(err error) *apiError {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		// The embedded sampling struct's name is no part of the API.
		field := strings.TrimPrefix(te.Field, "sampling.")
		return badRequest(field, "%s: expected %s, got JSON %s", field, jsonKind(te.Type), te.Value)
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return badRequest("", "request body is not valid JSON: %v (at byte %d)", err, se.Offset)
	}
	return badRequest("", "request body does not decode: %v", err)
}

// jsonKind names what JSON value a Go type decodes from.
func jsonKind(t reflect.Type) string {
	if t == nil {
		return "another value"
	}
	switch t.Kind() {
	case reflect.Pointer:
		return jsonKind(t.Elem())
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Bool:
		return "true or false"
	case reflect.String:
		return "a string"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Struct, reflect.Map:
		return "an object"
	}
	return t.String()
}

func checkCommon(model string, n *int, stops stopField, maxTokens *int, maxParam string, stream bool, so *streamOptions, stopIDs []uint32, vocab int) (params, *apiError) {
	p := params{model: model, stream: stream, stops: stops}
	if model == "" {
		return p, badRequest("model", "model: required (GET /v1/models lists the served models)")
	}
	if n != nil && *n != 1 {
		return p, badRequest("n", "n: only 1 choice per request is supported, got %d", *n)
	}
	if len(stops) > maxStops {
		return p, badRequest("stop", "stop: at most %d strings, got %d", maxStops, len(stops))
	}
	for i, s := range stops {
		if s == "" {
			return p, badRequest("stop", "stop[%d]: empty string", i)
		}
	}
	if maxTokens != nil {
		if *maxTokens < 1 {
			return p, badRequest(maxParam, "%s: must be at least 1, got %d", maxParam, *maxTokens)
		}
		p.maxTokens, p.maxParam = *maxTokens, maxParam
	}
	if so != nil {
		if !stream {
			return p, badRequest("stream_options", "stream_options: only allowed with stream: true")
		}
		p.includeUsage = so.IncludeUsage
	}
	for i, id := range stopIDs {
		if int(id) >= vocab {
			return p, badRequest("stop_token_ids", "stop_token_ids[%d]: %d is outside the vocabulary of %d tokens", i, id, vocab)
		}
	}
	p.stopIDs = stopIDs
	return p, nil
}

func (r *chatRequest) params(tok *tokenizer.Tokenizer) (params, *apiError) {
	maxTokens, maxParam := r.MaxCompletionTokens, "max_completion_tokens"
	if maxTokens == nil {
		maxTokens, maxParam = r.MaxTokens, "max_tokens"
	}
	p, err := checkCommon(r.Model, r.N, r.Stop, maxTokens, maxParam, r.Stream, r.StreamOptions, r.StopTokenIDs, tok.VocabSize())
	if err != nil {
		return p, err
	}
	if err := r.sampling.check(); err != nil {
		return p, err
	}
	if r.Logprobs != nil && *r.Logprobs {
		return p, badRequest("logprobs", "logprobs: not supported by this frontend; leave it out or false")
	}
	if len(r.Messages) == 0 {
		return p, badRequest("messages", "messages: at least one message is required")
	}
	msgs := make([]tokenizer.Message, len(r.Messages))
	for i, m := range r.Messages {
		if m.Role == "" {
			return p, badRequest(fmt.Sprintf("messages[%d].role", i), "messages[%d].role: required", i)
		}
		if !slices.Contains(roles, m.Role) {
			// As OpenAI refuses it; and a role is written into the
			// template as it is, so one holding a newline would read as
			// a role and the start of its content.
			return p, badRequest(fmt.Sprintf("messages[%d].role", i), "messages[%d].role: %.40q is not a role; use one of %s", i, m.Role, strings.Join(roles, ", "))
		}
		if m.Content.err != nil {
			return p, badRequest(fmt.Sprintf("messages[%d].content", i), "messages[%d].content: %v", i, m.Content.err)
		}
		msgs[i] = tokenizer.Message{Role: m.Role, Content: m.Content.text}
	}
	p.prompt = tok.ApplyChatTemplate(make([]uint32, 0, 64), msgs, true)
	p.stopIDs = append(p.stopIDs, tokenizer.ImEnd, tokenizer.EOS)
	p.chat = true
	return p, nil
}

// roles are the message roles OpenAI's chat API takes.
var roles = []string{"system", "developer", "user", "assistant", "tool", "function"}

func (r *completionRequest) params(tok *tokenizer.Tokenizer) (params, *apiError) {
	p, err := checkCommon(r.Model, r.N, r.Stop, r.MaxTokens, "max_tokens", r.Stream, r.StreamOptions, r.StopTokenIDs, tok.VocabSize())
	if err != nil {
		return p, err
	}
	if err := r.sampling.check(); err != nil {
		return p, err
	}
	if r.Echo != nil && *r.Echo {
		return p, badRequest("echo", "echo: not supported by this frontend; leave it out or false")
	}
	if r.Logprobs != nil {
		return p, badRequest("logprobs", "logprobs: not supported by this frontend; leave it out or null")
	}
	b := bytes.TrimSpace(r.Prompt)
	if len(b) == 0 || string(b) == "null" {
		return p, badRequest("prompt", "prompt: required")
	}
	// A string, an array of one string, an array of token ids, or an
	// array of one array of token ids.
	var s string
	var ss []string
	var ids []int64
	var idss [][]int64
	switch {
	case json.Unmarshal(b, &s) == nil:
	case json.Unmarshal(b, &ss) == nil:
		if len(ss) == 0 {
			return p, badRequest("prompt", "prompt: an empty array; give a string, or token ids")
		}
		if len(ss) != 1 {
			return p, badRequest("prompt", "prompt: one prompt per request is supported, got %d", len(ss))
		}
		s = ss[0]
	case json.Unmarshal(b, &ids) == nil:
	case json.Unmarshal(b, &idss) == nil:
		if len(idss) != 1 {
			return p, badRequest("prompt", "prompt: one prompt per request is supported, got %d", len(idss))
		}
		ids = idss[0]
	default:
		return p, badRequest("prompt", "prompt: must be a string, an array of one string, or an array of token ids")
	}
	if ids != nil {
		if len(ids) == 0 {
			return p, badRequest("prompt", "prompt: empty token array")
		}
		p.prompt = make([]uint32, len(ids))
		for i, id := range ids {
			if id < 0 || id >= int64(tok.VocabSize()) {
				return p, badRequest("prompt", "prompt[%d]: token id %d is outside the vocabulary of %d tokens", i, id, tok.VocabSize())
			}
			p.prompt[i] = uint32(id)
		}
	} else {
		if s == "" {
			return p, badRequest("prompt", "prompt: empty")
		}
		p.prompt = tok.Encode(make([]uint32, 0, len(s)/4+8), s)
	}
	p.stopIDs = append(p.stopIDs, tokenizer.EOS)
	return p, nil
}
