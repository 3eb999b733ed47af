package loom

import "context"

// A Lookahead tells a caller ranging over a call's responses whether the
// next one has already arrived, so that work worth doing once per burst of
// responses rather than once per response (flushing a network write, for
// one) can wait until the burst ends. A caller that keeps up sees every
// response alone and does that work each time; a caller that falls behind
// finds the next ones waiting and does it once for all of them.
//
// Attach one to the context of a call with [WithLookahead], and ask
// [Lookahead.Ready] in the loop's body. The zero value is ready to use. A
// Lookahead serves one call at a time, on the caller's goroutine.
type Lookahead struct {
	s interface{ Buffered() bool }
}

type lookaheadKey struct{}

// WithLookahead returns ctx with la attached: while a call made with the
// returned context is being ranged over, la reports on that call.
func WithLookahead(ctx context.Context, la *Lookahead) context.Context {
	return context.WithValue(ctx, lookaheadKey{}, la)
}

// lookaheadOf returns the Lookahead a caller's context carries, or nil.
func lookaheadOf(ctx context.Context) *Lookahead {
	la, _ := ctx.Value(lookaheadKey{}).(*Lookahead)
	return la
}

// Ready reports whether ranging on would not wait: the call's next
// response, or its end, has arrived and is waiting to be taken. It is
// false outside the loop's body, and always false for a call served in
// this process, whose handler runs as the caller ranges and so has
// nothing waiting.
func (la *Lookahead) Ready() bool {
	return la != nil && la.s != nil && la.s.Buffered()
}
