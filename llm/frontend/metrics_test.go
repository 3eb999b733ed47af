package frontend_test

import (
	"context"
	"errors"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/loomrt/loom/llm/frontend"
)

// requestCounts is loom_llm_requests_total in the registry the frontend
// serves: series {model, status} -> value.
func requestCounts(t *testing.T, s *stack) map[[2]string]float64 {
	t.Helper()
	mfs, err := s.rt.Metrics().Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	counts := make(map[[2]string]float64)
	for _, mf := range mfs {
		if mf.GetName() != "loom_llm_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var key [2]string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "model":
					key[0] = l.GetValue()
				case "status":
					key[1] = l.GetValue()
				}
			}
			counts[key] = m.GetCounter().GetValue()
		}
	}
	return counts
}

// waitCounts waits until loom_llm_requests_total is want, failing t
// with what it is after a generous bound (the handler counts a request
// after its client has its answer).
func waitCounts(t *testing.T, s *stack, want map[[2]string]float64, after string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for got := requestCounts(t, s); !maps.Equal(got, want); got = requestCounts(t, s) {
		if time.Now().After(deadline) {
			t.Fatalf("after %s, loom_llm_requests_total is %v; want %v", after, got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// atZero is a series at 0 for each model and each status the frontend
// counts requests with.
func atZero(models ...string) map[[2]string]float64 {
	want := make(map[[2]string]float64)
	for _, m := range models {
		for _, st := range frontend.RequestStatuses {
			want[[2]string{m, strconv.Itoa(st)}] = 0
		}
	}
	return want
}

// TestAModelsRequestCountsStartAtZero: loom_llm_requests_total has a
// series at 0 for every status, for model="" from the start and for a
// model from when its first worker appears, before any request names it,
// so that the model's first 5xx is seen by increase(...{status=~"5.."}).
func TestAModelsRequestCountsStartAtZero(t *testing.T) {
	s := newStack(t, "tcp", frontend.Config{})
	if err := s.fe.WaitSynced(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, want := requestCounts(t, s), atZero(""); !maps.Equal(got, want) {
		t.Fatalf("with no worker, loom_llm_requests_total is %v; want %v", got, want)
	}
	s.worker(workerOpts{fail: errors.New("the engine ran out of memory")})
	s.waitReady(1)
	want := atZero("", model)
	if got := requestCounts(t, s); !maps.Equal(got, want) {
		t.Fatalf("once a worker serves %s, loom_llm_requests_total is %v; want %v", model, got, want)
	}
	resp := post(t, context.Background(), s.url+"/v1/chat/completions", `{"model":"test-model","messages":[{"role":"user","content":"hi"}]}`)
	checkError(t, resp, http.StatusInternalServerError, "")
	want[[2]string{model, "500"}] = 1
	waitCounts(t, s, want, "a 500")
}

// TestEveryStatusAnsweredStartsAtZero answers a request with each status
// the frontend counts, and checks that each was counted in a series that
// was there, at 0, before it: no status makes a series of its own, born
// at 1, and each one in frontend's list is one a request gets.
func TestEveryStatusAnsweredStartsAtZero(t *testing.T) {
	s := newStack(t, "tcp", frontend.Config{MaxBodyBytes: 4096, BodyTimeout: time.Second, MaxInFlightPerWorker: 1})
	holder := s.worker(workerOpts{pauseAfter: 1, ctxLen: 200})
	gone := s.worker(workerOpts{model: "gone-model"})
	s.worker(workerOpts{model: "failing", fail: errors.New("the engine ran out of memory")})
	s.waitReady(3)
	gone.kill()
	s.waitReady(2)
	models := []string{"", model, "gone-model", "failing"}
	want := atZero(models...)
	if got := requestCounts(t, s); !maps.Equal(got, want) {
		t.Fatalf("before any request, loom_llm_requests_total is %v; want %v", got, want)
	}

	ctx := context.Background()
	msgs := `"messages":[{"role":"user","content":"hi"}]`
	var answered []int
	count := func(m string, status int) {
		t.Helper()
		answered = append(answered, status)
		key := [2]string{m, strconv.Itoa(status)}
		if _, ok := want[key]; !ok {
			t.Errorf("a %d for model %q is counted in a series that was not there at 0 before it: add %d to the frontend's requestStatuses", status, m, status)
		}
		want[key]++
		waitCounts(t, s, want, "a "+strconv.Itoa(status)+" for model "+strconv.Quote(m))
	}
	answer := func(m, path, body string, status int) {
		t.Helper()
		resp := post(t, ctx, s.url+"/v1/"+path, body)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != status {
			t.Fatalf("%s: %d %s, want %d", body, resp.StatusCode, b, status)
		}
		count(m, status)
	}
	answer(model, "chat/completions", `{"model":"test-model","max_tokens":1,`+msgs+`}`, http.StatusOK)
	answer("", "chat/completions", `{"model":"test-model",`, http.StatusBadRequest)
	answer(model, "chat/completions", `{"model":"test-model","max_tokens":500,`+msgs+`}`, http.StatusBadRequest)
	answer("", "chat/completions", `{"model":"nope",`+msgs+`}`, http.StatusNotFound)
	answer("", "completions", `{"model":"test-model","prompt":"`+strings.Repeat("x", 5000)+`"}`, http.StatusRequestEntityTooLarge)
	answer("gone-model", "chat/completions", `{"model":"gone-model",`+msgs+`}`, http.StatusServiceUnavailable)
	answer("failing", "chat/completions", `{"model":"failing",`+msgs+`}`, http.StatusInternalServerError)

	// 408: a body that stalls.
	resp, _ := rawRequest(t, s, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"model\":")
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("a stalled body got %d, want 408", resp.StatusCode)
	}
	count("", http.StatusRequestTimeout)

	// 429: the model's only worker holds a request, its limit; then 499:
	// that request's client leaves.
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	held := post(t, hctx, s.url+"/v1/chat/completions", `{"model":"test-model","stream":true,`+msgs+`}`)
	defer held.Body.Close()
	waitFor(t, holder.paused, "the worker to hold a request")
	answer(model, "chat/completions", `{"model":"test-model",`+msgs+`}`, http.StatusTooManyRequests)
	cancel()
	waitFor(t, holder.killed, "the held request to be killed")
	count(model, 499)

	slices.Sort(answered)
	answered = slices.Compact(answered)
	listed := slices.Sorted(slices.Values(frontend.RequestStatuses))
	if !slices.Equal(answered, listed) {
		t.Errorf("the requests here were answered with %v; the frontend starts %v at 0: answer a request with each", answered, listed)
	}
}
