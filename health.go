package loom

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/loomrt/loom/metrics"
)

// WithHealthCheck declares the endpoint's health request. When the
// endpoint has served nothing for health.canary_idle, the runtime sends it
// req through the normal serving path (admission, interceptors, the
// handler); if it gets no answer within health.canary_timeout, or the
// answer is an error, /health reports the process not ready, naming the
// endpoint, until a later check or a real request succeeds. Real traffic
// suppresses the checks. req must be of the endpoint's request type.
//
// Interceptors see a canary as a Call with Canary set; a handler can tell
// it by CallFromContext(ctx).Canary when the endpoint has interceptors or
// tracing is on.
func WithHealthCheck[Req any](req Req) ServeOption {
	return func(o *serveOptions) { o.health = &healthOptions{req: req} }
}

type healthOptions struct{ req any }

// healthCheck is one served endpoint's canary state.
type healthCheck struct {
	req           any
	idle, timeout time.Duration
	m             *metrics.HealthCheck
	lastActive    atomic.Int64           // unix nanoseconds a request last ended
	failing       atomic.Pointer[string] // why the endpoint is not ready, or nil
	// run sends the health request through the serving path and reports
	// how it ended; set by startHealth, where the types are known.
	run func(ctx context.Context) error
}

// setHealth checks a health request's type and prepares its state.
func (s *served) setHealth(o *healthOptions, isReq func(any) bool) error {
	if !isReq(o.req) {
		return fmt.Errorf("loom: serve %s: the health request is a %T, not the endpoint's request type", s.ep.path, o.req)
	}
	cfg := s.ep.Runtime().cfg.Health
	h := &healthCheck{req: o.req, idle: cfg.CanaryIdle, timeout: cfg.CanaryTimeout,
		m: s.ep.Runtime().metrics.HealthCheck(s.inst.Namespace, s.inst.Component, s.inst.Endpoint)}
	h.lastActive.Store(time.Now().UnixNano())
	s.health = h
	return nil
}

// served records the end of a request. One that answered (ok: it
// completed, or yielded before its caller stopped or cancelled) postpones
// the next canary and makes a failing endpoint ready again; one that
// failed postpones the canary only. One killed before it answered (its
// caller's deadline passed, or a canary's timeout) does neither: that is
// what a wedged handler looks like, and real traffic timing out on it must
// not keep the canary from finding it, nor the end of a canary already
// judged a timeout make the endpoint ready.
func (h *healthCheck) served(ok, killed bool) {
	if killed {
		return
	}
	h.lastActive.Store(time.Now().UnixNano())
	if ok && h.failing.Load() != nil {
		h.failing.Store(nil)
		h.m.SetReady(true)
	}
}

// isCanary reports whether caller is a canary's context: the canary loop
// judges a canary by its timeout, so its request's end, which may come
// after that judgement, does not count as served.
func isCanary(caller context.Context) bool {
	c := callFrom(caller)
	return c != nil && c.Canary
}

func (h *healthCheck) fail(why string) {
	h.failing.Store(&why)
	h.m.SetReady(false)
}

// end removes the endpoint's readiness from the metrics once it is
// served no more (shut down on its own or with its runtime).
func (h *healthCheck) end() { h.m.Remove() }

// startHealth shows the endpoint's readiness in the metrics, now that it
// is served, and starts its canary loop, if it has a health request and
// canaries are on.
func (s *served) startHealth(rt *Runtime) {
	h := s.health
	if h == nil {
		return
	}
	h.m.Show(h.failing.Load() == nil)
	if h.idle <= 0 {
		return
	}
	_ = rt.Go("health check "+s.ep.path, func(ctx context.Context) error {
		h.loop(s.ep.ctx, s)
		return nil
	})
}

// healthRunner makes a health check's run function for typed engines.
func healthRunner[Req, Resp any](s *served, eng Engine[Req, Resp]) func(ctx context.Context) error {
	req := s.health.req.(Req)
	return func(ctx context.Context) error {
		ctx = context.WithValue(ctx, callKey{}, &Call{Side: ServerSide, Path: s.ep.path, RequestID: "canary-" + newRequestID(), Canary: true, Header: map[string]string{}})
		_, err := serveTyped(ctx, nil, s, eng, req, yieldFunc[Resp](func(Resp, error) bool { return true }), false, 0)
		return err
	}
}

// loop sends a canary whenever the endpoint has been idle for h.idle, one
// at a time, until ctx (the endpoint's) ends. The canary runs in a
// goroutine of its own, which outlives the loop if its handler ignores the
// endpoint's end (done is buffered for it).
func (h *healthCheck) loop(ctx context.Context, s *served) {
	var pending chan error // a canary still running after its timeout
	timer := time.NewTimer(h.idle)
	defer timer.Stop()
	for {
		if pending != nil {
			select {
			case <-ctx.Done():
				// The endpoint's end cancelled the canary. A handler that
				// ignores that is not waited for, as no request's is:
				// the canary's goroutine ends when it returns.
				return
			case <-pending:
				// A late answer: the serving path has recorded it (a
				// success made the endpoint ready again).
				pending = nil
			}
		}
		wait := h.idle - time.Since(time.Unix(0, h.lastActive.Load()))
		if wait > 0 {
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				return
			case <-timer.C:
			}
			continue // traffic may have come meanwhile
		}
		cctx, cancel := context.WithTimeout(ctx, h.timeout)
		done := make(chan error, 1)
		start := time.Now()
		go func() {
			defer cancel()
			done <- h.run(cctx)
		}()
		timer.Reset(h.timeout)
		select {
		case <-ctx.Done():
			cancel()
			return
		case err := <-done:
			h.result(s, err, time.Since(start))
		case <-timer.C:
			h.result(s, context.DeadlineExceeded, time.Since(start))
			pending = done
		}
		h.lastActive.Store(time.Now().UnixNano())
	}
}

// result records a canary's outcome.
func (h *healthCheck) result(s *served, err error, took time.Duration) {
	h.m.Duration.Observe(took.Seconds())
	switch {
	case err == nil:
		h.m.OK.Inc()
		h.served(true, false)
	case errors.Is(err, context.DeadlineExceeded):
		h.m.Timeout.Inc()
		h.fail(fmt.Sprintf("%s: health check got no answer within %s (health.canary_timeout)", s.ep.path, h.timeout))
		s.log.Warn("health check timed out; /health reports not ready", "timeout", h.timeout)
	case errors.Is(err, ErrDraining), errors.Is(err, ErrClosed):
		// Shutting down: readiness already says so.
	default:
		h.m.Error.Inc()
		h.fail(fmt.Sprintf("%s: health check failed: %v", s.ep.path, err))
		s.log.Warn("health check failed; /health reports not ready", "err", err)
	}
}
