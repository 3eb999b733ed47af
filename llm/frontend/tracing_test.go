package frontend_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/llm/frontend"
)

// TestARequestIsTracedUnderItsCallersTraceparent sends chats with a W3C
// traceparent through the official client: the frontend's server span
// is its child, with the status, model and usage, and the call to the
// worker is the server span's child. A request for a model nobody serves
// is a 404 span without an error status.
func TestARequestIsTracedUnderItsCallersTraceparent(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer tp.Shutdown(context.Background())
	s := newStackOn(t, "tcp", frontend.Config{}, nil, loom.WithTracerProvider(tp))
	s.worker(workerOpts{})
	s.waitReady(1)
	const parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	psc, err := loom.ParseTraceParent(parent)
	if err != nil {
		t.Fatal(err)
	}
	c := openai.NewClient(option.WithBaseURL(s.url+"/v1/"), option.WithAPIKey("unused"), option.WithMaxRetries(0), option.WithHeader("traceparent", parent))
	ctx := testutil.Timeout(t, 20*time.Second)
	_, finish, usage, err := streamChat(ctx, c, chatParams("hello", 4))
	if err != nil || finish != "length" {
		t.Fatalf("chat: %q, %v", finish, err)
	}
	p := chatParams("hi", 2)
	p.Model = "nope"
	if _, err := c.Chat.Completions.New(ctx, p); err == nil {
		t.Fatal("a chat with a model nobody serves succeeded")
	}

	spanOf := func(status int) sdktrace.ReadOnlySpan {
		for _, sp := range rec.Ended() {
			if sp.SpanKind() == trace.SpanKindServer && attrs(sp)["http.response.status_code"] == attribute.IntValue(status) {
				return sp
			}
		}
		return nil
	}
	testutil.Eventually(t, 10*time.Second, "the two requests' spans to end", func() bool { return spanOf(200) != nil && spanOf(404) != nil })
	ok := spanOf(200)
	if ok.Name() != "POST /v1/chat/completions" || ok.Parent().TraceID() != psc.TraceID() || ok.Parent().SpanID() != psc.SpanID() || !ok.Parent().IsRemote() {
		t.Errorf("server span %q with parent %v; want POST /v1/chat/completions under the traceparent %s", ok.Name(), ok.Parent(), parent)
	}
	want := map[attribute.Key]attribute.Value{
		"http.request.method":        attribute.StringValue(http.MethodPost),
		"url.path":                   attribute.StringValue("/v1/chat/completions"),
		"gen_ai.operation.name":      attribute.StringValue("chat"),
		"gen_ai.request.model":       attribute.StringValue(model),
		"gen_ai.usage.input_tokens":  attribute.IntValue(int(usage.PromptTokens)),
		"gen_ai.usage.output_tokens": attribute.IntValue(int(usage.CompletionTokens)),
		"loom.llm.cached_tokens":     attribute.IntValue(int(usage.PromptTokensDetails.CachedTokens)),
		"loom.llm.migrations":        attribute.IntValue(0),
	}
	got := attrs(ok)
	for k, v := range want {
		if got[k] != v {
			t.Errorf("server span attribute %s = %v, want %v", k, got[k].AsInterface(), v.AsInterface())
		}
	}
	if ok.Status().Code == codes.Error {
		t.Errorf("a 200 span has an error status: %v", ok.Status())
	}
	worker := false
	for _, sp := range rec.Ended() {
		if sp.SpanKind() == trace.SpanKindClient && sp.Parent().SpanID() == ok.SpanContext().SpanID() && sp.Name() == "llm/backend/generate" {
			worker = true
		}
	}
	if !worker {
		t.Error("no client span of llm/backend/generate under the request's server span")
	}
	if nf := spanOf(404); nf.Status().Code == codes.Error || nf.Parent().TraceID() != psc.TraceID() {
		t.Errorf("the 404 span: status %v, trace %v; want no error status (the client's mistake), in the caller's trace", nf.Status(), nf.Parent().TraceID())
	}
}

func attrs(sp sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range sp.Attributes() {
		m[kv.Key] = kv.Value
	}
	return m
}
