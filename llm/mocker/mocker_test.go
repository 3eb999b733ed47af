package mocker_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/events"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/llm"
	"github.com/loomrt/loom/llm/mocker"
)

func TestWorkerStreamsDeterministicTokensAndReusesItsCache(t *testing.T) {
	s := newSystem(t, mocker.ClusterConfig{Workers: 1, Worker: fast()})
	ctx := testutil.Timeout(t, 10*time.Second)
	req := llm.Request{ID: "a", Model: mocker.DefaultModel, TokenIDs: prompt(1, 37), MaxTokens: 20}
	first := collect(ctx, s.client, req)
	if first.err != nil || len(first.tokens) != 20 || first.finish != llm.FinishLength {
		t.Fatalf("first request: %d tokens, finish %q, err %v; want 20 tokens ending with %q", len(first.tokens), first.finish, first.err, llm.FinishLength)
	}
	w := s.cluster.Workers()[0]
	if first.worker != w.ID() || first.cachedTokens != 0 {
		t.Errorf("first item says worker %x with %d cached tokens; want worker %x, 0 cached", first.worker, first.cachedTokens, w.ID())
	}
	for _, tok := range first.tokens {
		if !slices.Contains(mocker.DefaultVocab, tok) {
			t.Fatalf("token %d is not in the output vocabulary", tok)
		}
	}
	second := collect(ctx, s.client, req)
	if !slices.Equal(second.tokens, first.tokens) {
		t.Errorf("the same request gave other tokens:\n%v\n%v", first.tokens, second.tokens)
	}
	// 37 prompt tokens in blocks of 4: 9 full blocks cached.
	if second.cachedTokens != 36 {
		t.Errorf("the repeated prompt found %d tokens cached, want 36 (9 full blocks of 4)", second.cachedTokens)
	}
	// A request that migrated after 7 tokens continues exactly.
	mig := req
	mig.TokenIDs = append(slices.Clone(req.TokenIDs), first.tokens[:7]...)
	mig.Generated = 7
	mig.MaxTokens = 13
	rest := collect(ctx, s.client, mig)
	if rest.err != nil || !slices.Equal(rest.tokens, first.tokens[7:]) {
		t.Errorf("migrated request gave %v (err %v), want %v", rest.tokens, rest.err, first.tokens[7:])
	}
	// Output fills blocks too: 37 prompt + 7 output tokens are 11 blocks,
	// all cached by the first request.
	if rest.cachedTokens != 44 {
		t.Errorf("the migrated request found %d tokens cached, want 44 (prompt and output blocks)", rest.cachedTokens)
	}
	// A stop token ends the stream without being streamed.
	stopAt := first.tokens[4]
	stopReq := req
	stopReq.StopTokenIDs = []uint32{stopAt}
	st := collect(ctx, s.client, stopReq)
	want := first.tokens[:slices.Index(first.tokens, stopAt)]
	if st.finish != llm.FinishStop || !slices.Equal(st.tokens, want) {
		t.Errorf("stop token %d: got %v finish %q, want %v finish %q", stopAt, st.tokens, st.finish, want, llm.FinishStop)
	}
}

func TestWorkerRejectsBadRequestsNamingTheField(t *testing.T) {
	s := newSystem(t, mocker.ClusterConfig{Workers: 1, Worker: fast()})
	ctx := testutil.Timeout(t, 10*time.Second)
	for _, c := range []struct {
		name string
		req  llm.Request
		want string
	}{
		{"empty prompt", llm.Request{ID: "e"}, "token_ids is empty"},
		{"generated beyond the prompt", llm.Request{ID: "g", TokenIDs: prompt(1, 3), Generated: 3}, "generated is 3"},
		{"negative max tokens", llm.Request{ID: "m", TokenIDs: prompt(1, 3), MaxTokens: -1}, "max_tokens is -1"},
		{"prompt beyond the context", llm.Request{ID: "c", TokenIDs: prompt(1, mocker.DefaultContextLength)}, "context"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := collect(ctx, s.client, c.req)
			var he *loom.HandlerError
			if !errors.As(r.err, &he) || !strings.Contains(he.Message, c.want) {
				t.Errorf("error %v; want a handler error saying %q", r.err, c.want)
			}
		})
	}
}

func TestWorkerBatchesAtMostMaxBatch(t *testing.T) {
	cfg := fast()
	cfg.MaxBatch = 2
	cfg.DecodeStep = 3 * time.Millisecond
	s := newSystem(t, mocker.ClusterConfig{Workers: 1, Worker: cfg})
	w := s.cluster.Workers()[0]
	ctx := testutil.Timeout(t, 20*time.Second)
	var wg sync.WaitGroup
	results := make([]result, 5)
	for i := range results {
		wg.Go(func() {
			results[i] = collect(ctx, s.client, llm.Request{ID: "b", TokenIDs: prompt(uint32(10+i), 8), MaxTokens: 30})
		})
	}
	// All five are in: two running, three waiting.
	testutil.Eventually(t, 10*time.Second, "5 requests at the worker", func() bool {
		st := w.Stats()
		return st.Running+st.Waiting == 5
	})
	maxRunning := 0
	for {
		st := w.Stats()
		maxRunning = max(maxRunning, st.Running)
		if st.Running+st.Waiting == 0 {
			break
		}
		if st.Running > 2 {
			t.Fatalf("%d requests running with max batch 2", st.Running)
		}
		time.Sleep(time.Millisecond)
	}
	wg.Wait()
	for i, r := range results {
		if r.err != nil || len(r.tokens) != 30 {
			t.Errorf("request %d: %d tokens, err %v", i, len(r.tokens), r.err)
		}
	}
	if maxRunning != 2 {
		t.Errorf("at most %d requests ran together; want the batch full at 2", maxRunning)
	}
}

// TestWorkerEventsMatchItsBlockSet subscribes to a worker's kv_events
// while a small cache evicts, and checks the event ids run from 1 without
// gaps and that replaying them gives what kv_blocks returns.
func TestWorkerEventsMatchItsBlockSet(t *testing.T) {
	cfg := fast()
	cfg.KvBlocks = 24
	s := newSystem(t, mocker.ClusterConfig{Workers: 1, Worker: cfg})
	w := s.cluster.Workers()[0]
	sub, err := events.Subscribe[llm.KvEvent](t.Context(), s.caller, events.Scope{Namespace: llm.DefaultNamespace, Component: llm.WorkerComponent}, llm.TopicKvEvents, events.WithLossErrors())
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	loads, err := events.Subscribe[llm.LoadMetrics](t.Context(), s.caller, events.Scope{Namespace: llm.DefaultNamespace, Component: llm.WorkerComponent}, llm.TopicLoadMetrics)
	if err != nil {
		t.Fatal(err)
	}
	defer loads.Close()
	ctx := testutil.Timeout(t, 20*time.Second)
	for i := range 8 { // 8 prompts of 5 blocks each overflow 24 blocks
		if r := collect(ctx, s.client, llm.Request{ID: "e", TokenIDs: prompt(uint32(20+i), 20), MaxTokens: 3}); r.err != nil {
			t.Fatal(r.err)
		}
	}
	last := w.Stats().KvEvents
	set := map[uint64]bool{}
	removed := 0
	var seen uint64
	for ev, err := range sub.Events(ctx) {
		if err != nil {
			t.Fatalf("kv_events: %v", err)
		}
		if ev.InstanceID != w.ID() {
			t.Fatalf("event from instance %x, want the worker's %x", ev.InstanceID, w.ID())
		}
		if ev.Value.EventID != seen+1 {
			t.Fatalf("event id %d after %d", ev.Value.EventID, seen)
		}
		seen = ev.Value.EventID
		if st := ev.Value.Stored; st != nil {
			for _, h := range st.BlockHashes {
				set[h] = true
			}
		}
		if rm := ev.Value.Removed; rm != nil {
			removed += len(rm.BlockHashes)
			for _, h := range rm.BlockHashes {
				delete(set, h)
			}
		}
		if seen == last {
			break
		}
	}
	if removed == 0 {
		t.Error("40 blocks of prompts went through a cache of 24 and none was removed")
	}
	bep, err := s.caller.Endpoint(llm.DefaultNamespace + "/backend/" + llm.KvBlocksEndpoint)
	if err != nil {
		t.Fatal(err)
	}
	bc, err := loom.NewClient[llm.KvBlocksRequest, llm.KvSnapshot](ctx, bep)
	if err != nil {
		t.Fatal(err)
	}
	defer bc.Close()
	got := map[uint64]bool{}
	chunks := 0
	for snap, err := range bc.Direct(w.ID()).Generate(ctx, llm.KvBlocksRequest{ChunkBlocks: 5}) {
		if err != nil {
			t.Fatal(err)
		}
		chunks++
		if snap.EventID != last {
			t.Fatalf("snapshot at event %d, the worker's last event is %d", snap.EventID, last)
		}
		for _, b := range snap.Blocks {
			got[b.Hash] = true
		}
	}
	if len(got) != len(set) || chunks < len(got)/5 {
		t.Fatalf("kv_blocks gave %d blocks in %d chunks; the events say %d", len(got), chunks, len(set))
	}
	for h := range set {
		if !got[h] {
			t.Fatalf("block %x is stored according to the events but not in kv_blocks", h)
		}
	}
	// load_metrics arrive, and say the cache's size.
	for ev, err := range loads.Events(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		if ev.Value.TotalBlocks != 24 || ev.Value.TotalSlots != mocker.DefaultMaxBatch {
			t.Fatalf("load metrics %+v; want 24 total blocks", ev.Value)
		}
		break
	}
}

func TestWorkerStopFinishesGracefullyAndKillFreesAtOnce(t *testing.T) {
	cfg := fast()
	cfg.DecodeStep = 2 * time.Millisecond
	s := newSystem(t, mocker.ClusterConfig{Workers: 1, Worker: cfg})
	w := s.cluster.Workers()[0]

	t.Run("stop", func(t *testing.T) {
		ctx, stop := loom.WithStop(testutil.Timeout(t, 10*time.Second))
		defer stop()
		var toks []uint32
		finish := ""
		for resp, err := range s.client.Generate(ctx, llm.Request{ID: "s", TokenIDs: prompt(30, 12), MaxTokens: 100000}) {
			if err != nil {
				t.Fatal(err)
			}
			toks = append(toks, resp.TokenIDs...)
			if len(toks) == 5 {
				stop()
			}
			finish = resp.FinishReason
		}
		if finish != llm.FinishCancelled || len(toks) < 5 || len(toks) > 100 {
			t.Errorf("stopped after 5 tokens: got %d tokens and finish %q, want a few more at most and %q", len(toks), finish, llm.FinishCancelled)
		}
	})
	t.Run("kill", func(t *testing.T) {
		ctx, cancel := context.WithCancel(testutil.Timeout(t, 10*time.Second))
		n := 0
		for _, err := range s.client.Generate(ctx, llm.Request{ID: "k", TokenIDs: prompt(31, 12), MaxTokens: 100000}) {
			if err != nil {
				break
			}
			if n++; n == 3 {
				cancel()
			}
		}
		cancel()
		testutil.Eventually(t, 5*time.Second, "the killed request to leave the batch", func() bool {
			st := w.Stats()
			return st.Running == 0 && st.Waiting == 0
		})
	})
}

func TestClusterKillBreaksStreamsAndLeavesDiscovery(t *testing.T) {
	cfg := fast()
	cfg.DecodeStep = 2 * time.Millisecond
	s := newSystem(t, mocker.ClusterConfig{Workers: 2, Worker: cfg})
	ctx := testutil.Timeout(t, 10*time.Second)
	victim := s.cluster.Workers()[0]
	got := make(chan error, 1)
	n := 0
	for _, err := range s.client.Direct(victim.ID()).Generate(ctx, llm.Request{ID: "x", TokenIDs: prompt(40, 12), MaxTokens: 100000}) {
		if err != nil {
			got <- err
			break
		}
		if n++; n == 3 {
			if err := s.cluster.Kill(victim.ID()); err != nil {
				t.Fatal(err)
			}
		}
	}
	select {
	case err := <-got:
		if !errors.Is(err, loom.ErrStreamReset) {
			t.Errorf("stream of the killed worker ended with %v, want ErrStreamReset", err)
		}
	default:
		t.Fatal("the stream of a killed worker ended without an error")
	}
	d := s.Store.Connect()
	defer d.Close()
	testutil.Eventually(t, 5*time.Second, "the killed worker to leave discovery", func() bool {
		insts, err := d.List(ctx, discovery.Query{Namespace: llm.DefaultNamespace, Component: llm.WorkerComponent})
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range insts {
			if i.ID == victim.ID() {
				return false
			}
		}
		return true
	})
	// The other worker still serves.
	if r := collect(ctx, s.client, llm.Request{ID: "y", TokenIDs: prompt(41, 8), MaxTokens: 4}); r.err != nil || r.worker == victim.ID() {
		t.Errorf("after the kill: worker %x, err %v", r.worker, r.err)
	}
	if len(s.cluster.Workers()) != 1 {
		t.Errorf("the cluster lists %d workers after a kill, want 1", len(s.cluster.Workers()))
	}
}

func TestWorkerWithoutMaxTokensStopsAtTheContextLength(t *testing.T) {
	cfg := fast()
	cfg.ContextLength = 64
	s := newSystem(t, mocker.ClusterConfig{Workers: 1, Worker: cfg})
	r := collect(testutil.Timeout(t, 10*time.Second), s.client, llm.Request{ID: "c", TokenIDs: prompt(60, 60)})
	if r.err != nil || len(r.tokens) != 4 || r.finish != llm.FinishLength {
		t.Fatalf("60 prompt tokens in a context of 64 without max_tokens: %d tokens, finish %q, err %v; want 4 and %q", len(r.tokens), r.finish, r.err, llm.FinishLength)
	}
}

// TestRunFinishesRequestsInFlightOnShutdown runs a worker as a worker
// process does (Run under a runtime that drains on SIGTERM) and shuts it
// down with a request in flight: the request finishes.
func TestRunFinishesRequestsInFlightOnShutdown(t *testing.T) {
	s := newSystem(t, mocker.ClusterConfig{Workers: 0})
	rt := s.Runtime()
	cfg := fast()
	cfg.DecodeStep = 2 * time.Millisecond
	runCtx, stop := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- mocker.Run(runCtx, rt, cfg) }()
	if err := s.client.WaitForInstances(testutil.Timeout(t, 5*time.Second), 1); err != nil {
		t.Fatal(err)
	}
	ctx := testutil.Timeout(t, 10*time.Second)
	res := make(chan result, 1)
	started := make(chan struct{})
	go func() {
		var r result
		for resp, err := range s.client.Generate(ctx, llm.Request{ID: "r", TokenIDs: prompt(70, 8), MaxTokens: 60}) {
			if err != nil {
				r.err = err
				break
			}
			if r.tokens = append(r.tokens, resp.TokenIDs...); len(r.tokens) == 1 {
				close(started)
			}
			r.finish = resp.FinishReason
		}
		res <- r
	}()
	<-started
	// SIGTERM: the runtime drains and the program's context ends together.
	drained := make(chan error, 1)
	go func() { drained <- rt.Shutdown(testutil.Timeout(t, 5*time.Second)) }()
	stop()
	r := <-res
	if r.err != nil || len(r.tokens) != 60 || r.finish != llm.FinishLength {
		t.Fatalf("request in flight at shutdown: %d tokens, finish %q, err %v; want all 60", len(r.tokens), r.finish, r.err)
	}
	if err := <-ran; err != nil {
		t.Errorf("Run = %v", err)
	}
	if err := <-drained; err != nil {
		t.Errorf("runtime Shutdown = %v", err)
	}
}
