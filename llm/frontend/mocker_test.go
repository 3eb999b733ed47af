package frontend_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/llm/frontend"
	"github.com/loomrt/loom/llm/mocker"
	"github.com/loomrt/loom/llm/tokenizer"
)

// mockStack is a frontend and one mock engine worker of the test model,
// each on a runtime of its own, over the NATS request plane (the mock
// publishes its events on NATS). Its decode step is long enough that a
// request of the given max_tokens runs for minutes unless cut.
func mockStack(t *testing.T, cfg mocker.Config) (*stack, *mocker.Worker) {
	t.Helper()
	s := newStack(t, "nats", frontend.Config{})
	cfg.Model = model
	w, err := mocker.Start(context.Background(), s.RuntimeOn(s.Connect()), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Close)
	s.waitReady(1)
	return s, w
}

// longChat is a chat request the mock would take minutes to finish.
const longChat = `{"model":"test-model","max_tokens":6000,"messages":[{"role":"user","content":"hi"}]`

// TestAClientThatLeavesFreesTheMockWorkersSlot holds docs/llm.md's
// "Disconnects and migration" with the mock engine: a client that
// disconnects, mid-stream or while waiting for a whole answer, ends its
// request on the worker, whose batch slot is free for the next request at
// once rather than when the request would have finished (minutes later).
func TestAClientThatLeavesFreesTheMockWorkersSlot(t *testing.T) {
	s, w := mockStack(t, mocker.Config{MaxBatch: 1, DecodeStep: 30 * time.Millisecond})
	for i, body := range []string{longChat + `,"stream":true}`, longChat + `}`} {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		if i == 0 {
			// Streaming: read the first token, then leave.
			resp := post(t, ctx, s.url+"/v1/chat/completions", body)
			defer resp.Body.Close()
			line, err := bufio.NewReader(resp.Body).ReadString('\n')
			if err != nil || !strings.HasPrefix(line, "data: {") {
				t.Fatalf("first line %q, %v", line, err)
			}
			close(done)
		} else {
			// A whole answer: leave while it is made.
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url+"/v1/chat/completions", strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			go func() {
				defer close(done)
				if resp, err := http.DefaultClient.Do(req); err == nil {
					resp.Body.Close()
				}
			}()
		}
		testutil.Eventually(t, 20*time.Second, "the request to run on the worker", func() bool { return w.Stats().Running == 1 })
		cancel()
		waitFor(t, done, "the client to leave")
		testutil.Eventually(t, 20*time.Second, "the worker's batch slot to be free", func() bool {
			st := w.Stats()
			return st.Running == 0 && st.Waiting == 0
		})
		testutil.Eventually(t, 20*time.Second, "the request to be counted with status 499", func() bool { return counted(s, "499", i+1) })
	}
	// The one slot serves the next request.
	text, finish, _, err := streamChat(context.Background(), oaiClient(s), chatParams("hello", 3))
	if err != nil || finish != "length" || len(strings.Fields(text)) != 3 {
		t.Fatalf("the next request: %q (%s), %v", text, finish, err)
	}
}

// TestStopsEndTheMockWorkersRequest holds docs/llm.md's claims on stops
// with the mock engine: a stop string ends the answer before it with
// finish_reason "stop" and cancels the worker's request; a stop token
// (stop_token_ids) ends it with "stop" and is not in the text.
func TestStopsEndTheMockWorkersRequest(t *testing.T) {
	s, w := mockStack(t, mocker.Config{DecodeStep: 30 * time.Millisecond})
	ctx := context.Background()
	full, finish, _, err := streamChat(ctx, oaiClient(s), chatParams("hi", 6))
	words := strings.Fields(full)
	if err != nil || finish != "length" || len(words) != 6 {
		t.Fatalf("reference: %q (%s), %v", full, finish, err)
	}
	complete := func(body string) (text, finish string) {
		t.Helper()
		resp := post(t, ctx, s.url+"/v1/chat/completions", body)
		var out struct {
			Choices []struct {
				Message      struct{ Content string } `json:"message"`
				FinishReason string                   `json:"finish_reason"`
			} `json:"choices"`
		}
		if err := decodeJSON(resp, &out); err != nil || resp.StatusCode != 200 || len(out.Choices) != 1 {
			t.Fatalf("%s: %d %+v, %v", body, resp.StatusCode, out, err)
		}
		return out.Choices[0].Message.Content, out.Choices[0].FinishReason
	}
	msgs := `"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"hi"}]`
	stop, _ := json.Marshal(" " + words[2])
	text, finish := complete(`{"model":"test-model","max_tokens":6000,` + msgs + `,"stop":` + string(stop) + `}`)
	if want := " " + words[0] + " " + words[1]; text != want || finish != "stop" {
		t.Errorf("stop string %s: %q (%s), want %q (stop)", stop, text, finish, want)
	}
	// The worker would take minutes to make 6,000 tokens.
	testutil.Eventually(t, 20*time.Second, "the worker's request to be cancelled", func() bool { return w.Stats().Running == 0 })

	ids := tokenizer.Default().Encode(nil, " "+words[3])
	if len(ids) != 1 {
		t.Fatalf("%q is %d tokens, want 1", words[3], len(ids))
	}
	text, finish = complete(`{"model":"test-model","max_tokens":6000,` + msgs + `,"stop_token_ids":[` + strconv.Itoa(int(ids[0])) + `]}`)
	if want := strings.Join(append([]string{""}, words[:3]...), " "); text != want || finish != "stop" {
		t.Errorf("stop token %d (%q): %q (%s), want %q (stop)", ids[0], words[3], text, finish, want)
	}
}

// counted reports whether the frontend's metrics count n requests of the
// test model answered with status.
func counted(s *stack, status string, n int) bool {
	resp, err := http.Get(s.url + "/metrics")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return strings.Contains(string(b), `loom_llm_requests_total{model="test-model",status="`+status+`"} `+strconv.Itoa(n)+"\n")
}

// TestAChatStreamWithNoTextStillNamesTheRole: a streamed chat whose
// answer is empty (its first token is a stop token) still says, in its
// one chunk, that the assistant answers, as the first chunk of any chat
// stream does.
func TestAChatStreamWithNoTextStillNamesTheRole(t *testing.T) {
	s, _ := mockStack(t, mocker.Config{DecodeStep: time.Millisecond})
	ctx := context.Background()
	full, _, _, err := streamChat(ctx, oaiClient(s), chatParams("hi", 2))
	if err != nil || len(strings.Fields(full)) != 2 {
		t.Fatalf("reference: %q, %v", full, err)
	}
	first := tokenizer.Default().Encode(nil, " "+strings.Fields(full)[0])
	resp := post(t, ctx, s.url+"/v1/chat/completions", `{"model":"test-model","max_tokens":2,"stream":true,"stop_token_ids":[`+strconv.Itoa(int(first[0]))+
		`],"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"hi"}]}`)
	defer resp.Body.Close()
	events := sseEvents(t, resp.Body)
	if len(events) != 2 || events[1] != "[DONE]" {
		t.Fatalf("events %q, want the finish and [DONE]", events)
	}
	var c struct {
		Choices []struct {
			Delta struct {
				Role    string  `json:"role"`
				Content *string `json:"content"`
			} `json:"delta"`
			FinishReason string `json:"finish_reason"`
		} `json:"choices"`
	}
	if err := json.Unmarshal([]byte(events[0]), &c); err != nil || len(c.Choices) != 1 {
		t.Fatalf("chunk %s: %v", events[0], err)
	}
	if ch := c.Choices[0]; ch.Delta.Role != "assistant" || ch.Delta.Content == nil || *ch.Delta.Content != "" || ch.FinishReason != "stop" {
		t.Errorf("the one chunk %s: want role assistant, empty content and finish_reason stop", events[0])
	}
}
