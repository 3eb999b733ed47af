package e2e

import (
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

var (
	buildTracehop sync.Once
	tracehopErr   error
)

// tracehopBin builds e2e/cmd/tracehop next to the other binaries.
func tracehopBin(t *testing.T) {
	t.Helper()
	buildTracehop.Do(func() {
		out, err := exec.Command("go", "build", "-o", filepath.Join(bin, "tracehop"), "./cmd/tracehop").CombinedOutput()
		if err != nil {
			tracehopErr = fmt.Errorf("building e2e/cmd/tracehop: %v\n%s", err, out)
		}
	})
	if tracehopErr != nil {
		t.Fatal(tracehopErr)
	}
}

// span is what the test checks of an exported span.
type span struct {
	service, name, kind string
	trace, id, parent   string
}

// receiver is an OTLP/HTTP trace receiver: it decodes the protobuf
// requests the exporters send to /v1/traces and keeps their spans.
type receiver struct {
	srv   *http.Server
	addr  string
	mu    sync.Mutex
	spans []span
}

func startReceiver(t *testing.T) *receiver {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &receiver{addr: ln.Addr().String()}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/traces", func(w http.ResponseWriter, req *http.Request) {
		body, err := io.ReadAll(req.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var ex collectortrace.ExportTraceServiceRequest
		if req.Header.Get("Content-Type") != "application/x-protobuf" {
			http.Error(w, "want application/x-protobuf, got "+req.Header.Get("Content-Type"), http.StatusUnsupportedMediaType)
			return
		}
		if err := proto.Unmarshal(body, &ex); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.add(&ex)
		out, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	})
	r.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() { defer close(done); _ = r.srv.Serve(ln) }()
	t.Cleanup(func() { _ = r.srv.Close(); <-done })
	return r
}

func (r *receiver) add(ex *collectortrace.ExportTraceServiceRequest) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range ex.GetResourceSpans() {
		service := ""
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				service = kv.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				r.spans = append(r.spans, span{service: service, name: s.GetName(), kind: tracepb.Span_SpanKind_name[int32(s.GetKind())],
					trace: hex.EncodeToString(s.GetTraceId()), id: hex.EncodeToString(s.GetSpanId()), parent: hex.EncodeToString(s.GetParentSpanId())})
			}
		}
	}
}

// find returns the span of service with name and kind, waiting for it.
func (r *receiver) find(t *testing.T, service, name, kind string) span {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.mu.Lock()
		for _, s := range r.spans {
			if s.service == service && s.name == name && s.kind == kind {
				r.mu.Unlock()
				return s
			}
		}
		all := fmt.Sprint(r.spans)
		r.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("no %s span %q from %s at the receiver; it has %s", kind, name, service, all)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (r *receiver) env(service string) []string {
	return []string{"OTEL_EXPORTER_OTLP_ENDPOINT=http://" + r.addr, "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
		"OTEL_SERVICE_NAME=" + service, "OTEL_BSP_SCHEDULE_DELAY=100"}
}

func firstReturn(lines []string, _ string) []string { return lines }

// checkChain fails unless the spans are in one trace, each the child of
// the one before it.
func checkChain(t *testing.T, chain ...span) {
	t.Helper()
	for i, s := range chain {
		if s.trace != chain[0].trace {
			t.Errorf("%s %s %s is in trace %s, the first span in %s", s.service, s.kind, s.name, s.trace, chain[0].trace)
		}
		if i > 0 && s.parent != chain[i-1].id {
			t.Errorf("%s %s %s has parent %s, want %s's %s span %s", s.service, s.kind, s.name, s.parent, chain[i-1].service, chain[i-1].kind, chain[i-1].id)
		}
	}
	if chain[0].parent != "" {
		t.Errorf("the first span %s has a parent %s", chain[0].name, chain[0].parent)
	}
	for _, s := range chain {
		t.Logf("trace %s span %s parent %-16s %-8s %-18s %s", s.trace, s.id, s.parent, s.service, s.kind, s.name)
	}
}

// TestATwoHopCallAndAQueuedJobAreEachOneTraceAtARealReceiver: a client
// process calls server A, which calls server B; a producer process
// enqueues a job that a consumer process handles. Each process exports
// OTLP/HTTP to a receiver this test runs; the call is one trace of four
// spans, each the child of the one before, and the job one trace of its
// enqueue and its handling.
func TestATwoHopCallAndAQueuedJobAreEachOneTraceAtARealReceiver(t *testing.T) {
	tracehopBin(t)
	cp := up(t, "natskv")
	defer cp.stop()
	r := startReceiver(t)
	env := func(service string) []string { return append(cp.componentEnv(5*time.Second), r.env(service)...) }

	leaf := start(t, env("leaf"), "tracehop", "leaf")
	leaf.waitLine("serving ", 30*time.Second)
	mid := start(t, env("mid"), "tracehop", "mid")
	mid.waitLine("serving ", 30*time.Second)
	call := start(t, env("caller"), "tracehop", "call")
	if code := call.wait(30 * time.Second); code != 0 || !slices.Contains(firstReturn(call.output()), "got x+a+b") {
		lines, errOut := call.output()
		t.Fatalf("tracehop call exited %d, printed %q; stderr: %s", code, lines, errOut)
	}
	for _, p := range []*proc{mid, leaf} {
		p.signal(syscall.SIGTERM)
		if code := p.wait(20 * time.Second); code != 0 {
			_, errOut := p.output()
			t.Fatalf("%s exited %d: %s", p.name, code, errOut)
		}
	}
	checkChain(t,
		r.find(t, "caller", "trace/a/mid", "SPAN_KIND_CLIENT"),
		r.find(t, "mid", "trace/a/mid", "SPAN_KIND_SERVER"),
		r.find(t, "mid", "trace/b/leaf", "SPAN_KIND_CLIENT"),
		r.find(t, "leaf", "trace/b/leaf", "SPAN_KIND_SERVER"))

	producer := start(t, env("producer"), "tracehop", "enqueue")
	if code := producer.wait(30 * time.Second); code != 0 {
		_, errOut := producer.output()
		t.Fatalf("tracehop enqueue exited %d: %s", code, errOut)
	}
	consumer := start(t, env("consumer"), "tracehop", "consume")
	if code := consumer.wait(30 * time.Second); code != 0 || !slices.Contains(firstReturn(consumer.output()), "handled") {
		lines, errOut := consumer.output()
		t.Fatalf("tracehop consume exited %d, printed %q; stderr: %s", code, lines, errOut)
	}
	checkChain(t,
		r.find(t, "producer", "send traced", "SPAN_KIND_PRODUCER"),
		r.find(t, "consumer", "process traced", "SPAN_KIND_CONSUMER"))
}
