package mocker

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"slices"
	"sync"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/llm"
)

// ErrWorkerStopped ends the streams of requests a worker was still serving
// when its engine stopped.
var ErrWorkerStopped = errors.New("mocker: worker stopped")

// seq is one request in the engine: its tokens so far, the blocks it
// holds, and the mailbox its handler reads.
type seq struct {
	req        llm.Request
	promptHash uint64
	toks       []uint32 // prompt (with output already streamed) then new output
	hashes     []uint64 // its full blocks, all referenced in the cache
	cached     int      // prompt tokens found in the cache at admission
	generated  int      // tokens generated here
	maxNew     int
	prefilled  bool
	// remote: the prefill was handed to a prefill worker and is not done.
	remote    bool
	remoteKey string // its job's request id, while remote
	finished  bool

	// The mailbox, under the engine's lock.
	out    []uint32
	finish string
	err    error         // ends the stream instead of a finish
	notify chan struct{} // capacity 1
}

// engine simulates an inference engine: requests wait, are admitted into
// a batch of at most MaxBatch while the KV cache has room, are prefilled
// (PrefillPerToken for each uncached token) and then decoded one token per
// DecodeStep together.
type engine struct {
	cfg Config
	id  uint64

	mu       sync.Mutex
	cache    *kvCache
	waiting  []*seq
	running  []*seq
	hitToks  uint64
	promptTk uint64
	served   uint64

	wake    chan struct{} // the loop has something new
	kvReady chan struct{} // kv events wait to be published
	changed chan struct{} // the load changed
	done    chan struct{} // closed when the loop ends
	// remotePrefill hands a request's prefill to a prefill worker; nil
	// when prefills are local.
	remotePrefill func(s *seq)
	// forgetRemote drops a finished request from the remote prefills
	// awaited; called with the lock held.
	forgetRemote func(key string)
}

func newEngine(cfg Config, id uint64) *engine {
	return &engine{
		cfg: cfg, id: id, cache: newKvCache(cfg.KvBlocks),
		wake: make(chan struct{}, 1), kvReady: make(chan struct{}, 1), changed: make(chan struct{}, 1),
		done: make(chan struct{}),
	}
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// check says what is wrong with a request, naming the field.
func (e *engine) check(req *llm.Request) error {
	switch {
	case len(req.TokenIDs) == 0:
		return fmt.Errorf("mocker: request %q: token_ids is empty; send the prompt's tokens", req.ID)
	case req.Generated < 0 || req.Generated >= len(req.TokenIDs):
		return fmt.Errorf("mocker: request %q: generated is %d with %d token_ids; it counts output tokens at the end of token_ids and must leave a prompt", req.ID, req.Generated, len(req.TokenIDs))
	case req.MaxTokens < 0:
		return fmt.Errorf("mocker: request %q: max_tokens is %d; use 0 (up to the context length) or more", req.ID, req.MaxTokens)
	case len(req.TokenIDs) >= e.cfg.ContextLength:
		return fmt.Errorf("mocker: request %q: %d tokens leave no room in model %s's context of %d", req.ID, len(req.TokenIDs), e.cfg.Model, e.cfg.ContextLength)
	case len(req.TokenIDs)/e.cfg.BlockSize+1 > e.cfg.KvBlocks:
		return fmt.Errorf("mocker: request %q: %d tokens need more than the %d KV blocks of the cache", req.ID, len(req.TokenIDs), e.cfg.KvBlocks)
	}
	return nil
}

// generate serves one request: the generate endpoint's handler.
func (e *engine) generate(ctx context.Context, req llm.Request) iter.Seq2[llm.Response, error] {
	return func(yield func(llm.Response, error) bool) {
		if err := e.check(&req); err != nil {
			yield(llm.Response{}, err)
			return
		}
		s := e.submit(req)
		stopped := loom.Stopped(ctx)
		first := true
		for {
			select {
			case <-s.notify:
			case <-ctx.Done(): // killed: free the slot and the blocks now
				e.cancel(s)
				return
			case <-stopped: // finish gracefully with what there is
				e.cancel(s)
				e.mu.Lock()
				if s.finish == "" {
					s.finish = llm.FinishCancelled
				}
				e.mu.Unlock()
				stopped = nil
			case <-e.done:
				e.cancel(s)
				yield(llm.Response{}, fmt.Errorf("%w: request %q not finished", ErrWorkerStopped, req.ID))
				return
			}
			e.mu.Lock()
			toks, finish, serr := s.out, s.finish, s.err
			s.out = nil
			e.mu.Unlock()
			if serr != nil {
				yield(llm.Response{}, serr)
				return
			}
			for i, t := range toks {
				r := llm.Response{TokenIDs: []uint32{t}}
				if first {
					r.Worker, r.CachedTokens, first = e.id, s.cached, false
				}
				if i == len(toks)-1 {
					r.FinishReason = finish
				}
				if !yield(r, nil) {
					e.cancel(s)
					return
				}
			}
			if finish != "" {
				if len(toks) == 0 {
					r := llm.Response{FinishReason: finish}
					if first {
						r.Worker, r.CachedTokens = e.id, s.cached
					}
					yield(r, nil)
				}
				return
			}
		}
	}
}

// submit queues a checked request.
func (e *engine) submit(req llm.Request) *seq {
	n := len(req.TokenIDs)
	prompt := req.TokenIDs[:n-req.Generated]
	s := &seq{
		req:        req,
		promptHash: llm.ChainHash(0, prompt),
		toks:       slices.Clip(req.TokenIDs),
		notify:     make(chan struct{}, 1),
	}
	s.maxNew = e.cfg.ContextLength - n
	if req.MaxTokens > 0 {
		s.maxNew = min(s.maxNew, req.MaxTokens)
	}
	e.mu.Lock()
	e.waiting = append(e.waiting, s)
	e.mu.Unlock()
	signal(e.wake)
	signal(e.changed)
	return s
}

// cancel takes s out of the engine at once, freeing its slot and blocks.
func (e *engine) cancel(s *seq) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if s.finished {
		return
	}
	if i := slices.Index(e.waiting, s); i >= 0 {
		e.waiting = slices.Delete(e.waiting, i, i+1)
		s.finished = true
	} else {
		e.release(s)
	}
	signal(e.changed)
	signal(e.kvReady)
	signal(e.wake)
}

// release frees what an admitted request holds; the lock is held.
func (e *engine) release(s *seq) {
	s.finished = true
	// Last block first, so that the LRU list evicts a sequence's tail
	// before its prefix.
	for i := len(s.hashes) - 1; i >= 0; i-- {
		e.cache.release(s.hashes[i])
	}
	s.hashes = nil
	e.cache.dropPrivate()
	if s.remoteKey != "" && e.forgetRemote != nil {
		e.forgetRemote(s.remoteKey)
		s.remoteKey = ""
	}
}

// admit moves waiting requests into the batch while there is room; the
// lock is held.
func (e *engine) admit() {
	for len(e.waiting) > 0 && len(e.running) < e.cfg.MaxBatch {
		s := e.waiting[0]
		hashes := llm.BlockHashes(s.toks, e.cfg.BlockSize)
		if !e.cache.fits(hashes) {
			return
		}
		e.waiting = e.waiting[1:]
		m := e.cache.match(hashes)
		var parent uint64
		for _, h := range hashes {
			e.cache.acquire(h, parent)
			parent = h
		}
		e.cache.takePrivate()
		s.hashes = hashes
		s.cached = m * e.cfg.BlockSize
		e.hitToks += uint64(s.cached)
		e.promptTk += uint64(len(s.toks))
		e.served++
		e.running = append(e.running, s)
		if e.remotePrefill != nil && len(s.toks)-s.cached > e.cfg.RemotePrefillMin {
			s.remote = true
			e.remotePrefill(s)
		}
	}
}

// run is the engine's loop: one step at a time until ctx ends.
func (e *engine) run(ctx context.Context) {
	defer close(e.done)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var pre, dec []*seq
	for {
		pre, dec = pre[:0], dec[:0]
		e.mu.Lock()
		e.admit()
		tokens := 0
		for _, s := range e.running {
			switch {
			case s.remote:
			case !s.prefilled:
				pre = append(pre, s)
				tokens += len(s.toks) - s.cached
			default:
				dec = append(dec, s)
			}
		}
		e.mu.Unlock()
		signal(e.kvReady)
		signal(e.changed)
		if len(pre)+len(dec) == 0 {
			select {
			case <-e.wake:
				continue
			case <-ctx.Done():
				return
			}
		}
		d := time.Duration(tokens) * e.cfg.PrefillPerToken
		if len(dec) > 0 {
			d += e.cfg.DecodeStep
		}
		if d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-ctx.Done():
				return
			}
		}
		e.mu.Lock()
		for _, s := range pre {
			if !s.finished {
				s.prefilled = true
				e.cache.announce(0, s.hashes)
				e.emit(s)
			}
		}
		for _, s := range dec {
			if !s.finished {
				e.emit(s)
			}
		}
		e.running = slices.DeleteFunc(e.running, func(s *seq) bool { return s.finished })
		e.mu.Unlock()
	}
}

// remoteDone marks a request's remote prefill done: its blocks are in the
// cache and it decodes from the next step. It reports whether the request
// was waiting for it.
func (e *engine) remoteDone(s *seq) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if s.finished || !s.remote {
		return false
	}
	s.remote = false
	s.prefilled = true
	e.cache.announce(0, s.hashes)
	e.emit(s)
	signal(e.wake)
	signal(e.kvReady)
	return true
}

// token is output token pos of the prompt hashed to h: a pure function of
// both, so a request that migrates continues as if it had not.
func (e *engine) token(h uint64, pos int) uint32 {
	x := h + uint64(pos+1)*0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	x ^= x >> 31
	return e.cfg.OutputVocab[x%uint64(len(e.cfg.OutputVocab))]
}

// emit generates s's next token; the lock is held.
func (e *engine) emit(s *seq) {
	tok := e.token(s.promptHash, s.req.Generated+s.generated)
	s.generated++
	if slices.Contains(s.req.StopTokenIDs, tok) {
		e.end(s, llm.FinishStop)
		return
	}
	s.toks = append(s.toks, tok)
	s.out = append(s.out, tok)
	if bs := e.cfg.BlockSize; len(s.toks)%bs == 0 {
		// The partial block is full: it becomes a shared block.
		var parent uint64
		if len(s.hashes) > 0 {
			parent = s.hashes[len(s.hashes)-1]
		}
		h := llm.ChainHash(parent, s.toks[len(s.toks)-bs:])
		e.cache.dropPrivate()
		e.cache.acquire(h, parent)
		e.cache.announce(parent, []uint64{h})
		s.hashes = append(s.hashes, h)
		e.cache.takePrivate()
	}
	if s.generated >= s.maxNew {
		e.end(s, llm.FinishLength)
		return
	}
	signal(s.notify)
}

func (e *engine) end(s *seq, reason string) {
	s.finish = reason
	e.release(s)
	signal(s.notify)
}

// load returns the engine's load now.
func (e *engine) load() llm.LoadMetrics {
	e.mu.Lock()
	defer e.mu.Unlock()
	m := llm.LoadMetrics{
		ActiveSlots:  len(e.running),
		TotalSlots:   e.cfg.MaxBatch,
		Waiting:      len(e.waiting),
		ActiveBlocks: e.cache.activeBlocks(),
		TotalBlocks:  e.cfg.KvBlocks,
		CacheUsage:   float64(e.cache.used()) / float64(e.cfg.KvBlocks),
	}
	if e.promptTk > 0 {
		m.PrefixHitRate = float64(e.hitToks) / float64(e.promptTk)
	}
	for _, s := range e.running {
		if !s.prefilled && !s.finished {
			m.PrefillTokens += len(s.toks) - s.cached
		}
	}
	return m
}

// takeEvents returns the kv events recorded since the last call.
func (e *engine) takeEvents() []llm.KvEvent {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cache.takeEvents()
}

// snapshot returns the announced block set and the last event id.
func (e *engine) snapshot() llm.KvSnapshot {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cache.snapshot()
}
