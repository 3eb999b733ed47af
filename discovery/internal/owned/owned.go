// Package owned holds what the discovery backends that keep their own
// records alive (NATS KV, Kubernetes) do alike with those records: write
// many at once, a bounded number at a time, and remove them all at Close.
package owned

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"sync"
)

// Writers is how many records a backend writes at once when it renews or
// removes them all.
const Writers = 16

// ForEach calls f for each item, at most Writers at once, and returns when
// every call it started has returned. Once ctx ends it starts no more.
func ForEach[T any](ctx context.Context, items []T, f func(T)) {
	work := make(chan T)
	var wg sync.WaitGroup
	for range min(len(items), Writers) {
		wg.Go(func() {
			for it := range work {
				f(it)
			}
		})
	}
	defer wg.Wait()
	defer close(work)
	for _, it := range items {
		if ctx.Err() != nil {
			return
		}
		select {
		case work <- it:
		case <-ctx.Done():
			return
		}
	}
}

// RemoveAll calls remove for every item, at most Writers at once, each
// with ctx (past its deadline each fails at once and counts), and returns
// how many failed with their errors joined in a stable order.
func RemoveAll[T any](ctx context.Context, items []T, remove func(context.Context, T) error) (int, error) {
	var mu sync.Mutex
	var errs []error
	ForEach(context.Background(), items, func(it T) {
		if err := remove(ctx, it); err != nil {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		}
	})
	slices.SortFunc(errs, func(a, b error) int { return cmp.Compare(a.Error(), b.Error()) })
	return len(errs), errors.Join(errs...)
}
