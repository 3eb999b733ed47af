package mocker

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/codec"
	"github.com/loomrt/loom/llm"
	"github.com/loomrt/loom/workqueue"
)

// PrefillDoneEndpoint is the endpoint of a decode worker (in
// {Namespace}/backend) that prefill workers call when they have finished
// a prefill it handed to the queue. The job's EngineID names the decode
// worker (its instance id in hex), so the call goes to that instance alone.
const PrefillDoneEndpoint = "prefill_done"

// PrefillDone tells a decode worker that the prefill of the job with
// RequestID is done and its KV blocks are ready.
type PrefillDone struct {
	RequestID string `json:"request_id" msgpack:"request_id"`
}

// PrefillDoneAck answers PrefillDone: Known is false when the decode
// worker no longer waits for that prefill (the request was cancelled, or
// another delivery of the job got there first).
type PrefillDoneAck struct {
	Known bool `json:"known" msgpack:"known"`
}

// prefillSide is a worker's part in disaggregated prefill: a decode
// worker's queue producer and prefill_done endpoint, or a prefill worker's
// consumer.
type prefillSide struct {
	q        *workqueue.Queue[llm.RemotePrefillRequest]
	consumer *workqueue.Consumer
	notify   *loom.Client[PrefillDone, PrefillDoneAck]

	mu      sync.Mutex
	pending map[string]*seq // decode side: jobs awaiting their prefill
	outbox  []llm.RemotePrefillRequest
	ready   chan struct{}
	next    atomic.Uint64
}

func (w *Worker) openPrefillQueue(ctx context.Context) (*workqueue.Queue[llm.RemotePrefillRequest], error) {
	nc, err := w.rt.NATS(ctx)
	if err != nil {
		return nil, fmt.Errorf("mocker: the prefill queue needs NATS with JetStream: %w", err)
	}
	qc := workqueue.ConfigFrom(w.rt.Config().Queue, llm.PrefillQueue)
	qc.Codec = codec.JSON
	qc.Logger, qc.Metrics = w.rt.Logger(), w.rt.Metrics()
	q, err := workqueue.New[llm.RemotePrefillRequest](ctx, nc, qc)
	if err != nil {
		return nil, fmt.Errorf("mocker: open %s: %w", llm.PrefillQueue, err)
	}
	return q, nil
}

// startRemotePrefill sets a decode worker up to hand long prefills to
// the queue and to hear back on its prefill_done endpoint.
func (w *Worker) startRemotePrefill(ctx, wctx context.Context) error {
	q, err := w.openPrefillQueue(ctx)
	if err != nil {
		return err
	}
	p := &prefillSide{q: q, pending: make(map[string]*seq), ready: make(chan struct{}, 1)}
	w.prefill = p
	id := w.rt.ID()
	w.eng.remotePrefill = func(s *seq) { // the engine's lock is held
		key := fmt.Sprintf("%x-%d", id, p.next.Add(1))
		s.remoteKey = key
		toks := make([]int, len(s.toks))
		for i, t := range s.toks {
			toks[i] = int(t)
		}
		var blocks []int
		for i := s.cached / w.cfg.BlockSize; i < len(s.hashes); i++ {
			blocks = append(blocks, i)
		}
		p.mu.Lock()
		p.pending[key] = s
		p.outbox = append(p.outbox, llm.RemotePrefillRequest{EngineID: fmt.Sprintf("%x", id), RequestID: key, PromptTokenIDs: toks, BlockIDs: blocks})
		p.mu.Unlock()
		signal(p.ready)
		w.stats.mu.Lock()
		w.stats.remoteOut++
		w.stats.mu.Unlock()
	}
	w.eng.forgetRemote = func(key string) {
		p.mu.Lock()
		delete(p.pending, key)
		p.mu.Unlock()
	}
	w.wg.Add(1)
	go func() { defer w.wg.Done(); w.enqueuePrefills(wctx) }()
	ep, err := w.comp.Endpoint(PrefillDoneEndpoint)
	if err != nil {
		return err
	}
	return loom.Serve(ctx, ep, loom.EngineFunc[PrefillDone, PrefillDoneAck](w.prefillDone))
}

// enqueuePrefills sends the jobs the engine hands over, in order.
func (w *Worker) enqueuePrefills(ctx context.Context) {
	p := w.prefill
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.ready:
		}
		p.mu.Lock()
		jobs := p.outbox
		p.outbox = nil
		p.mu.Unlock()
		for _, j := range jobs {
			// The request id is the idempotency key: a retried enqueue
			// stores the job once.
			if err := p.q.Enqueue(ctx, j, workqueue.WithKey(j.RequestID)); err != nil {
				if ctx.Err() != nil {
					return
				}
				w.rt.Logger().Warn("mocker: remote prefill not enqueued; the request fails", "request", j.RequestID, "err", err)
				w.failRemote(j.RequestID, err)
			}
		}
	}
}

// failRemote ends a request whose prefill could not be handed over.
func (w *Worker) failRemote(key string, err error) {
	p := w.prefill
	p.mu.Lock()
	s := p.pending[key]
	delete(p.pending, key)
	p.mu.Unlock()
	if s == nil {
		return
	}
	e := w.eng
	e.mu.Lock()
	defer e.mu.Unlock()
	if !s.finished {
		s.remoteKey = ""
		s.err = fmt.Errorf("mocker: hand the prefill of request %q to %s: %w", s.req.ID, llm.PrefillQueue, err)
		e.release(s)
		signal(s.notify)
	}
}

// prefillDone serves prefill_done: the prefill of a job is finished.
func (w *Worker) prefillDone(_ context.Context, req PrefillDone) iter.Seq2[PrefillDoneAck, error] {
	return func(yield func(PrefillDoneAck, error) bool) {
		p := w.prefill
		p.mu.Lock()
		s := p.pending[req.RequestID]
		delete(p.pending, req.RequestID)
		p.mu.Unlock()
		known := s != nil && w.eng.remoteDone(s)
		yield(PrefillDoneAck{Known: known}, nil)
	}
}

// startPrefillWorker makes this worker a prefill worker: it takes jobs
// from the queue, MaxBatch at a time, simulates each prefill, tells the
// decode worker, and only then acknowledges the job.
func (w *Worker) startPrefillWorker(ctx, wctx context.Context) error {
	q, err := w.openPrefillQueue(ctx)
	if err != nil {
		return err
	}
	p := &prefillSide{q: q}
	w.prefill = p
	ep, err := w.comp.Endpoint(PrefillDoneEndpoint)
	if err != nil {
		return err
	}
	if p.notify, err = loom.NewClient[PrefillDone, PrefillDoneAck](ctx, ep, loom.WithWaitTimeout(2*time.Second)); err != nil {
		return err
	}
	p.consumer, err = q.Consume(workqueue.HandlerFunc[llm.RemotePrefillRequest](w.handlePrefill),
		workqueue.WithConcurrency(w.cfg.MaxBatch), workqueue.WithPrefetch(1))
	return err
}

// handlePrefill does one remote prefill.
func (w *Worker) handlePrefill(ctx context.Context, job *workqueue.Job[llm.RemotePrefillRequest]) error {
	r := job.Value
	var id uint64
	if _, err := fmt.Sscanf(r.EngineID, "%x", &id); err != nil || id == 0 {
		return workqueue.Permanent(fmt.Errorf("mocker: prefill job %q: engine_id %q is not a worker's instance id in hex", r.RequestID, r.EngineID))
	}
	w.stats.mu.Lock()
	w.stats.prefillsNow++
	w.stats.mu.Unlock()
	defer func() {
		w.stats.mu.Lock()
		w.stats.prefillsNow--
		w.stats.mu.Unlock()
	}()
	uncached := len(r.BlockIDs) * w.cfg.BlockSize
	if uncached == 0 || uncached > len(r.PromptTokenIDs) {
		uncached = len(r.PromptTokenIDs)
	}
	t := time.NewTimer(time.Duration(uncached) * w.cfg.PrefillPerToken)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
	}
	var known bool
	for ack, err := range w.prefill.notify.Direct(id).Generate(ctx, PrefillDone{RequestID: r.RequestID}) {
		if err != nil {
			if errors.Is(err, loom.ErrNoInstances) {
				// Its decode worker is gone, and the request with it.
				w.rt.Logger().Debug("mocker: prefill done for a decode worker that is gone", "request", r.RequestID, "engine", r.EngineID)
				break
			}
			return fmt.Errorf("mocker: tell decode worker %s that prefill %q is done: %w", r.EngineID, r.RequestID, err)
		}
		known = ack.Known
	}
	w.stats.mu.Lock()
	w.stats.prefillJobs++
	if job.Deliveries > 1 {
		w.stats.redelivered++
	}
	w.stats.mu.Unlock()
	_ = known
	return nil
}

// shutdown stops the consumer (letting jobs in hand finish until ctx
// ends) and releases the queue.
func (p *prefillSide) shutdown(ctx context.Context) error {
	var errs []error
	if p.consumer != nil {
		errs = append(errs, p.consumer.Shutdown(ctx))
	}
	if p.notify != nil {
		p.notify.Close()
	}
	errs = append(errs, p.q.Close(ctx))
	return errors.Join(errs...)
}
