package frontend

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/llm"
	"github.com/loomrt/loom/metrics"
)

// errWorkerGone: the worker serving an attempt left discovery and sent
// nothing for Config.DepartedIdle; the attempt is cut so that the request
// migrates instead of waiting on it.
var errWorkerGone = errors.New("llm/frontend: the worker left discovery mid-request and went quiet")

// attempt is one try of a request on one worker. It travels in the call's
// context to the frontend's picker, which fills in the worker.
type attempt struct {
	f       *Frontend
	model   string
	avoid   []uint64 // workers this request failed on
	cancel  context.CancelCauseFunc
	worker  uint64
	tracked bool
	buf     []*loom.Candidate
	// responses counts the responses the request has had, so that a
	// request on a departed worker that still streams is told from one
	// that went quiet.
	responses atomic.Uint64
}

type attemptKey struct{}

// picker wraps the router: it keeps the request off workers it failed on
// and off workers at the in-flight limit, and tells busy (429) from absent
// (503).
type picker struct{ f *Frontend }

func (p picker) Pick(ctx context.Context, cands []*loom.Candidate) (*loom.Candidate, error) {
	a, _ := ctx.Value(attemptKey{}).(*attempt)
	if a == nil {
		return p.f.router.Pick(ctx, cands)
	}
	limit := int64(p.f.cfg.MaxInFlightPerWorker)
	// The candidates come sorted by id, as the client keeps them, so they
	// are matched against the model's sorted worker ids in one walk of
	// both: among a thousand workers a map lookup per candidate was a
	// tenth of the frontend's time. Should they come out of order, each
	// of the rest is looked up by binary search.
	ids := p.f.models.Load().ids[a.model]
	j, sorted, prev := 0, true, uint64(0)
	if cap(a.buf) < len(cands) {
		a.buf = make([]*loom.Candidate, 0, len(cands)) // once, not grown by appends
	}
	a.buf = a.buf[:0]
	serving := 0
	for _, c := range cands {
		// The frontend's own view of discovery says which model a worker
		// serves, so a worker the frontend saw leave is skipped even if
		// the client has not seen it leave yet.
		var ok bool
		if sorted = sorted && c.ID >= prev; sorted {
			for j < len(ids) && ids[j] < c.ID {
				j++
			}
			ok = j < len(ids) && ids[j] == c.ID
		} else {
			_, ok = slices.BinarySearch(ids, c.ID)
		}
		prev = c.ID
		if !ok || slices.Contains(a.avoid, c.ID) {
			continue
		}
		serving++
		if limit > 0 && c.InFlight() >= limit {
			continue
		}
		a.buf = append(a.buf, c)
	}
	if serving == 0 {
		if len(a.avoid) > 0 {
			return nil, fmt.Errorf("%w: %q has no worker left that this request did not fail on (%d failed)", llm.ErrNoWorker, a.model, len(a.avoid))
		}
		return nil, fmt.Errorf("%w: %q", llm.ErrNoWorker, a.model)
	}
	if len(a.buf) == 0 {
		return nil, fmt.Errorf("%w: %d workers of %q, each with %d requests in flight (frontend max_in_flight_per_worker)", ErrBusy, serving, a.model, limit)
	}
	c, err := p.f.router.Pick(ctx, a.buf)
	if err != nil || c == nil {
		return c, err
	}
	if a.tracked && a.worker != c.ID {
		p.f.untrack(a, a.worker)
		a.tracked = false
	}
	if !a.tracked {
		if a.tracked = p.f.track(a, c.ID); !a.tracked {
			// It left between the check above and now: cut the
			// attempt so that it migrates rather than waits on it.
			a.cancel(errWorkerGone)
		}
	}
	a.worker = c.ID
	return c, nil
}

// job is one request being answered.
type job struct {
	id        string
	p         *params
	maxTokens int
	mm        *metrics.LLMModel
	start     time.Time
	// emit writes text to the client; an error stops the job.
	emit func(text []byte) error
	// flush, if set, sends what emit wrote; run calls it when no more
	// output is waiting, so a burst of tokens leaves in one write.
	flush func() error
	st    *state
}

// result is how a job ended.
type result struct {
	finish     string
	completion int
	cached     int
	migrations int // times the request was re-issued to another worker
}

// run generates until a finish, migrating across workers that fail; it
// returns an error only when the request failed (or the client left).
func (f *Frontend) run(ctx context.Context, j *job) (result, error) {
	var res result
	st := j.st
	generated := st.generated[:0]
	defer func() { st.generated = generated[:0] }()
	st.dec.Reset()
	stop := stopper{stops: j.p.stops, held: st.held[:0], out: st.out[:0]}
	defer func() { st.held, st.out = stop.held[:0], stop.out[:0] }()
	first := true
	var last time.Time
	a := &attempt{f: f, model: j.p.model}
	waited := false
	for try := 0; ; try++ {
		req := llm.Request{ID: j.id, Model: j.p.model, TokenIDs: j.p.prompt,
			MaxTokens: j.maxTokens - len(generated), StopTokenIDs: j.p.stopIDs}
		if len(generated) > 0 {
			req.TokenIDs = append(slices.Clip(j.p.prompt), generated...)
			req.Generated = len(generated)
		}
		// The picker gives the router only workers of the model: Filtered.
		ri := &llm.RouteInfo{RequestID: j.id, Model: j.p.model, TokenIDs: req.TokenIDs, Filtered: true}
		actx, cancel := context.WithCancelCause(ctx)
		a.cancel = cancel
		callCtx := llm.WithRoute(context.WithValue(actx, attemptKey{}, a), ri)
		if j.flush != nil {
			callCtx = loom.WithLookahead(callCtx, &st.ahead)
		}
		var callErr error
		finish := ""
		for resp, err := range f.client.Generate(callCtx, req) {
			if err != nil {
				callErr = err
				break
			}
			a.responses.Add(1)
			now := time.Now()
			if first {
				first = false
				res.cached = resp.CachedTokens
				j.mm.CachedTokens.Add(float64(resp.CachedTokens))
				if len(resp.TokenIDs) > 0 {
					j.mm.TTFT.Observe(now.Sub(j.start).Seconds())
				}
			} else if len(resp.TokenIDs) > 0 && !last.IsZero() {
				j.mm.ITL.Observe(now.Sub(last).Seconds())
			}
			if len(resp.TokenIDs) > 0 {
				last = now
			}
			for _, t := range resp.TokenIDs {
				generated = append(generated, t)
				st.text = st.dec.Append(st.text[:0], t)
				out, hit := stop.push(st.text)
				if len(out) > 0 {
					if err := j.emit(out); err != nil {
						callErr = err
						break
					}
				}
				if hit {
					finish = llm.FinishStop
					break
				}
				if len(generated) >= j.maxTokens {
					finish = llm.FinishLength
					break
				}
			}
			if callErr != nil || finish != "" {
				break
			}
			if resp.FinishReason != "" && resp.FinishReason != llm.FinishCancelled {
				finish = resp.FinishReason
				break
			}
			if j.flush != nil && !st.ahead.Ready() {
				// Nothing more has arrived: send what this response
				// made. A frontend that keeps up sends each token as it
				// comes; one that falls behind sends the tokens that
				// waited together.
				if err := j.flush(); err != nil {
					callErr = err
					break
				}
			}
		}
		cause := context.Cause(actx)
		cancel(nil)
		if a.tracked {
			f.untrack(a, a.worker)
			a.tracked = false
		}
		f.router.Done(j.id)
		if finish != "" {
			if finish != llm.FinishStop || !stop.hit {
				// The end of the stream: let out what was held back.
				st.text = st.dec.Flush(st.text[:0])
				if out := stop.flush(st.text); len(out) > 0 {
					if err := j.emit(out); err != nil {
						return res, err
					}
				}
			}
			res.finish = finish
			res.completion = len(generated)
			j.mm.OutputTokens.Add(float64(len(generated)))
			return res, nil
		}
		if ctx.Err() != nil {
			return res, context.Cause(ctx)
		}
		if callErr != nil && errors.Is(cause, errWorkerGone) {
			callErr = fmt.Errorf("%w (worker %x)", errWorkerGone, a.worker)
		}
		if errors.Is(callErr, llm.ErrNoWorker) && !waited && f.hasWorker(j.p.model, a.avoid) {
			// The frontend's view of discovery knows a worker that the
			// client's does not yet: wait for the client to catch up,
			// once, then try again. Counting the client's instances
			// would not do: it may still list the worker that just
			// failed, which makes up the count without being usable.
			waited = true
			wctx, wcancel := context.WithTimeout(ctx, time.Second)
			f.waitClientKnows(wctx, j.p.model, a.avoid)
			wcancel()
			try--
			continue
		}
		if !migratable(callErr) {
			return res, callErr
		}
		if callErr == nil {
			callErr = fmt.Errorf("llm/frontend: worker %x ended the stream without a finish reason", a.worker)
		}
		if try >= f.cfg.MaxMigrations {
			return res, fmt.Errorf("%w: request %s failed on %d workers, last: %w", errMigrationsExhausted, j.id, try+1, callErr)
		}
		if f.models.Load().workers(j.p.model) == 0 {
			return res, fmt.Errorf("%w: %q: its last worker failed mid-request: %w", llm.ErrNoWorker, j.p.model, callErr)
		}
		if a.worker != 0 && !slices.Contains(a.avoid, a.worker) {
			a.avoid = append(a.avoid, a.worker)
		}
		a.worker = 0
		if j.flush != nil {
			// The client has what was made so far while another worker
			// takes over.
			if err := j.flush(); err != nil {
				return res, err
			}
		}
		res.migrations++
		j.mm.Migrations.Inc()
		f.log.Info("llm frontend: migrating request", "request", j.id, "model", j.p.model,
			"generated", len(generated), "migration", try+1, "err", callErr)
	}
}

// hasWorker reports whether the frontend knows a worker of model that is
// not in avoid.
func (f *Frontend) hasWorker(model string, avoid []uint64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for id, c := range f.instCards {
		if c.Name == model && !slices.Contains(avoid, id) {
			return true
		}
	}
	return false
}

// waitClientKnows waits until the client lists a worker of model that is
// not in avoid and that the frontend sees in discovery, or ctx ends.
func (f *Frontend) waitClientKnows(ctx context.Context, model string, avoid []uint64) {
	_ = f.client.WaitForInstance(ctx, func(inst discovery.Instance) bool {
		_, alive := f.models.Load().alive[inst.ID]
		return alive && inst.Metadata[llm.MetaModel] == model && !slices.Contains(avoid, inst.ID)
	})
}

// migratable reports whether a failed attempt may be re-issued elsewhere:
// the worker failed or left, rather than refused the request.
func migratable(err error) bool {
	if err == nil {
		return true // the stream ended with no finish reason
	}
	var he *loom.HandlerError
	var bre *loom.BadRequestError
	switch {
	case errors.As(err, &he), errors.As(err, &bre),
		errors.Is(err, loom.ErrHandlerPanic), errors.Is(err, ErrBusy),
		errors.Is(err, llm.ErrNoWorker), errors.Is(err, loom.ErrNoInstances):
		return false
	}
	return true
}

// stopper holds back text that may be the start of a stop string, and
// finds the first stop string in the text.
type stopper struct {
	stops []string
	held  []byte
	out   []byte
	hit   bool
}

// push adds text and returns what may be sent now, valid until the next
// call, and whether a stop string was reached (then the text before it is
// returned and the rest dropped).
func (s *stopper) push(text []byte) ([]byte, bool) {
	if len(s.stops) == 0 {
		return text, false
	}
	s.held = append(s.held, text...)
	at := -1
	for _, stop := range s.stops {
		if i := bytes.Index(s.held, []byte(stop)); i >= 0 && (at < 0 || i < at) {
			at = i
		}
	}
	if at >= 0 {
		s.hit = true
		s.out = append(s.out[:0], s.held[:at]...)
		s.held = s.held[:0]
		return s.out, true
	}
	keep := 0
	for _, stop := range s.stops {
		for k := min(len(stop)-1, len(s.held)); k > keep; k-- {
			if bytes.HasSuffix(s.held, []byte(stop[:k])) {
				keep = k
				break
			}
		}
	}
	n := len(s.held) - keep
	s.out = append(s.out[:0], s.held[:n]...)
	s.held = s.held[:copy(s.held, s.held[n:])]
	return s.out, false
}

// flush returns what is held back followed by text, at the end of the
// stream.
func (s *stopper) flush(text []byte) []byte {
	if len(s.stops) == 0 {
		return text
	}
	s.out = append(append(s.out[:0], s.held...), text...)
	s.held = s.held[:0]
	return s.out
}
