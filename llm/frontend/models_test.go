package frontend_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"

	"github.com/loomrt/loom/llm/frontend"
	"github.com/loomrt/loom/llm/kvrouter"
)

// TestEachModelGoesOnlyToItsOwnWorkers: the frontend passes the router
// only workers of the request's model and says so (RouteInfo.Filtered),
// so the router does not check each worker's model again. The
// frontend's own filter is then all that keeps a request off the workers
// of another model, under either kind of router.
func TestEachModelGoesOnlyToItsOwnWorkers(t *testing.T) {
	// The kv router reads kv_events over NATS: its stack calls over the
	// nats plane, on the embedded server that brings.
	for _, router := range []struct{ name, plane string }{{"round_robin", "tcp"}, {kvrouter.KV, "nats"}} {
		t.Run(router.name, func(t *testing.T) {
			s := newSystem(t, router.plane, nil)
			fcfg := frontend.Config{}
			if router.name == kvrouter.KV {
				r, err := kvrouter.New(context.Background(), s.rt, kvrouter.KV, kvrouter.Config{})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = r.Close() })
				fcfg.Router = r
			}
			s.start(fcfg)
			models := []string{model, "other"}
			workers := map[string][]*testWorker{}
			for _, m := range models {
				for range 2 {
					workers[m] = append(workers[m], s.worker(workerOpts{model: m}))
				}
			}
			s.waitReady(4)

			c := oaiClient(s)
			for i := range 12 {
				for _, m := range models {
					p := chatParams(fmt.Sprintf("question %d for %s", i, m), 2)
					p.Model = openai.ChatModel(m)
					resp, err := c.Chat.Completions.New(context.Background(), p)
					if err != nil || resp.Model != m {
						t.Fatalf("a chat for model %s: %v (answered as model %q)", m, err, resp.Model)
					}
				}
			}
			for _, m := range models {
				served := int64(0)
				for _, w := range workers[m] {
					w.mu.Lock()
					for _, req := range w.requests {
						if req.Model != m {
							t.Errorf("a worker of model %s was sent a request for %s", m, req.Model)
						}
					}
					w.mu.Unlock()
					served += w.served.Load()
				}
				if served != 12 {
					t.Errorf("the workers of model %s served %d requests, want the 12 sent for it", m, served)
				}
			}
		})
	}
}

// TestAModelsContextLengthIsThatOfItsWorkersNow: the context length the
// frontend checks requests against, and lists, is that of the model's
// workers in discovery now: a model whose workers are replaced by ones
// with a longer context takes the longer prompts, and among workers of
// different lengths the shortest holds, so that an accepted request fits
// whichever worker it goes to.
func TestAModelsContextLengthIsThatOfItsWorkersNow(t *testing.T) {
	s := newStack(t, "tcp", frontend.Config{})
	// A prompt of 100 token ids and one token to generate.
	ids := make([]string, 100)
	for i := range ids {
		ids[i] = "300"
	}
	body := `{"model":"test-model","max_tokens":1,"prompt":[` + strings.Join(ids, ",") + `]}`
	check := func(status, ctxLen int) {
		t.Helper()
		resp := post(t, context.Background(), s.url+"/v1/completions", body)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != status {
			t.Errorf("a 100-token prompt: %d %s, want %d", resp.StatusCode, b, status)
		}
		var list struct {
			Data []struct {
				ID            string `json:"id"`
				ContextLength int    `json:"context_length"`
			} `json:"data"`
		}
		if err := decodeJSON(mustGet(t, s.url+"/v1/models"), &list); err != nil {
			t.Fatal(err)
		}
		if len(list.Data) != 1 || list.Data[0].ContextLength != ctxLen {
			t.Errorf("/v1/models lists %+v, want test-model with context_length %d", list.Data, ctxLen)
		}
	}
	short := s.worker(workerOpts{ctxLen: 64})
	s.waitReady(1)
	check(http.StatusBadRequest, 64)

	short.kill()
	s.waitReady(0)
	s.worker(workerOpts{ctxLen: 4096})
	s.waitReady(1)
	check(http.StatusOK, 4096)

	short = s.worker(workerOpts{ctxLen: 64})
	s.waitReady(2)
	check(http.StatusBadRequest, 64)

	short.kill()
	s.waitReady(1)
	check(http.StatusOK, 4096)
}

func mustGet(t *testing.T, url string) *http.Response {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// TestAModelIsListedAndRetrievedWhileItHasWorkers: GET /v1/models and
// GET /v1/models/{model} (through the official client) give the models
// whose workers are in discovery now, with slashes in a model's name; a
// model whose workers have all left is neither listed nor retrieved, and
// its requests get 503 no_worker, where a model never served gets 404
// model_not_found.
func TestAModelIsListedAndRetrievedWhileItHasWorkers(t *testing.T) {
	s := newStack(t, "tcp", frontend.Config{})
	const org = "org/model-7b"
	w := s.worker(workerOpts{})
	s.worker(workerOpts{model: org, ctxLen: 512})
	s.waitReady(2)
	c := oaiClient(s)
	ctx := context.Background()
	list := func() []string {
		t.Helper()
		var ids []string
		page := c.Models.ListAutoPaging(ctx)
		for page.Next() {
			ids = append(ids, page.Current().ID)
		}
		if err := page.Err(); err != nil {
			t.Fatal(err)
		}
		return ids
	}
	notFound := func(name string) {
		t.Helper()
		_, err := c.Models.Get(ctx, name)
		var oe *openai.Error
		if !errors.As(err, &oe) || oe.StatusCode != http.StatusNotFound || oe.Code != "model_not_found" || oe.Param != "model" {
			t.Errorf("GET /v1/models/%s: %v, want 404 model_not_found naming model", name, err)
		}
	}
	if ids := list(); fmt.Sprint(ids) != "[org/model-7b test-model]" {
		t.Errorf("models %v, want [org/model-7b test-model]", ids)
	}
	for _, name := range []string{model, org} {
		m, err := c.Models.Get(ctx, name)
		if err != nil || m.ID != name || m.Object != "model" || m.OwnedBy != "loom" || m.Created == 0 {
			t.Errorf("GET /v1/models/%s: %+v, %v", name, m, err)
		}
	}
	var one struct {
		ContextLength int `json:"context_length"`
		Workers       int `json:"workers"`
	}
	if err := decodeJSON(mustGet(t, s.url+"/v1/models/"+org), &one); err != nil || one.ContextLength != 512 || one.Workers != 1 {
		t.Errorf("GET /v1/models/%s: %+v, %v; want context_length 512 and 1 worker", org, one, err)
	}
	notFound("nope")

	w.kill()
	s.waitReady(1)
	if ids := list(); fmt.Sprint(ids) != "[org/model-7b]" {
		t.Errorf("models after test-model's worker left: %v, want [org/model-7b]", ids)
	}
	notFound(model)
	_, err := c.Chat.Completions.New(ctx, chatParams("hi", 2))
	var oe *openai.Error
	if !errors.As(err, &oe) || oe.StatusCode != http.StatusServiceUnavailable || oe.Code != "no_worker" {
		t.Errorf("a chat for the model whose workers left: %v, want 503 no_worker", err)
	}
	p := chatParams("hi", 2)
	p.Model = "nope"
	_, err = c.Chat.Completions.New(ctx, p)
	if !errors.As(err, &oe) || oe.StatusCode != http.StatusNotFound || oe.Code != "model_not_found" {
		t.Errorf("a chat for a model never served: %v, want 404 model_not_found", err)
	}
}

// TestAnotherMethodOnARouteGets405: a route asked with a method it does
// not serve gets 405 with Allow and an error in OpenAI's shape, not 404.
func TestAnotherMethodOnARouteGets405(t *testing.T) {
	s := newStack(t, "tcp", frontend.Config{})
	for _, tc := range []struct{ method, path, allow string }{
		{http.MethodGet, "/v1/chat/completions", "POST"},
		{http.MethodGet, "/v1/completions", "POST"},
		{http.MethodPost, "/v1/models", "GET, HEAD"},
		{http.MethodDelete, "/v1/models/test-model", "GET"},
		{http.MethodPost, "/health", "GET, HEAD"},
	} {
		req, err := http.NewRequest(tc.method, s.url+tc.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if a := resp.Header.Get("Allow"); a != tc.allow {
			t.Errorf("%s %s: Allow %q, want %q", tc.method, tc.path, a, tc.allow)
		}
		checkKind(t, checkError(t, resp, http.StatusMethodNotAllowed, ""), "invalid_request_error", "")
	}
}
