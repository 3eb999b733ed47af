package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

func openaiClient(base string) openai.Client {
	return openai.NewClient(option.WithBaseURL(base+"/"), option.WithAPIKey("unused"), option.WithMaxRetries(0))
}

func chatParams(maxTokens int) openai.ChatCompletionNewParams {
	return openai.ChatCompletionNewParams{
		Model: "mock-model",
		Messages: []openai.ChatCompletionMessageParamUnion{
			openai.SystemMessage("You are a helpful assistant."),
			openai.UserMessage("Tell me about the sea."),
		},
		MaxTokens: openai.Int(int64(maxTokens)),
	}
}

// TestLLMUpAnswersTheOpenAIClient: `loom llm up` starts the stack in one
// process and answers the official client's streaming chat request.
func TestLLMUpAnswersTheOpenAIClient(t *testing.T) {
	p := start(t, nil, "loom", "llm", "up", "--port", "0", "--workers", "2", "--decode-step", "1ms")
	base := strings.TrimPrefix(p.waitLine("OPENAI_BASE_URL=", 60*time.Second), "OPENAI_BASE_URL=")
	c := openaiClient(base)
	stream := c.Chat.Completions.NewStreaming(context.Background(), chatParams(16))
	var sb strings.Builder
	chunks, finish := 0, ""
	for stream.Next() {
		for _, ch := range stream.Current().Choices {
			sb.WriteString(ch.Delta.Content)
			if ch.FinishReason != "" {
				finish = ch.FinishReason
			}
		}
		chunks++
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	stream.Close()
	if n := len(strings.Fields(sb.String())); n != 16 || finish != "length" {
		t.Fatalf("streamed %q (%d words, finish %q) in %d chunks; want 16 words ending for length", sb.String(), n, finish, chunks)
	}
	t.Logf("loom llm up at %s streamed %d chunks: %q (finish %s)", base, chunks, sb.String(), finish)
	terminate(t, p, "loom llm up")
}

// terminate sends p SIGTERM and fails the test unless it exits 0 within
// 20 s.
func terminate(t *testing.T, p *proc, what string) {
	t.Helper()
	p.signal(syscall.SIGTERM)
	if code := p.wait(20 * time.Second); code != 0 {
		_, errOut := p.output()
		t.Fatalf("%s exited %d on SIGTERM; stderr:\n%s", what, code, errOut)
	}
}

// modelWorkers is how many workers the frontend at base lists for its
// first model, or -1 if it does not answer.
func modelWorkers(base string) int {
	resp, err := http.Get(base + "/models")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var m struct{ Data []struct{ Workers int } }
	_ = json.NewDecoder(resp.Body).Decode(&m)
	if len(m.Data) == 0 {
		return 0
	}
	return m.Data[0].Workers
}

func waitModelWorkers(t *testing.T, base string, n int) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); modelWorkers(base) != n; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the frontend never listed %d workers (has %d)", n, modelWorkers(base))
		}
	}
}

// TestLLMWorkerKilledMidStream: loom up, a frontend and mock workers as
// processes; the worker serving a stream is killed with SIGKILL and the
// client's stream goes on, identical to an unmigrated one.
func TestLLMWorkerKilledMidStream(t *testing.T) { workerLostMidStream(t, syscall.SIGKILL) }

// TestLLMWorkerFrozenMidStream: the worker serving a stream is frozen
// with SIGSTOP (its connections stay open; it answers nothing, not even
// pings); the client's stream goes on from another worker, identical to
// an unfrozen one. The frozen worker's lease runs out, it leaves
// discovery, and the frontend cuts its quiet request after
// --departed-idle.
func TestLLMWorkerFrozenMidStream(t *testing.T) { workerLostMidStream(t, syscall.SIGSTOP) }

// workerLostMidStream sends sig to the worker serving a stream at its
// tenth word, once a second worker is up, and checks that the client's
// stream is whole, migrated once, and the same as an undisturbed one.
func workerLostMidStream(t *testing.T, sig syscall.Signal) {
	cp := up(t, "natskv")
	defer cp.stop()
	env := cp.componentEnv(2 * time.Second)
	fe := start(t, env, "loom", "llm", "frontend", "--port", "0", "--router", "round_robin")
	base := strings.TrimPrefix(fe.waitLine("OPENAI_BASE_URL=", 60*time.Second), "OPENAI_BASE_URL=")
	first := startLLMWorker(t, env, "llm", "worker", "--decode-step", "20ms")
	waitModelWorkers(t, base, 1)

	c := openaiClient(base)
	stream := c.Chat.Completions.NewStreaming(context.Background(), chatParams(60))
	var sb strings.Builder
	finish := ""
	var second *proc
	var lost time.Time
	for stream.Next() {
		for _, ch := range stream.Current().Choices {
			sb.WriteString(ch.Delta.Content)
			if ch.FinishReason != "" {
				finish = ch.FinishReason
			}
		}
		if second == nil && len(strings.Fields(sb.String())) >= 10 {
			second = startLLMWorker(t, env, "llm", "worker", "--decode-step", "1ms")
			waitModelWorkers(t, base, 2)
			first.signal(sig)
			lost = time.Now()
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatalf("the stream failed after %q: %v", sb.String(), err)
	}
	stream.Close()
	took := time.Since(lost)
	got := sb.String()
	if n := len(strings.Fields(got)); n != 60 || finish != "length" {
		t.Fatalf("migrated stream: %d words, finish %q: %q", n, finish, got)
	}
	if m := migrations(t, base); m != "1" {
		t.Errorf("loom_llm_migrations_total = %s, want 1", m)
	}
	t.Logf("stream after %s of its worker at word 10: %d words, finish %s, ended %s after the signal: %q", map[syscall.Signal]string{syscall.SIGKILL: "SIGKILL", syscall.SIGSTOP: "SIGSTOP"}[sig], len(strings.Fields(got)), finish, took.Round(time.Millisecond), got)
	resp, err := c.Chat.Completions.New(context.Background(), chatParams(60))
	if err != nil {
		t.Fatal(err)
	}
	if want := resp.Choices[0].Message.Content; got != want {
		t.Errorf("the migrated stream differs from the same request undisturbed:\n got %q\nwant %q", got, want)
	}
	if sig == syscall.SIGSTOP {
		first.signal(syscall.SIGCONT)
	}
	terminate(t, second, "second worker")
	terminate(t, fe, "frontend")
}

// TestLLMRollingRestartLosesNoRequest: a frontend and two mock workers as
// processes, on either request plane, serve the official client's streaming requests without a
// pause while each worker in turn is replaced: a new one starts, the old
// one gets SIGTERM and finishes what it serves. Every request streams
// all its tokens, and none needed migrating. Disaggregated, the decode
// workers hand every prefill to two prefill workers through the prefill
// queue, and those are replaced in turn too.
func TestLLMRollingRestartLosesNoRequest(t *testing.T) {
	for _, plane := range []string{"tcp", "nats"} {
		for _, disagg := range []bool{false, true} {
			t.Run(plane+"/"+map[bool]string{false: "aggregated", true: "disaggregated"}[disagg], func(t *testing.T) {
				rollingRestart(t, plane, disagg)
			})
		}
	}
}

// llmLoad is callers streaming chat completions from a frontend without
// a pause, each with a prompt of its own so that no prefill is cached.
type llmLoad struct {
	mu      sync.Mutex
	results []llmResult
	stop    chan struct{}
	wg      sync.WaitGroup
}

type llmResult struct {
	words  int
	finish string
	err    error
}

func startLLMLoad(t *testing.T, base string, callers, tokens int) *llmLoad {
	l := &llmLoad{stop: make(chan struct{})}
	c := openaiClient(base)
	for caller := range callers {
		l.wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				params := chatParams(tokens)
				params.Messages = append(params.Messages, openai.UserMessage(fmt.Sprintf("Caller %d asks question %d.", caller, i)))
				stream := c.Chat.Completions.NewStreaming(context.Background(), params)
				var r llmResult
				var sb strings.Builder
				for stream.Next() {
					for _, ch := range stream.Current().Choices {
						sb.WriteString(ch.Delta.Content)
						if ch.FinishReason != "" {
							r.finish = ch.FinishReason
						}
					}
				}
				r.err = stream.Err()
				stream.Close()
				r.words = len(strings.Fields(sb.String()))
				l.mu.Lock()
				l.results = append(l.results, r)
				l.mu.Unlock()
			}
		})
	}
	t.Cleanup(func() { l.finish() })
	return l
}

func (l *llmLoad) done() int { l.mu.Lock(); defer l.mu.Unlock(); return len(l.results) }

// goesOn waits until 8 more requests have completed.
func (l *llmLoad) goesOn(t *testing.T, what string) {
	t.Helper()
	from := l.done()
	for deadline := time.Now().Add(30 * time.Second); l.done() < from+8; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d requests completed in 30s; want 8", what, l.done()-from)
		}
	}
}

// finish stops the callers and returns every result.
func (l *llmLoad) finish() []llmResult {
	l.mu.Lock()
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.mu.Unlock()
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.results
}

// whole reports each result that is not tokens words ending for length
// (the first five), and returns how many there are.
func whole(t *testing.T, results []llmResult, tokens int) (bad int) {
	t.Helper()
	for _, r := range results {
		if r.err != nil || r.words != tokens || r.finish != "length" {
			if bad++; bad <= 5 {
				t.Errorf("a request streamed %d words (finish %q), err %v; want %d words ending for length", r.words, r.finish, r.err, tokens)
			}
		}
	}
	return bad
}

// migrations reads loom_llm_migrations_total of mock-model from the
// frontend at base.
func migrations(t *testing.T, base string) string {
	t.Helper()
	mresp, err := http.Get(strings.TrimSuffix(base, "/v1") + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	for _, l := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(l, `loom_llm_migrations_total{model="mock-model"} `) {
			return strings.Fields(l)[1]
		}
	}
	return "0"
}

// llmWorkerArgs are the arguments of a mock decode worker; disaggregated,
// it hands the prefill of every prompt here to the prefill workers.
func llmWorkerArgs(disagg bool) []string {
	args := []string{"llm", "worker", "--decode-step", "5ms"}
	if disagg {
		args = append(args, "--remote-prefill", "--remote-prefill-min", "8")
	}
	return args
}

func startLLMWorker(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	w := start(t, env, "loom", args...)
	w.waitLine("loom llm worker:", 30*time.Second)
	return w
}

func rollingRestart(t *testing.T, plane string, disagg bool) {
	cp := up(t, "natskv")
	defer cp.stop()
	env := append(cp.componentEnv(2*time.Second), "LOOM_REQUEST_PLANE_TRANSPORT="+plane)
	fe := start(t, env, "loom", "llm", "frontend", "--port", "0", "--router", "kv")
	base := strings.TrimPrefix(fe.waitLine("OPENAI_BASE_URL=", 60*time.Second), "OPENAI_BASE_URL=")
	args := llmWorkerArgs(disagg)
	var prefills []*proc
	if disagg {
		prefills = []*proc{startLLMWorker(t, env, "llm", "worker", "--prefill"), startLLMWorker(t, env, "llm", "worker", "--prefill")}
	}
	workers := []*proc{startLLMWorker(t, env, args...), startLLMWorker(t, env, args...)}
	waitModelWorkers(t, base, 2)
	for _, inst := range ls(t, env, "llm/backend/generate") {
		if inst.Transport != plane {
			t.Fatalf("worker %x serves on %s; want %s", inst.ID, inst.Transport, plane)
		}
	}

	const tokens = 24
	load := startLLMLoad(t, base, 4, tokens)
	// stopped sends old SIGTERM and returns its last line.
	stopped := func(what string, old *proc) string {
		t.Helper()
		terminate(t, old, what)
		lines, _ := old.output()
		return lines[len(lines)-1]
	}
	load.goesOn(t, "before the restart")
	handed := 0
	for i, old := range workers {
		workers[i] = startLLMWorker(t, env, args...)
		waitModelWorkers(t, base, 3)
		last := stopped(fmt.Sprintf("worker %d", i), old)
		waitModelWorkers(t, base, 2)
		t.Logf("worker %d: %s", i, last)
		var served, n int
		if _, err := fmt.Sscanf(last, "loom llm worker: stopped after %d requests (%d prefills", &served, &n); err != nil {
			t.Fatalf("worker %d's last line %q: %v", i, last, err)
		}
		handed += n
		load.goesOn(t, fmt.Sprintf("after worker %d was replaced", i))
	}
	jobs := 0
	for i, old := range prefills {
		prefills[i] = startLLMWorker(t, env, "llm", "worker", "--prefill")
		last := stopped(fmt.Sprintf("prefill worker %d", i), old)
		t.Logf("prefill worker %d: %s", i, last)
		var n int
		if _, err := fmt.Sscanf(last, "loom llm worker: stopped after %d prefill jobs", &n); err != nil {
			t.Fatalf("prefill worker %d's last line %q: %v", i, last, err)
		}
		jobs += n
		load.goesOn(t, fmt.Sprintf("after prefill worker %d was replaced", i))
	}
	results := load.finish()
	bad := whole(t, results, tokens)
	m := migrations(t, base)
	t.Logf("rolling restart under 4 streaming callers: %d requests, %d failed or cut short, %s migrated; the stopped decode workers handed %d prefills over, the stopped prefill workers did %d",
		len(results), bad, m, handed, jobs)
	if m != "0" {
		t.Errorf("loom_llm_migrations_total = %s; a graceful stop should finish its streams, not hand them on", m)
	}
	if disagg && (handed == 0 || jobs == 0) {
		t.Errorf("the stopped decode workers handed %d prefills to the queue and the stopped prefill workers did %d; want both above 0", handed, jobs)
	}
	if !disagg && handed != 0 {
		t.Errorf("aggregated workers handed %d prefills over; want 0", handed)
	}
	for _, w := range append(workers, prefills...) {
		w.signal(syscall.SIGTERM)
		w.wait(20 * time.Second)
	}
	terminate(t, fe, "frontend")
}

// TestLLMServesThroughAControlPlaneRestart: the control plane (nats-server
// with JetStream, and discovery on its KV or on etcd) stops for twice the lease TTL
// and comes back, under four streaming callers, with decode workers that
// hand every prefill to prefill workers through the prefill queue.
// Requests made meanwhile wait for it; none fails.
func TestLLMServesThroughAControlPlaneRestart(t *testing.T) {
	for _, disc := range []string{"natskv", "etcd"} {
		t.Run(disc, func(t *testing.T) { controlPlaneRestart(t, disc) })
	}
}

func controlPlaneRestart(t *testing.T, disc string) {
	const ttl = 2 * time.Second
	cp := up(t, disc)
	defer cp.stop()
	env := cp.componentEnv(ttl)
	fe := start(t, env, "loom", "llm", "frontend", "--port", "0", "--router", "kv")
	base := strings.TrimPrefix(fe.waitLine("OPENAI_BASE_URL=", 60*time.Second), "OPENAI_BASE_URL=")
	args := llmWorkerArgs(true)
	procs := []*proc{
		startLLMWorker(t, env, "llm", "worker", "--prefill"), startLLMWorker(t, env, "llm", "worker", "--prefill"),
		startLLMWorker(t, env, args...), startLLMWorker(t, env, args...),
	}
	waitModelWorkers(t, base, 2)

	const tokens = 24
	load := startLLMLoad(t, base, 4, tokens)
	load.goesOn(t, "before the outage")
	before := load.done()
	cp.stop()
	time.Sleep(2 * ttl) // the outage
	during := load.done() - before
	cp.start()
	load.goesOn(t, "after the outage")
	// The frontend's discovery watch is back: it lists a worker started now.
	procs = append(procs, startLLMWorker(t, env, args...))
	waitModelWorkers(t, base, 3)
	load.goesOn(t, "with the new worker")
	results := load.finish()
	bad := whole(t, results, tokens)
	t.Logf("control plane down %s under 4 streaming callers: %d requests (%d before the outage, %d completed during it), %d failed or cut short, %s migrated",
		2*ttl, len(results), before, during, bad, migrations(t, base))
	handed := 0
	for i, w := range procs {
		terminate(t, w, fmt.Sprintf("worker %d", i))
		lines, _ := w.output()
		t.Logf("worker %d: %s", i, lines[len(lines)-1])
		var served, n int
		if _, err := fmt.Sscanf(lines[len(lines)-1], "loom llm worker: stopped after %d requests (%d prefills", &served, &n); err == nil {
			handed += n
		}
	}
	if handed == 0 {
		t.Error("the decode workers handed no prefill to the queue")
	}
	terminate(t, fe, "frontend")
}

// TestLLMFrontendSIGTERMFinishesItsStreams: a frontend process that gets
// SIGTERM while streaming answers takes no new request but finishes the
// streams it has, then exits 0.
func TestLLMFrontendSIGTERMFinishesItsStreams(t *testing.T) {
	cp := up(t, "natskv")
	defer cp.stop()
	env := cp.componentEnv(2 * time.Second)
	fe := start(t, env, "loom", "llm", "frontend", "--port", "0", "--router", "kv")
	base := strings.TrimPrefix(fe.waitLine("OPENAI_BASE_URL=", 60*time.Second), "OPENAI_BASE_URL=")
	w := start(t, env, "loom", "llm", "worker", "--decode-step", "20ms")
	w.waitLine("loom llm worker:", 30*time.Second)
	waitModelWorkers(t, base, 1)

	const streams, tokens = 3, 30
	c := openaiClient(base)
	started := make(chan struct{}, streams)
	type result struct {
		words  int
		finish string
		err    error
	}
	results := make(chan result, streams)
	for range streams {
		go func() {
			stream := c.Chat.Completions.NewStreaming(context.Background(), chatParams(tokens))
			defer stream.Close()
			var r result
			var sb strings.Builder
			began := false
			for stream.Next() {
				for _, ch := range stream.Current().Choices {
					sb.WriteString(ch.Delta.Content)
					if ch.FinishReason != "" {
						r.finish = ch.FinishReason
					}
				}
				if sb.Len() > 0 && !began {
					began = true
					started <- struct{}{}
				}
			}
			r.err = stream.Err()
			r.words = len(strings.Fields(sb.String()))
			results <- r
		}()
	}
	for range streams {
		select {
		case <-started:
		case <-time.After(30 * time.Second):
			t.Fatal("the streams never began")
		}
	}
	fe.signal(syscall.SIGTERM)
	for range streams {
		r := <-results
		if r.err != nil || r.words != tokens || r.finish != "length" {
			t.Errorf("a stream in flight at SIGTERM ended with %d words (finish %q), err %v; want %d ending for length", r.words, r.finish, r.err, tokens)
		}
	}
	if code := fe.wait(20 * time.Second); code != 0 {
		_, errOut := fe.output()
		t.Fatalf("frontend exited %d on SIGTERM; stderr:\n%s", code, errOut)
	}
	w.signal(syscall.SIGTERM)
	w.wait(20 * time.Second)
}
