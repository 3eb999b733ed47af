package mocker_test

import (
	"context"
	"fmt"

	"testing"
	"time"

	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/llm"
	"github.com/loomrt/loom/llm/mocker"
)

// disaggregated starts a decode worker that hands every prefill of more
// than 8 uncached tokens to the prefill queue, and two prefill workers
// taking perToken a token, all with the prefill queue's ack wait at
// ackWait.
func disaggregated(ctx context.Context, t *testing.T, ackWait, perToken time.Duration) (*system, []*mocker.Worker) {
	t.Helper()
	decode := fast()
	decode.RemotePrefill, decode.RemotePrefillMin = true, 8
	decode.PrefillAckWait = ackWait
	s := newSystem(t, mocker.ClusterConfig{Workers: 1, Worker: decode})
	pre := fast()
	pre.Prefill = true
	pre.PrefillAckWait = ackWait
	pre.PrefillPerToken = perToken
	var prefillers []*mocker.Worker
	for range 2 {
		w, err := s.cluster.Add(ctx, pre)
		if err != nil {
			t.Fatal(err)
		}
		prefillers = append(prefillers, w)
	}
	return s, prefillers
}

// TestRemotePrefillSurvivesAPrefillWorkerKilledMidJob hands a long prompt
// to the prefill queue, kills the prefill worker holding the job, and
// checks that the job comes back to the other one after the ack wait and
// the request completes.
func TestRemotePrefillSurvivesAPrefillWorkerKilledMidJob(t *testing.T) {
	ctx := testutil.Timeout(t, 20*time.Second)
	// 40 tokens: 200 ms a job.
	s, prefillers := disaggregated(ctx, t, 500*time.Millisecond, 5*time.Millisecond)
	dw := s.cluster.Workers()[0]

	// A short prompt is prefilled locally, a long one remotely.
	if r := collect(ctx, s.client, llm.Request{ID: "short", TokenIDs: prompt(50, 6), MaxTokens: 3}); r.err != nil || len(r.tokens) != 3 {
		t.Fatalf("short prompt: %d tokens, err %v", len(r.tokens), r.err)
	}
	if n := dw.Stats().RemotePrefills; n != 0 {
		t.Fatalf("a 6-token prompt went to the prefill queue (%d handed over); the threshold is 8", n)
	}
	long := llm.Request{ID: "long", TokenIDs: prompt(51, 40), MaxTokens: 5}
	r := collect(ctx, s.client, long)
	if r.err != nil || len(r.tokens) != 5 {
		t.Fatalf("long prompt: %d tokens, err %v", len(r.tokens), r.err)
	}
	done := prefillers[0].Stats().PrefillJobs + prefillers[1].Stats().PrefillJobs
	if dw.Stats().RemotePrefills != 1 || done != 1 {
		t.Fatalf("long prompt: %d prefills handed over, %d done; want 1 and 1", dw.Stats().RemotePrefills, done)
	}

	// Now kill the prefill worker holding the next job.
	res := make(chan result, 1)
	go func() {
		res <- collect(ctx, s.client, llm.Request{ID: "crash", TokenIDs: prompt(52, 40), MaxTokens: 5})
	}()
	var victim, survivor *mocker.Worker
	testutil.Eventually(t, 10*time.Second, "a prefill worker to take the job", func() bool {
		for i, w := range prefillers {
			if w.Stats().PrefillsInProgress == 1 {
				victim, survivor = w, prefillers[1-i]
				return true
			}
		}
		return false
	})
	if err := s.cluster.Kill(victim.ID()); err != nil {
		t.Fatal(err)
	}
	got := <-res
	if got.err != nil || len(got.tokens) != 5 || got.finish != llm.FinishLength {
		t.Fatalf("request whose prefill worker died: %d tokens, finish %q, err %v; want 5 tokens", len(got.tokens), got.finish, got.err)
	}
	st := survivor.Stats()
	// At least once: under load the survivor may see the job yet again
	// if an ack is late, and the decode worker ignores the repeat.
	if st.PrefillRedeliveries < 1 {
		t.Errorf("the surviving prefill worker finished no redelivered job; the dead worker's job should have come back to it")
	}
	if n := dw.Stats().RemotePrefills; n != 2 {
		t.Errorf("the decode worker handed over %d prefills, want 2", n)
	}
	// A repeated notice (a redelivered job) is not the decode worker's
	// news any more.
	nc, err := s.caller.NATS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := nc.RequestWithContext(ctx, mocker.PrefillDoneSubject(llm.DefaultNamespace, dw.ID()), []byte(fmt.Sprintf(`{"request_id":"%x-1"}`, dw.ID())))
	if err != nil || string(msg.Data) != `{"known":false}` {
		t.Errorf("a repeated prefill notice: %v, %v; want known false", msg, err)
	}
	// A malformed notice is answered, not fatal.
	msg, err = nc.RequestWithContext(ctx, mocker.PrefillDoneSubject(llm.DefaultNamespace, dw.ID()), []byte("{not json"))
	if err != nil || string(msg.Data) != `{"known":false}` {
		t.Errorf("a malformed prefill notice: %v, %v; want known false", msg, err)
	}
}

// TestALongPrefillIsNotRedelivered: a prefill that takes longer than the
// prefill queue's ack wait stays with its prefill worker (the consumer
// reports progress), so it is done once, not again elsewhere.
func TestALongPrefillIsNotRedelivered(t *testing.T) {
	ctx := testutil.Timeout(t, 30*time.Second)
	// 40 tokens: 2 s, over three ack waits.
	s, prefillers := disaggregated(ctx, t, 600*time.Millisecond, 50*time.Millisecond)
	if r := collect(ctx, s.client, llm.Request{ID: "long", TokenIDs: prompt(54, 40), MaxTokens: 5}); r.err != nil || len(r.tokens) != 5 {
		t.Fatalf("long prefill: %d tokens, err %v; want 5", len(r.tokens), r.err)
	}
	// A redelivered copy would still be running (it began an ack wait or
	// more after the first): wait for every prefill to end.
	var jobs, again uint64
	testutil.Eventually(t, 10*time.Second, "the prefill workers to finish", func() bool {
		jobs, again = 0, 0
		var running uint64
		for _, w := range prefillers {
			st := w.Stats()
			jobs += st.PrefillJobs
			again += st.PrefillRedeliveries
			running += st.PrefillsInProgress
		}
		return running == 0
	})
	if jobs != 1 || again != 0 {
		t.Fatalf("a 2 s prefill under a 600 ms ack wait was done %d times (%d of them redelivered); want once", jobs, again)
	}
}

// TestDecodeWorkerStoppedGracefullyFinishesRemotePrefills stops a decode
// worker while a request waits for its remote prefill: the worker keeps
// hearing from prefill workers until its requests are done.
func TestDecodeWorkerStoppedGracefullyFinishesRemotePrefills(t *testing.T) {
	decode := fast()
	decode.RemotePrefill, decode.RemotePrefillMin = true, 8
	s := newSystem(t, mocker.ClusterConfig{Workers: 1, Worker: decode})
	ctx := testutil.Timeout(t, 30*time.Second)
	pre := fast()
	pre.Prefill = true
	pre.PrefillPerToken = 5 * time.Millisecond
	pw, err := s.cluster.Add(ctx, pre)
	if err != nil {
		t.Fatal(err)
	}
	dw := s.cluster.Workers()[0]
	res := make(chan result, 1)
	go func() {
		res <- collect(ctx, s.client, llm.Request{ID: "drain", TokenIDs: prompt(53, 40), MaxTokens: 5})
	}()
	testutil.Eventually(t, 10*time.Second, "the prefill worker to take the job", func() bool { return pw.Stats().PrefillsInProgress == 1 })
	stopped := make(chan error, 1)
	go func() { stopped <- s.cluster.Stop(ctx, dw.ID()) }()
	if r := <-res; r.err != nil || len(r.tokens) != 5 {
		t.Fatalf("request in flight while its decode worker stopped: %d tokens, err %v; want 5", len(r.tokens), r.err)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("graceful stop: %v", err)
	}
}

// TestDecodeWorkerDrainedByItsRuntimeFinishesRemotePrefills shuts a
// decode worker down as a worker process does on SIGTERM (Run under a
// runtime that drains every endpoint at once) while a request waits for
// its remote prefill: the notice still arrives and the request finishes.
func TestDecodeWorkerDrainedByItsRuntimeFinishesRemotePrefills(t *testing.T) {
	s := newSystem(t, mocker.ClusterConfig{Workers: 0})
	ctx := testutil.Timeout(t, 30*time.Second)
	pre := fast()
	pre.Prefill = true
	pre.PrefillPerToken = 5 * time.Millisecond
	pw, err := s.cluster.Add(ctx, pre)
	if err != nil {
		t.Fatal(err)
	}
	decode := fast()
	decode.RemotePrefill, decode.RemotePrefillMin = true, 8
	rt := s.Runtime()
	runCtx, stop := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- mocker.Run(runCtx, rt, decode) }()
	if err := s.client.WaitForInstances(testutil.Timeout(t, 5*time.Second), 1); err != nil {
		select {
		case rerr := <-ran:
			t.Fatalf("the decode worker did not start: %v", rerr)
		default:
			t.Fatal(err)
		}
	}
	res := make(chan result, 1)
	go func() {
		res <- collect(ctx, s.client, llm.Request{ID: "sigterm", TokenIDs: prompt(54, 40), MaxTokens: 5})
	}()
	testutil.Eventually(t, 10*time.Second, "the prefill worker to take the job", func() bool { return pw.Stats().PrefillsInProgress == 1 })
	drained := make(chan error, 1)
	go func() { drained <- rt.Shutdown(testutil.Timeout(t, 10*time.Second)) }()
	stop()
	if r := <-res; r.err != nil || len(r.tokens) != 5 {
		t.Fatalf("request waiting for its remote prefill at SIGTERM: %d tokens, err %v; want 5", len(r.tokens), r.err)
	}
	if err := <-ran; err != nil {
		t.Errorf("Run = %v", err)
	}
	if err := <-drained; err != nil {
		t.Errorf("runtime Shutdown = %v", err)
	}
}
