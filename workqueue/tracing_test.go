package workqueue_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/workqueue"
)

var (
	recorderOnce sync.Once
	recorder     *tracetest.SpanRecorder
)

// installRecorder installs, once for the package's tests, a global
// TracerProvider that records spans (work queues trace with the global
// provider).
func installRecorder() *tracetest.SpanRecorder {
	recorderOnce.Do(func() {
		recorder = tracetest.NewSpanRecorder()
		otel.SetTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(recorder)))
	})
	return recorder
}

// TestEachAttemptAtAJobIsASpanUnderItsEnqueue: a job enqueued under a span
// is handled twice (the first attempt fails); both attempts are consumer
// spans, children of the enqueue's producer span, numbered, and a job
// refused for good is marked dead-lettered.
func TestEachAttemptAtAJobIsASpanUnderItsEnqueue(t *testing.T) {
	rec := installRecorder()
	_, nc := startNATS(t, nil)
	cfg := testConfig(t)
	cfg.MaxDeliver = 3
	q := newQueue[job](t, nc, cfg)
	ctx, parent := otel.Tracer("test").Start(ctxFor(t, 30*time.Second), "request")
	if err := q.Enqueue(ctx, job{ID: 1, Text: "flaky"}); err != nil {
		t.Fatal(err)
	}
	if err := q.Enqueue(ctx, job{ID: 2, Text: "poison"}); err != nil {
		t.Fatal(err)
	}
	parent.End()
	var mu sync.Mutex
	tries := map[int]int{}
	done := make(chan struct{}, 2)
	consume(t, q, func(ctx context.Context, j *workqueue.Job[job]) error {
		mu.Lock()
		tries[j.Value.ID]++
		n := tries[j.Value.ID]
		mu.Unlock()
		switch {
		case j.Value.ID == 2:
			done <- struct{}{}
			return workqueue.Permanent(errors.New("poison"))
		case n == 1:
			return errors.New("try again")
		}
		done <- struct{}{}
		return nil
	})
	<-done
	<-done
	var send, process []sdktrace.ReadOnlySpan
	testutil.Eventually(t, 5*time.Second, "the spans of 2 enqueues and 3 attempts", func() bool {
		send, process = nil, nil
		for _, s := range rec.Ended() {
			if s.SpanContext().TraceID() != parent.SpanContext().TraceID() {
				continue
			}
			switch s.SpanKind() {
			case trace.SpanKindProducer:
				send = append(send, s)
			case trace.SpanKindConsumer:
				process = append(process, s)
			}
		}
		return len(send) == 2 && len(process) == 3
	})
	for _, s := range send {
		if s.Parent().SpanID() != parent.SpanContext().SpanID() || s.Name() != "send "+cfg.Name {
			t.Errorf("enqueue span %q has parent %s, want the request's %s", s.Name(), s.Parent().SpanID(), parent.SpanContext().SpanID())
		}
	}
	attempts := map[string]bool{}
	for _, s := range process {
		a := map[string]string{}
		for _, kv := range s.Attributes() {
			a[string(kv.Key)] = kv.Value.String()
		}
		ok := false
		for _, p := range send {
			ok = ok || s.Parent().SpanID() == p.SpanContext().SpanID()
		}
		if !ok || s.Name() != "process "+cfg.Name {
			t.Errorf("attempt span %q %v is not a child of an enqueue span", s.Name(), a)
		}
		attempts[a["loom.attempt"]+" dead="+a["loom.dead_lettered"]] = true
	}
	for _, want := range []string{"1 dead=false", "2 dead=", "1 dead=true"} {
		if !attempts[want] {
			t.Errorf("no attempt span with attempt and dead-letter mark %q among %v", want, attempts)
		}
	}
}

// TestAnAttemptWhoseHandlerPanicsIsAFailedSpan: a handler's panic fails
// its attempt like an error does (the consumer recovers it): the
// attempt's span has the error status, and the last attempt is marked
// dead-lettered with its event.
func TestAnAttemptWhoseHandlerPanicsIsAFailedSpan(t *testing.T) {
	rec := installRecorder()
	_, nc := startNATS(t, nil)
	cfg := testConfig(t)
	cfg.MaxDeliver = 2
	q := newQueue[job](t, nc, cfg)
	ctx, parent := otel.Tracer("test").Start(ctxFor(t, 30*time.Second), "request")
	if err := q.Enqueue(ctx, job{ID: 1, Text: "explodes"}); err != nil {
		t.Fatal(err)
	}
	parent.End()
	consume(t, q, func(ctx context.Context, j *workqueue.Job[job]) error { panic("handler exploded") })
	var process []sdktrace.ReadOnlySpan
	testutil.Eventually(t, 10*time.Second, "the spans of the job's 2 attempts", func() bool {
		process = nil
		for _, s := range rec.Ended() {
			if s.SpanContext().TraceID() == parent.SpanContext().TraceID() && s.SpanKind() == trace.SpanKindConsumer {
				process = append(process, s)
			}
		}
		return len(process) == 2
	})
	for _, s := range process {
		a := map[string]string{}
		for _, kv := range s.Attributes() {
			a[string(kv.Key)] = kv.Value.String()
		}
		dead := false
		for _, ev := range s.Events() {
			dead = dead || ev.Name == "loom.dead_letter"
		}
		if s.Status().Code != codes.Error || !strings.Contains(s.Status().Description, "handler exploded") {
			t.Errorf("attempt %s: status %v, want the error status naming the panic", a["loom.attempt"], s.Status())
		}
		if want := a["loom.attempt"] == "2"; a["loom.dead_lettered"] != strconv.FormatBool(want) || dead != want {
			t.Errorf("attempt %s: loom.dead_lettered=%q, loom.dead_letter event %v; want %v", a["loom.attempt"], a["loom.dead_lettered"], dead, want)
		}
	}
}

// TestADequeuedJobContinuesItsTrace: as docs/observability.md says, a
// Dequeue caller continues a job's trace with
// loom.ContextWithTraceParent(ctx, job.Header.Get("traceparent")): the
// header holds the enqueue span's context, and a span started from it is
// the enqueue's child.
func TestADequeuedJobContinuesItsTrace(t *testing.T) {
	rec := installRecorder()
	_, nc := startNATS(t, nil)
	cfg := testConfig(t)
	q := newQueue[job](t, nc, cfg)
	ctx, parent := otel.Tracer("test").Start(ctxFor(t, 30*time.Second), "request")
	if err := q.Enqueue(ctx, job{ID: 1}); err != nil {
		t.Fatal(err)
	}
	parent.End()
	j, err := q.Dequeue(ctxFor(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	_, span := otel.Tracer("test").Start(loom.ContextWithTraceParent(context.Background(), j.Header.Get("traceparent")), "work")
	span.End()
	if err := j.Ack(ctxFor(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	var send sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.SpanKind() == trace.SpanKindProducer && s.Parent().SpanID() == parent.SpanContext().SpanID() {
			send = s
		}
	}
	if send == nil {
		t.Fatal("no enqueue span under the request's")
	}
	if got := span.(sdktrace.ReadOnlySpan); got.Parent().SpanID() != send.SpanContext().SpanID() || got.SpanContext().TraceID() != parent.SpanContext().TraceID() {
		t.Fatalf("the dequeued job's span has parent %s in trace %s; want the enqueue's %s in %s",
			got.Parent().SpanID(), got.SpanContext().TraceID(), send.SpanContext().SpanID(), parent.SpanContext().TraceID())
	}
}
