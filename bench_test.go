package loom_test

import (
	"context"
	"iter"
	"testing"
)

// These measure Loom's own overhead per call and per streamed item on each
// plane; the comparison with peers lives in the bench module.
func BenchmarkCall(b *testing.B) {
	for _, plane := range planes {
		b.Run(plane, func(b *testing.B) {
			c := newClusterOn(b, plane)
			srv := c.runtime()
			payload := make([]byte, 64)
			serve(b, srv, "bench/echo/unary", func(ctx context.Context, req []byte) iter.Seq2[[]byte, error] {
				return func(yield func([]byte, error) bool) { yield(req, nil) }
			})
			cl := client[[]byte, []byte](b, c.runtime(), "bench/echo/unary")
			waitInstances(b, cl, 1)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				for resp, err := range cl.Generate(ctx, payload) {
					if err != nil || len(resp) != 64 {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

func BenchmarkStream(b *testing.B) {
	for _, plane := range planes {
		b.Run(plane, func(b *testing.B) {
			c := newClusterOn(b, plane)
			srv := c.runtime()
			item := make([]byte, 64)
			serve(b, srv, "bench/echo/stream", func(ctx context.Context, n int) iter.Seq2[[]byte, error] {
				return func(yield func([]byte, error) bool) {
					for range n {
						if !yield(item, nil) {
							return
						}
					}
				}
			})
			cl := client[int, []byte](b, c.runtime(), "bench/echo/stream")
			waitInstances(b, cl, 1)
			b.ReportAllocs()
			var got int
			for b.Loop() {
				for resp, err := range cl.Generate(context.Background(), 1000) {
					if err != nil || len(resp) != 64 {
						b.Fatal(err)
					}
					got++
				}
			}
			b.ReportMetric(float64(got)/b.Elapsed().Seconds(), "items/s")
		})
	}
}
