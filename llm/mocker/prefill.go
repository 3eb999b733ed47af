package mocker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/codec"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/llm"
	"github.com/loomrt/loom/workqueue"
)

// PrefillDoneSubject returns the NATS subject on which the decode worker
// with instance id engineID (in namespace ns) hears that prefills it handed
// over are done: core NATS request / reply, a JSON PrefillDone answered by
// a JSON PrefillDoneAck. It is a plain subscription rather than a Loom
// endpoint so that it keeps answering while the runtime drains the
// worker's endpoints on shutdown: requests waiting for a remote prefill
// need the notice to finish.
func PrefillDoneSubject(ns string, engineID uint64) string {
	return "llm_prefill_done." + strings.ReplaceAll(ns, ".", "%2E") + "." + strconv.FormatUint(engineID, 16)
}

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
// worker's queue producer and prefill notice subscription, or a prefill
// worker's consumer.
type prefillSide struct {
	q        *workqueue.Queue[llm.RemotePrefillRequest]
	consumer *workqueue.Consumer
	nc       *nats.Conn
	sub      *nats.Subscription // decode side: PrefillDoneSubject

	mu      sync.Mutex
	pending map[string]*seq // decode side: jobs awaiting their prefill
	outbox  []llm.RemotePrefillRequest
	ready   chan struct{}
	next    atomic.Uint64
}

func (w *Worker) openPrefillQueue(ctx context.Context) (*workqueue.Queue[llm.RemotePrefillRequest], error) {
	q, err := workqueue.Open[llm.RemotePrefillRequest](ctx, w.rt, workqueue.Config{Name: llm.PrefillQueue, Codec: codec.JSON, Queue: config.Queue{AckWait: w.cfg.PrefillAckWait}})
	if err != nil {
		return nil, fmt.Errorf("mocker: open %s: %w", llm.PrefillQueue, err)
	}
	return q, nil
}

// startRemotePrefill sets a decode worker up to hand long prefills to
// the queue and to hear back on PrefillDoneSubject.
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
	nc, err := w.rt.NATS(ctx)
	if err != nil {
		return err
	}
	p.nc = nc
	p.sub, err = nc.Subscribe(PrefillDoneSubject(w.cfg.Namespace, id), w.prefillDone)
	if err != nil {
		return fmt.Errorf("mocker: subscribe to prefill notices: %w", err)
	}
	// The server has the subscription before the worker takes requests.
	fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return nc.FlushWithContext(fctx)
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

// decodePrefillDone reads a prefill notice off the network: a JSON
// object whose request_id names the job, as PrefillDone encodes it.
func decodePrefillDone(data []byte) (PrefillDone, error) {
	var d PrefillDone
	if err := json.Unmarshal(data, &d); err != nil {
		return PrefillDone{}, fmt.Errorf("prefill notice %.64q: want a JSON object with the job's request_id as a string: %w", data, err)
	}
	if d.RequestID == "" {
		return PrefillDone{}, fmt.Errorf("prefill notice %.64q has no request_id: send {\"request_id\": the job's request_id}", data)
	}
	return d, nil
}

// decodePrefillDoneAck reads a decode worker's answer to a notice: a
// JSON object whose known is a boolean.
func decodePrefillDoneAck(data []byte) (PrefillDoneAck, error) {
	var a struct {
		Known *bool `json:"known"`
	}
	if err := json.Unmarshal(data, &a); err != nil {
		return PrefillDoneAck{}, fmt.Errorf("prefill notice answer %.64q: want a JSON object with known as a boolean: %w", data, err)
	}
	if a.Known == nil {
		return PrefillDoneAck{}, fmt.Errorf("prefill notice answer %.64q has no known: want {\"known\": true or false}", data)
	}
	return PrefillDoneAck{Known: *a.Known}, nil
}

// prefillDone answers a prefill worker's notice that a prefill is done.
func (w *Worker) prefillDone(m *nats.Msg) {
	var ack PrefillDoneAck
	if req, err := decodePrefillDone(m.Data); err != nil {
		w.rt.Logger().Warn("mocker: malformed prefill notice", "subject", m.Subject, "err", err)
	} else {
		p := w.prefill
		p.mu.Lock()
		s := p.pending[req.RequestID]
		delete(p.pending, req.RequestID)
		p.mu.Unlock()
		ack.Known = s != nil && w.eng.remoteDone(s)
	}
	b, _ := json.Marshal(ack)
	_ = m.Respond(b)
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
	if p.nc, err = w.rt.NATS(ctx); err != nil {
		return err
	}
	p.consumer, err = q.Consume(workqueue.HandlerFunc[llm.RemotePrefillRequest](w.handlePrefill),
		workqueue.WithConcurrency(w.cfg.MaxBatch), workqueue.WithPrefetch(1))
	return err
}

// handlePrefill does one remote prefill.
func (w *Worker) handlePrefill(ctx context.Context, job *workqueue.Job[llm.RemotePrefillRequest]) error {
	r := job.Value
	id, err := parseEngineID(r.EngineID)
	if err != nil {
		return workqueue.Permanent(fmt.Errorf("mocker: prefill job %q: %w", r.RequestID, err))
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
	if err := w.notifyDone(ctx, r.RequestID, w.cfg.Namespace, id); err != nil {
		return err
	}
	w.stats.mu.Lock()
	w.stats.prefillJobs++
	if job.Deliveries > 1 {
		w.stats.redelivered++
	}
	w.stats.mu.Unlock()
	return nil
}

// parseEngineID reads a prefill job's engine_id: the instance id of the
// decode worker that handed the job over, in hex, and nothing else.
func parseEngineID(s string) (uint64, error) {
	id, err := strconv.ParseUint(s, 16, 64)
	if err != nil || id == 0 {
		return 0, fmt.Errorf("engine_id %q is not a worker's instance id in hex", s)
	}
	return id, nil
}

// notifyDone tells decode worker id that the prefill of key is done.
func (w *Worker) notifyDone(ctx context.Context, key, ns string, id uint64) error {
	body, err := json.Marshal(PrefillDone{RequestID: key})
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	msg, err := w.prefill.nc.RequestWithContext(rctx, PrefillDoneSubject(ns, id), body)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		// Its decode worker is gone, and the request with it.
		w.rt.Logger().Debug("mocker: prefill done for a decode worker that is gone", "request", key, "engine", fmt.Sprintf("%x", id))
		return nil
	case err != nil:
		return fmt.Errorf("mocker: tell decode worker %x that prefill %q is done: %w", id, key, err)
	}
	if _, err := decodePrefillDoneAck(msg.Data); err != nil {
		return fmt.Errorf("mocker: decode worker %x answered prefill %q: %w", id, key, err)
	}
	return nil
}

// shutdown stops the consumer (letting jobs in hand finish until ctx
// ends) and releases the queue.
func (p *prefillSide) shutdown(ctx context.Context) error {
	var errs []error
	if p.consumer != nil {
		errs = append(errs, p.consumer.Shutdown(ctx))
	}
	if p.sub != nil {
		errs = append(errs, p.sub.Unsubscribe())
	}
	errs = append(errs, p.q.Shutdown(ctx))
	return errors.Join(errs...)
}
