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
	p.signal(syscall.SIGTERM)
	if code := p.wait(20 * time.Second); code != 0 {
		_, errOut := p.output()
		t.Fatalf("loom llm up exited %d; stderr:\n%s", code, errOut)
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
func TestLLMWorkerKilledMidStream(t *testing.T) {
	cp := up(t, "natskv")
	defer cp.stop()
	env := cp.componentEnv(2 * time.Second)
	fe := start(t, env, "loom", "llm", "frontend", "--port", "0", "--router", "round_robin")
	base := strings.TrimPrefix(fe.waitLine("OPENAI_BASE_URL=", 60*time.Second), "OPENAI_BASE_URL=")
	waitWorkers := func(n int) { t.Helper(); waitModelWorkers(t, base, n) }
	first := start(t, env, "loom", "llm", "worker", "--decode-step", "20ms")
	first.waitLine("loom llm worker:", 30*time.Second)
	waitWorkers(1)

	c := openaiClient(base)
	stream := c.Chat.Completions.NewStreaming(context.Background(), chatParams(60))
	var sb strings.Builder
	finish := ""
	second := (*proc)(nil)
	for stream.Next() {
		for _, ch := range stream.Current().Choices {
			sb.WriteString(ch.Delta.Content)
			if ch.FinishReason != "" {
				finish = ch.FinishReason
			}
		}
		if second == nil && len(strings.Fields(sb.String())) >= 10 {
			second = start(t, env, "loom", "llm", "worker", "--decode-step", "1ms")
			waitWorkers(2)
			first.signal(syscall.SIGKILL)
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatalf("the stream failed after %q: %v", sb.String(), err)
	}
	stream.Close()
	got := sb.String()
	if n := len(strings.Fields(got)); n != 60 || finish != "length" {
		t.Fatalf("migrated stream: %d words, finish %q: %q", n, finish, got)
	}
	// The frontend counted one migration.
	mresp, err := http.Get(strings.TrimSuffix(base, "/v1") + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	if want := `loom_llm_migrations_total{model="mock-model"} 1`; !strings.Contains(string(body), want) {
		t.Errorf("frontend metrics lack %s", want)
	}
	t.Logf("stream after SIGKILL of its worker at word 10: %d words, finish %s, migrations 1: %q", len(strings.Fields(got)), finish, got)
	resp, err := c.Chat.Completions.New(context.Background(), chatParams(60))
	if err != nil {
		t.Fatal(err)
	}
	if want := resp.Choices[0].Message.Content; got != want {
		t.Errorf("the migrated stream differs from the same request unmigrated:\n got %q\nwant %q", got, want)
	}
	second.signal(syscall.SIGTERM)
	second.wait(20 * time.Second)
	fe.signal(syscall.SIGTERM)
	if code := fe.wait(20 * time.Second); code != 0 {
		_, errOut := fe.output()
		t.Fatalf("frontend exited %d; stderr:\n%s", code, errOut)
	}
	first.wait(5 * time.Second)
}

// TestLLMRollingRestartLosesNoRequest: a frontend and two mock workers as
// processes serve the official client's streaming requests without a
// pause while each worker in turn is replaced: a new one starts, the old
// one gets SIGTERM and finishes what it serves. Every request streams
// all its tokens, and none needed migrating. Disaggregated, the decode
// workers hand every prefill to two prefill workers through the prefill
// queue, and those are replaced in turn too.
func TestLLMRollingRestartLosesNoRequest(t *testing.T) {
	for _, disagg := range []bool{false, true} {
		t.Run(map[bool]string{false: "aggregated", true: "disaggregated"}[disagg], func(t *testing.T) {
			rollingRestart(t, disagg)
		})
	}
}

func rollingRestart(t *testing.T, disagg bool) {
	cp := up(t, "natskv")
	defer cp.stop()
	env := cp.componentEnv(2 * time.Second)
	fe := start(t, env, "loom", "llm", "frontend", "--port", "0", "--router", "kv")
	base := strings.TrimPrefix(fe.waitLine("OPENAI_BASE_URL=", 60*time.Second), "OPENAI_BASE_URL=")
	args := []string{"llm", "worker", "--decode-step", "5ms"}
	if disagg {
		// Every prompt here has more than 8 uncached tokens.
		args = append(args, "--remote-prefill", "--remote-prefill-min", "8")
	}
	worker := func(args ...string) *proc {
		w := start(t, env, "loom", args...)
		w.waitLine("loom llm worker:", 30*time.Second)
		return w
	}
	var prefills []*proc
	if disagg {
		prefills = []*proc{worker("llm", "worker", "--prefill"), worker("llm", "worker", "--prefill")}
	}
	workers := []*proc{worker(args...), worker(args...)}
	waitModelWorkers(t, base, 2)

	const tokens = 24
	type result struct {
		words  int
		finish string
		err    error
	}
	var (
		mu      sync.Mutex
		results []result
	)
	done := func() int { mu.Lock(); defer mu.Unlock(); return len(results) }
	stop := make(chan struct{})
	var wg sync.WaitGroup
	c := openaiClient(base)
	for caller := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				// A prompt of its own, so that no prefill is cached.
				params := chatParams(tokens)
				params.Messages = append(params.Messages, openai.UserMessage(fmt.Sprintf("Caller %d asks question %d.", caller, i)))
				stream := c.Chat.Completions.NewStreaming(context.Background(), params)
				var r result
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
				mu.Lock()
				results = append(results, r)
				mu.Unlock()
			}
		})
	}
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()
	// More requests complete: the load goes on.
	goesOn := func(what string) {
		t.Helper()
		from := done()
		for deadline := time.Now().Add(30 * time.Second); done() < from+8; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d requests completed in 30s; want 8", what, done()-from)
			}
		}
	}
	// stopped sends old SIGTERM and returns its last line.
	stopped := func(what string, old *proc) string {
		t.Helper()
		old.signal(syscall.SIGTERM)
		if code := old.wait(30 * time.Second); code != 0 {
			_, errOut := old.output()
			t.Fatalf("%s exited %d on SIGTERM; stderr:\n%s", what, code, errOut)
		}
		lines, _ := old.output()
		return lines[len(lines)-1]
	}
	goesOn("before the restart")
	handed := 0
	for i, old := range workers {
		workers[i] = worker(args...)
		waitModelWorkers(t, base, 3)
		last := stopped(fmt.Sprintf("worker %d", i), old)
		waitModelWorkers(t, base, 2)
		t.Logf("worker %d: %s", i, last)
		var served, n int
		if _, err := fmt.Sscanf(last, "loom llm worker: stopped after %d requests (%d prefills", &served, &n); err != nil {
			t.Fatalf("worker %d's last line %q: %v", i, last, err)
		}
		handed += n
		goesOn(fmt.Sprintf("after worker %d was replaced", i))
	}
	jobs := 0
	for i, old := range prefills {
		prefills[i] = worker("llm", "worker", "--prefill")
		last := stopped(fmt.Sprintf("prefill worker %d", i), old)
		t.Logf("prefill worker %d: %s", i, last)
		var n int
		if _, err := fmt.Sscanf(last, "loom llm worker: stopped after %d prefill jobs", &n); err != nil {
			t.Fatalf("prefill worker %d's last line %q: %v", i, last, err)
		}
		jobs += n
		goesOn(fmt.Sprintf("after prefill worker %d was replaced", i))
	}
	close(stop)
	wg.Wait()

	bad := 0
	for _, r := range results {
		if r.err != nil || r.words != tokens || r.finish != "length" {
			if bad++; bad <= 5 {
				t.Errorf("a request streamed %d words (finish %q), err %v; want %d words ending for length", r.words, r.finish, r.err, tokens)
			}
		}
	}
	mresp, err := http.Get(strings.TrimSuffix(base, "/v1") + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	migrations := "0"
	for _, l := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(l, `loom_llm_migrations_total{model="mock-model"} `) {
			migrations = strings.Fields(l)[1]
		}
	}
	t.Logf("rolling restart under 4 streaming callers: %d requests, %d failed or cut short, %s migrated; the stopped decode workers handed %d prefills over, the stopped prefill workers did %d",
		len(results), bad, migrations, handed, jobs)
	if migrations != "0" {
		t.Errorf("loom_llm_migrations_total = %s; a graceful stop should finish its streams, not hand them on", migrations)
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
	fe.signal(syscall.SIGTERM)
	if code := fe.wait(20 * time.Second); code != 0 {
		_, errOut := fe.output()
		t.Fatalf("frontend exited %d; stderr:\n%s", code, errOut)
	}
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
		t.Fatalf("frontend exited %d after SIGTERM; stderr:\n%s", code, errOut)
	}
	w.signal(syscall.SIGTERM)
	w.wait(20 * time.Second)
}
