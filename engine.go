package loom

import (
	"context"
	"iter"
)

// Engine turns one request into a stream of responses. It is what an
// endpoint serves, what a Client is, and what a pipeline's operators wrap:
// one shape from the handler to the caller, so stages compose without
// adapters and a pipeline can cross processes at any link.
//
// The stream ends when the iterator returns; an item with a non-nil error
// ends it with that error. A handler should watch ctx.Done() (the request
// was killed: stop now) and Stopped(ctx) (asked to finish gracefully).
type Engine[Req, Resp any] interface {
	Generate(ctx context.Context, req Req) iter.Seq2[Resp, error]
}

// EngineFunc adapts a function to an Engine.
type EngineFunc[Req, Resp any] func(ctx context.Context, req Req) iter.Seq2[Resp, error]

// Generate calls f(ctx, req).
func (f EngineFunc[Req, Resp]) Generate(ctx context.Context, req Req) iter.Seq2[Resp, error] {
	return f(ctx, req)
}

// Operator wraps an Engine: it may change the request on the way in and the
// stream on the way out (a preprocessor, a router, a detokenizer). The
// request and response types may change across an operator.
type Operator[Req, Resp, NextReq, NextResp any] func(next Engine[NextReq, NextResp]) Engine[Req, Resp]

// Fail returns a stream that yields err alone.
func Fail[Resp any](err error) iter.Seq2[Resp, error] {
	return func(yield func(Resp, error) bool) {
		var zero Resp
		yield(zero, err)
	}
}
