package loom

import "context"

type stopKey struct{}

// WithStop returns a copy of parent that can be stopped. Calling stop asks
// the handlers serving requests made with the returned context, and the
// requests those handlers make in turn, to finish gracefully: a handler sees
// Stopped(ctx) closed and may send its last items before ending the stream.
// Killing is cancelling the context: the handler's context is cancelled and
// the stream ends at once.
//
// Call stop when the requests are done to release its resources, as with
// context.WithCancel.
func WithStop(parent context.Context) (ctx context.Context, stop context.CancelFunc) {
	base := stopOf(parent)
	if base == nil {
		base = context.Background()
	}
	s, stop := context.WithCancel(base)
	return context.WithValue(parent, stopKey{}, s), stop
}

// Stopped returns a channel that is closed when the request served under
// ctx has been asked to stop gracefully. It returns nil (a channel that
// never closes) if nobody can stop it.
func Stopped(ctx context.Context) <-chan struct{} {
	if s := stopOf(ctx); s != nil {
		return s.Done()
	}
	return nil
}

// IsStopped reports whether the request served under ctx has been asked
// to stop gracefully.
func IsStopped(ctx context.Context) bool {
	if s := stopOf(ctx); s != nil {
		return s.Err() != nil
	}
	return false
}

// stopOf returns the stop signal a caller's context carries, or nil.
func stopOf(ctx context.Context) context.Context {
	s, _ := ctx.Value(stopKey{}).(context.Context)
	return s
}
