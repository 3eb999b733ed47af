package frontend

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

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
	ahead     loom.Lookahead // whether a worker's next response waits

	// While tracing is on: the request's server span, and what it ended
	// with (set by fail and answer).
	span    trace.Span
	status  int
	model   string
	res     result
	failure string
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

// requestStatuses are every status a request is counted with in
// loom_llm_requests_total. Each model's series start at 0 for each of them
// when a worker of the model first appears (model="" when the frontend
// starts), so that increase() and rate() see a model's first 5xx or 429:
// a series born at its first count, at 1, hides that count, as they take
// a series' first sample as its start. A status a request can end with
// belongs here (TestEveryStatusInTheCodeIsInRequestStatuses,
// TestEveryStatusAnsweredStartsAtZero).
var requestStatuses = []int{
	http.StatusOK,
	http.StatusBadRequest,            // malformed, invalid, or beyond the model's context
	http.StatusNotFound,              // a model no worker has served
	http.StatusRequestTimeout,        // the body did not arrive within Config.BodyTimeout
	http.StatusRequestEntityTooLarge, // the body is over Config.MaxBodyBytes
	http.StatusTooManyRequests,       // ErrBusy
	statusClientClosed,               // the client left
	http.StatusInternalServerError,   // a worker failed the request
	http.StatusServiceUnavailable,    // the model has no worker now
}

// readBody reads the request body into st.body, within the size limit
// and the body timeout.
func (f *Frontend) readBody(w http.ResponseWriter, r *http.Request, st *state) *apiError {
	st.body.Reset()
	// The deadline is the connection's. net/http lifts it when the body
	// ends and it starts reading on to see the client leave, so it does
	// not bound the answer's stream; when the body times out, it stays,
	// and the server does not wait for the rest of the body to answer.
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(f.cfg.BodyTimeout))
	_, err := st.body.ReadFrom(http.MaxBytesReader(w, r.Body, f.cfg.MaxBodyBytes))
	var mbe *http.MaxBytesError
	var ne net.Error
	switch {
	case errors.As(err, &mbe):
		// 413, as HTTP and OpenAI's API say; a 400 would tell the
		// client its JSON is wrong when only its size is.
		return &apiError{Status: http.StatusRequestEntityTooLarge, Type: typeInvalid,
			Message: fmt.Sprintf("request body exceeds %d bytes, the frontend's limit (frontend.Config.MaxBodyBytes, --max-body-bytes): send a shorter request or raise the limit", mbe.Limit)}
	case errors.As(err, &ne) && ne.Timeout():
		return &apiError{Status: http.StatusRequestTimeout, Type: typeInvalid,
			Message: fmt.Sprintf("the request body did not arrive within %s (the frontend's body timeout); got %d bytes", f.cfg.BodyTimeout, st.body.Len())}
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
	if tr := f.rt.Tracer(); tr != nil {
		r = startSpan(tr, r, st)
		defer endSpan(st)
	}
	if e := f.readBody(w, r, st); e != nil {
		f.fail(w, st, f.unknownModel, e)
		return
	}
	var req T
	if err := json.Unmarshal(st.body.Bytes(), &req); err != nil {
		f.fail(w, st, f.unknownModel, decodeError(err))
		return
	}
	p, e := P(&req).params(f.tok)
	if e != nil {
		f.fail(w, st, f.unknownModel, e)
		return
	}
	f.answer(w, r, start, st, &p)
}

func (f *Frontend) fail(w http.ResponseWriter, st *state, mm *metrics.LLMModel, e *apiError) {
	mm.Request(e.Status)
	st.status, st.failure = e.Status, e.Message
	writeError(w, e)
}

// The span attributes of an LLM request beyond HTTP's: OpenTelemetry's
// GenAI names, and Loom's.
const (
	attrOperation    = attribute.Key("gen_ai.operation.name")
	attrModel        = attribute.Key("gen_ai.request.model")
	attrInputTokens  = attribute.Key("gen_ai.usage.input_tokens")
	attrOutputTokens = attribute.Key("gen_ai.usage.output_tokens")
	attrCachedTokens = attribute.Key("loom.llm.cached_tokens")
	attrMigrations   = attribute.Key("loom.llm.migrations")
)

// startSpan starts the request's server span, a child of the span in
// its context (a wrapping HTTP middleware's) or else of its traceparent
// header, and returns the request with the span in its context: the
// calls to workers are its children.
func startSpan(tr trace.Tracer, r *http.Request, st *state) *http.Request {
	ctx := r.Context()
	if !trace.SpanContextFromContext(ctx).IsValid() {
		ctx = loom.ContextWithTraceParent(ctx, r.Header.Get("traceparent"))
	}
	ctx, st.span = tr.Start(ctx, r.Method+" "+r.URL.Path, trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(semconv.HTTPRequestMethodKey.String(r.Method), semconv.URLPath(r.URL.Path)))
	st.status, st.model, st.res, st.failure = 0, "", result{}, ""
	return r.WithContext(ctx)
}

// endSpan ends the request's span with its status, model and usage; a
// 5xx is an error, a 4xx the client's.
func endSpan(st *state) {
	sp := st.span
	st.span = nil
	if st.status != 0 {
		sp.SetAttributes(semconv.HTTPResponseStatusCode(st.status))
	}
	if st.model != "" {
		sp.SetAttributes(attrModel.String(st.model), attrOutputTokens.Int(st.res.completion),
			attrCachedTokens.Int(st.res.cached), attrMigrations.Int(st.res.migrations))
	}
	if st.status >= 500 {
		sp.SetStatus(codes.Error, st.failure)
	}
	sp.End()
}

// modelMetrics returns the bound metrics of a served model (model "":
// of requests for no model a worker has served), its request counts
// started at 0 for every status in requestStatuses.
func (f *Frontend) modelMetrics(model string) *metrics.LLMModel {
	if v, ok := f.mms.Load(model); ok {
		return v.(*metrics.LLMModel)
	}
	mm := f.m.LLMModel(model, requestStatuses...)
	f.mms.Store(model, mm)
	return mm
}

// answer runs a checked request and writes its response.
func (f *Frontend) answer(w http.ResponseWriter, r *http.Request, start time.Time, st *state, p *params) {
	s := f.models.Load()
	card, known := s.cards[p.model]
	if !known {
		f.fail(w, st, f.unknownModel, &apiError{Status: http.StatusNotFound, Type: typeInvalid, Param: "model", Code: "model_not_found",
			Message: fmt.Sprintf("model %q does not exist: no worker has served it (GET /v1/models lists the served models)", p.model)})
		return
	}
	mm := f.modelMetrics(p.model)
	if s.workers(p.model) == 0 {
		f.fail(w, st, mm, &apiError{Status: http.StatusServiceUnavailable, Type: typeUnavailable, Code: "no_worker",
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
			f.fail(w, st, mm, badRequest(param, "%s: the prompt has %d tokens; model %q has a context length of %d", param, len(p.prompt), p.model, card.ContextLength))
			return
		case maxTokens > room:
			f.fail(w, st, mm, badRequest(p.maxParam, "%s: %d tokens requested after a prompt of %d; model %q has a context length of %d",
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
	if st.span != nil {
		op := "text_completion"
		if p.chat {
			op = "chat"
		}
		st.model = p.model
		st.span.SetAttributes(attrOperation.String(op), attrInputTokens.Int(len(p.prompt)))
	}
	prefix, object := "cmpl-", "text_completion"
	if p.chat {
		prefix, object = "chatcmpl-", "chat.completion"
	}
	j := &job{id: f.newID(prefix), p: p, maxTokens: maxTokens, mm: mm, start: start, st: st}
	w.Header().Set(HeaderRequestID, j.id)
	status := http.StatusOK
	if p.stream {
		status = f.stream(w, r, j, object)
	} else {
		status = f.unary(w, r, j, object)
	}
	mm.Request(status)
	mm.Duration.Observe(time.Since(start).Seconds())
	st.status = status
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
	wd := writeDeadline{rc: rc, timeout: f.cfg.WriteTimeout}
	chat := j.p.chat
	// data: {head}"choices":[{"index":0,
	st.head = append(st.head[:0], "data: "...)
	st.head = f.appendHead(st.head, j, object+chunkSuffix(chat))
	st.head = append(st.head, `"choices":[{"index":0,`...)
	started := false
	unsent := false // written and not yet flushed
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
		unsent = true
		wd.arm()
		_, err := w.Write(b)
		return err
	}
	j.flush = func() error {
		if !unsent {
			return nil
		}
		unsent = false
		return rc.Flush()
	}
	res, err := f.run(ctx, j)
	st.res = res
	// A header if nothing was sent yet, else a trailer (begin declared it).
	migrations := strconv.Itoa(res.migrations)
	if err != nil {
		if r.Context().Err() != nil {
			return statusClientClosed
		}
		e := toAPIError(err)
		st.failure = e.Message
		if !started {
			w.Header().Set(HeaderMigrations, migrations)
			writeError(w, e)
			return e.Status
		}
		f.log.Warn("llm frontend: stream failed", "request", j.id, "model", j.p.model, "err", err)
		b := append(st.chunk[:0], "data: "...)
		b = e.appendJSON(b)
		st.chunk = append(b, "\n\n"...)
		wd.arm()
		_, _ = w.Write(st.chunk)
		_ = rc.Flush()
		w.Header().Set(HeaderMigrations, migrations)
		return e.Status
	}
	empty := !started // no text: the finish is the stream's first chunk
	if empty {
		begin()
	}
	b := append(st.chunk[:0], st.head...)
	switch {
	case chat && empty:
		// The first chunk of a chat names the role, even with no text.
		b = append(b, `"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":"`...)
	case chat:
		b = append(b, `"delta":{},"logprobs":null,"finish_reason":"`...)
	default:
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
	wd.arm()
	_, _ = w.Write(b)
	_ = rc.Flush()
	w.Header().Set(HeaderMigrations, migrations)
	return http.StatusOK
}

// writeDeadline bounds each write of an answer by the connection's write
// deadline, Config.WriteTimeout ahead. Setting a deadline costs a timer
// update, so arm sets it only once an eighth of the timeout has passed
// since it last did: a write has between seven eighths of the timeout and
// all of it. net/http clears the deadline when the request ends, before
// the connection's next request.
type writeDeadline struct {
	rc      *http.ResponseController
	timeout time.Duration
	set     time.Time // when the deadline was last set; zero: not set
	failed  bool      // the writer takes no deadlines
}

func (d *writeDeadline) arm() {
	if d.failed {
		return
	}
	now := time.Now()
	if !d.set.IsZero() && now.Sub(d.set) < d.timeout/8 {
		return
	}
	if d.rc.SetWriteDeadline(now.Add(d.timeout)) != nil {
		d.failed = true
		return
	}
	d.set = now
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
	st.res = res
	wd := writeDeadline{rc: http.NewResponseController(w), timeout: f.cfg.WriteTimeout}
	wd.arm()
	w.Header().Set(HeaderMigrations, strconv.Itoa(res.migrations))
	if err != nil {
		if r.Context().Err() != nil {
			return statusClientClosed
		}
		e := toAPIError(err)
		st.failure = e.Message
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
