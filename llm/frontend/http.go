package frontend

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/llm"
	"github.com/loomrt/loom/llm/tokenizer"
	"github.com/loomrt/loom/metrics"
)

// state is a request's reusable buffers, pooled so that the streaming
// path allocates little per request and nothing per token.
type state struct {
	body      bytes.Buffer
	generated []uint32
	text      []byte
	held, out []byte
	chunk     []byte
	head      []byte
	dec       *tokenizer.Decoder
}

func (f *Frontend) getState() *state {
	if v := f.states.Get(); v != nil {
		return v.(*state)
	}
	return &state{dec: f.tok.NewDecoder()}
}

func (f *Frontend) putState(st *state) {
	if st.body.Cap() > 64<<10 {
		st.body = bytes.Buffer{}
	}
	f.states.Put(st)
}

// statusClientClosed is the status requests whose client left are
// counted with (nginx's "client closed request"); nothing is sent.
const statusClientClosed = 499

// readBody reads the request body into st.body, within the size limit.
func (f *Frontend) readBody(w http.ResponseWriter, r *http.Request, st *state) *apiError {
	st.body.Reset()
	_, err := st.body.ReadFrom(http.MaxBytesReader(w, r.Body, f.cfg.MaxBodyBytes))
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return badRequest("", "request body exceeds %d bytes (the frontend's max body size)", mbe.Limit)
	case err != nil:
		return badRequest("", "reading the request body: %v", err)
	case st.body.Len() == 0:
		return badRequest("", "request body is empty; send a JSON object")
	}
	return nil
}

func (f *Frontend) handleChat(w http.ResponseWriter, r *http.Request) {
	handle[chatRequest](f, w, r)
}

func (f *Frontend) handleCompletion(w http.ResponseWriter, r *http.Request) {
	handle[completionRequest](f, w, r)
}

// apiRequest is an OpenAI request body that turns into a worker's
// parameters: *chatRequest or *completionRequest.
type apiRequest[T any] interface {
	*T
	params(tok *tokenizer.Tokenizer) (params, *apiError)
}

// handle reads, decodes and checks a request of type T, then answers it.
func handle[T any, P apiRequest[T]](f *Frontend, w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	st := f.getState()
	defer f.putState(st)
	if e := f.readBody(w, r, st); e != nil {
		f.fail(w, f.unknownModel, e)
		return
	}
	var req T
	if err := json.Unmarshal(st.body.Bytes(), &req); err != nil {
		f.fail(w, f.unknownModel, decodeError(err))
		return
	}
	p, e := P(&req).params(f.tok)
	if e != nil {
		f.fail(w, f.unknownModel, e)
		return
	}
	f.answer(w, r, start, st, &p)
}

func (f *Frontend) fail(w http.ResponseWriter, mm *metrics.LLMModel, e *apiError) {
	mm.Request(e.Status)
	writeError(w, e)
}

// modelMetrics returns the bound metrics of a served model.
func (f *Frontend) modelMetrics(model string) *metrics.LLMModel {
	if v, ok := f.mms.Load(model); ok {
		return v.(*metrics.LLMModel)
	}
	mm := f.m.LLMModel(model)
	f.mms.Store(model, mm)
	return mm
}

// answer runs a checked request and writes its response.
func (f *Frontend) answer(w http.ResponseWriter, r *http.Request, start time.Time, st *state, p *params) {
	s := f.models.Load()
	card, known := s.cards[p.model]
	if !known {
		f.fail(w, f.unknownModel, &apiError{Status: http.StatusNotFound, Type: typeInvalid, Param: "model", Code: "model_not_found",
			Message: fmt.Sprintf("model %q does not exist: no worker has served it (GET /v1/models lists the served models)", p.model)})
		return
	}
	mm := f.modelMetrics(p.model)
	if s.workers[p.model] == 0 {
		f.fail(w, mm, &apiError{Status: http.StatusServiceUnavailable, Type: typeUnavailable, Code: "no_worker",
			Message: fmt.Sprintf("model %q has no worker now; retry when one registers", p.model)})
		return
	}
	maxTokens := p.maxTokens
	if card.ContextLength > 0 {
		room := card.ContextLength - len(p.prompt)
		switch {
		case room <= 0:
			param := "prompt"
			if p.chat {
				param = "messages"
			}
			f.fail(w, mm, badRequest(param, "%s: the prompt has %d tokens; model %q has a context length of %d", param, len(p.prompt), p.model, card.ContextLength))
			return
		case maxTokens > room:
			f.fail(w, mm, badRequest(p.maxParam, "%s: %d tokens requested after a prompt of %d; model %q has a context length of %d",
				p.maxParam, maxTokens, len(p.prompt), p.model, card.ContextLength))
			return
		case maxTokens == 0:
			maxTokens = min(f.cfg.DefaultMaxTokens, room)
		}
	} else if maxTokens == 0 {
		maxTokens = f.cfg.DefaultMaxTokens
	}
	mm.InFlight.Inc()
	defer mm.InFlight.Dec()
	mm.InputTokens.Add(float64(len(p.prompt)))
	prefix, object := "cmpl-", "text_completion"
	if p.chat {
		prefix, object = "chatcmpl-", "chat.completion"
	}
	j := &job{id: f.newID(prefix), p: p, maxTokens: maxTokens, mm: mm, start: start, st: st}
	status := http.StatusOK
	if p.stream {
		status = f.stream(w, r, j, object)
	} else {
		status = f.unary(w, r, j, object)
	}
	mm.Request(status)
	mm.Duration.Observe(time.Since(start).Seconds())
}

// toAPIError maps a failed request to its status and OpenAI error.
func toAPIError(err error) *apiError {
	switch {
	case errors.Is(err, ErrBusy):
		return &apiError{Status: http.StatusTooManyRequests, Type: typeOverloaded, Code: "overloaded", Message: err.Error() + "; retry later"}
	case errors.Is(err, llm.ErrNoWorker), errors.Is(err, loom.ErrNoInstances):
		return &apiError{Status: http.StatusServiceUnavailable, Type: typeUnavailable, Code: "no_worker", Message: err.Error()}
	case errors.Is(err, errMigrationsExhausted):
		return &apiError{Status: http.StatusInternalServerError, Type: typeServer, Code: "worker_failed", Message: err.Error()}
	}
	return &apiError{Status: http.StatusInternalServerError, Type: typeServer, Code: "worker_error", Message: err.Error()}
}

func appendUsage(b []byte, prompt int, res result) []byte {
	b = append(b, `"usage":{"prompt_tokens":`...)
	b = appendInt(b, prompt)
	b = append(b, `,"completion_tokens":`...)
	b = appendInt(b, res.completion)
	b = append(b, `,"total_tokens":`...)
	b = appendInt(b, prompt+res.completion)
	b = append(b, `,"prompt_tokens_details":{"cached_tokens":`...)
	b = appendInt(b, res.cached)
	return append(b, "}}"...)
}

// appendHead appends the fields every chunk or response of j starts with:
// {"id":...,"object":...,"created":...,"model":...,
func (f *Frontend) appendHead(b []byte, j *job, object string) []byte {
	b = append(b, `{"id":"`...)
	b = append(b, j.id...)
	b = append(b, `","object":"`...)
	b = append(b, object...)
	b = append(b, `","created":`...)
	b = strconv.AppendInt(b, j.start.Unix(), 10)
	b = append(b, `,"model":`...)
	b = appendString(b, j.p.model)
	return append(b, ',')
}

// stream answers with Server-Sent Events, written by hand into a reused
// buffer: one event per piece of text, then the finish, the usage if
// asked, and [DONE]. The status is decided by the first output or the
// first error, so errors before any token get their own status.
func (f *Frontend) stream(w http.ResponseWriter, r *http.Request, j *job, object string) int {
	st := j.st
	rc := http.NewResponseController(w)
	chat := j.p.chat
	// data: {head}"choices":[{"index":0,
	st.head = append(st.head[:0], "data: "...)
	st.head = f.appendHead(st.head, j, object+chunkSuffix(chat))
	st.head = append(st.head, `"choices":[{"index":0,`...)
	started := false
	begin := func() {
		h := w.Header()
		h.Set("Content-Type", "text/event-stream")
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Accel-Buffering", "no")
		h.Set("Trailer", HeaderMigrations)
		w.WriteHeader(http.StatusOK)
		started = true
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	j.emit = func(text []byte) error {
		b := append(st.chunk[:0], st.head...)
		if chat {
			if !started {
				b = append(b, `"delta":{"role":"assistant","content":`...)
			} else {
				b = append(b, `"delta":{"content":`...)
			}
			b = appendText(b, text)
			b = append(b, `},"logprobs":null,"finish_reason":null}]}`+"\n\n"...)
		} else {
			b = append(b, `"text":`...)
			b = appendText(b, text)
			b = append(b, `,"logprobs":null,"finish_reason":null}]}`+"\n\n"...)
		}
		st.chunk = b
		if !started {
			begin()
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
		return rc.Flush()
	}
	res, err := f.run(ctx, j)
	// A header if nothing was sent yet, else a trailer (begin declared it).
	migrations := strconv.Itoa(res.migrations)
	if err != nil {
		if r.Context().Err() != nil {
			return statusClientClosed
		}
		e := toAPIError(err)
		if !started {
			w.Header().Set(HeaderMigrations, migrations)
			writeError(w, e)
			return e.Status
		}
		f.log.Warn("llm frontend: stream failed", "request", j.id, "model", j.p.model, "err", err)
		b := append(st.chunk[:0], "data: "...)
		b = e.appendJSON(b)
		st.chunk = append(b, "\n\n"...)
		_, _ = w.Write(st.chunk)
		_ = rc.Flush()
		w.Header().Set(HeaderMigrations, migrations)
		return e.Status
	}
	if !started {
		begin()
	}
	b := append(st.chunk[:0], st.head...)
	if chat {
		b = append(b, `"delta":{},"logprobs":null,"finish_reason":"`...)
	} else {
		b = append(b, `"text":"","logprobs":null,"finish_reason":"`...)
	}
	b = append(b, res.finish...)
	b = append(b, `"}]}`+"\n\n"...)
	if j.p.includeUsage {
		b = append(b, "data: "...)
		b = f.appendHead(b, j, object+chunkSuffix(chat))
		b = append(b, `"choices":[],`...)
		b = appendUsage(b, len(j.p.prompt), res)
		b = append(b, "}\n\n"...)
	}
	b = append(b, "data: [DONE]\n\n"...)
	st.chunk = b
	_, _ = w.Write(b)
	_ = rc.Flush()
	w.Header().Set(HeaderMigrations, migrations)
	return http.StatusOK
}

func chunkSuffix(chat bool) string {
	if chat {
		return ".chunk"
	}
	return ""
}

// unary answers with one JSON response once generation is done.
func (f *Frontend) unary(w http.ResponseWriter, r *http.Request, j *job, object string) int {
	st := j.st
	text := st.head[:0]
	j.emit = func(b []byte) error {
		text = append(text, b...)
		return nil
	}
	res, err := f.run(r.Context(), j)
	st.head = text
	w.Header().Set(HeaderMigrations, strconv.Itoa(res.migrations))
	if err != nil {
		if r.Context().Err() != nil {
			return statusClientClosed
		}
		e := toAPIError(err)
		if e.Status >= 500 {
			f.log.Warn("llm frontend: request failed", "request", j.id, "model", j.p.model, "err", err)
		}
		writeError(w, e)
		return e.Status
	}
	b := f.appendHead(st.chunk[:0], j, object)
	if j.p.chat {
		b = append(b, `"choices":[{"index":0,"message":{"role":"assistant","content":`...)
		b = appendText(b, text)
		b = append(b, `},"logprobs":null,"finish_reason":"`...)
	} else {
		b = append(b, `"choices":[{"index":0,"text":`...)
		b = appendText(b, text)
		b = append(b, `,"logprobs":null,"finish_reason":"`...)
	}
	b = append(b, res.finish...)
	b = append(b, `"}],`...)
	b = appendUsage(b, len(j.p.prompt), res)
	b = append(b, "}\n"...)
	st.chunk = b
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	_, _ = w.Write(b)
	return http.StatusOK
}
