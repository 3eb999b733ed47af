package bench

import (
	"context"
	"runtime"
	"testing"
	"time"
)

// The peers of each benchmark, in the order the tables show them.
var (
	unaryPeers = []struct {
		name  string
		start starter
	}{
		{"rawtcp", startRawTCP(1)},
		{"loom", startLoom},
		{"grpc", startGRPC},
		{"yamux", startYamux},
		{"nats", startNATS},
	}
	streamPeers = []struct {
		name  string
		start starter
	}{
		{"rawtcp", startRawTCP(1)},
		{"rawtcp_fresh", startRawTCPFresh},
		{"loom", startLoom},
		{"loom_reused", startLoomReused},
		{"grpc", startGRPC},
		{"nats", startNATS},
	}
	// rawtcp gets one connection per caller: the floor, with no
	// multiplexing at all. The others multiplex the 64 callers on what
	// they use for one: one connection (Loom, gRPC), one connection per
	// side of the NATS server.
	parallelPeers = []struct {
		name  string
		start starter
	}{
		{"rawtcp", startRawTCP(callers)},
		{"loom", startLoom},
		{"grpc", startGRPC},
		{"nats", startNATS},
	}
)

// BenchmarkUnary: one call outstanding, a 64-byte request and one 64-byte
// response. One op is one call.
func BenchmarkUnary(b *testing.B) {
	for _, pc := range unaryPeers {
		b.Run(pc.name, func(b *testing.B) {
			ctx := context.Background()
			p := pc.start(b)
			defer p.close()
			req, buf := make([]byte, 0, msgSize), make([]byte, 0, msgSize)
			if _, err := unaryOnce(ctx, p, req, buf, 0); err != nil { // connect
				b.Fatal(err)
			}
			b.ReportAllocs()
			c := startCounts()
			var seq uint64
			for b.Loop() {
				seq++
				resp, err := unaryOnce(ctx, p, req, buf, seq)
				if err != nil {
					b.Fatal(err)
				}
				buf = resp
			}
			c.report(b, 1)
		})
	}
}

// BenchmarkStream: one call whose response is 100,000 items of 64 bytes.
// One op is one whole call; items/s counts items.
func BenchmarkStream(b *testing.B) {
	for _, pc := range streamPeers {
		b.Run(pc.name, func(b *testing.B) {
			ctx := context.Background()
			p := pc.start(b)
			defer p.close()
			req := make([]byte, 0, msgSize)
			if err := streamOnce(ctx, p, req, 10); err != nil { // connect
				b.Fatal(err)
			}
			b.ReportAllocs()
			c := startCounts()
			for b.Loop() {
				if err := streamOnce(ctx, p, req, streamItems); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)*streamItems/b.Elapsed().Seconds(), "items/s")
			c.report(b, streamItems)
		})
	}
}

// BenchmarkParallel: 64 callers at once, each calling again as soon as its
// call returns; unary, 64-byte request and response. One op is one call;
// calls/s is the total rate.
func BenchmarkParallel(b *testing.B) {
	for _, pc := range parallelPeers {
		b.Run(pc.name, func(b *testing.B) {
			ctx := context.Background()
			p := pc.start(b)
			defer p.close()
			if err := parallel(ctx, p, callers, callers); err != nil { // connect
				b.Fatal(err)
			}
			b.ReportAllocs()
			c := startCounts()
			b.ResetTimer()
			if err := parallel(ctx, p, callers, b.N); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "calls/s")
			c.report(b, 1)
		})
	}
}

// BenchmarkIdleStreams opens 10,000 Loom streams through one client, their
// handlers waiting, and reports the memory each open stream costs, client
// and server together: B/stream is the growth of the heap in use, after
// GC; stack-B/stream is the growth of goroutine stacks, and
// goroutines/stream the goroutines added (the server's handler goroutine
// and the caller's own goroutine that ranges over Generate). One op opens,
// measures and completes 10,000 streams.
func BenchmarkIdleStreams(b *testing.B) {
	b.Run("loom", func(b *testing.B) {
		if raceEnabled {
			b.Skip("the race detector allows 8128 goroutines; this opens 20,000")
		}
		lp := newLoomPeer(b)
		defer lp.close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		release, wait := lp.openIdle(ctx, 1) // connect
		release()
		if err := wait(); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		var heap, stack, goroutines float64
		for b.Loop() {
			b.StopTimer()
			heap0, stack0 := liveMem()
			g0 := runtime.NumGoroutine()
			b.StartTimer()
			release, wait := lp.openIdle(ctx, idleStreams)
			b.StopTimer()
			heap1, stack1 := liveMem()
			goroutines += float64(runtime.NumGoroutine()-g0) / idleStreams
			b.StartTimer()
			release()
			if err := wait(); err != nil {
				b.Fatal(err)
			}
			heap += float64(int64(heap1)-int64(heap0)) / idleStreams
			stack += float64(int64(stack1)-int64(stack0)) / idleStreams
		}
		b.ReportMetric(heap/float64(b.N), "B/stream")
		b.ReportMetric(stack/float64(b.N), "stack-B/stream")
		b.ReportMetric(goroutines/float64(b.N), "goroutines/stream")
	})
}

// liveMem returns the heap in use and the goroutine stacks after a GC.
func liveMem() (heap, stack uint64) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse, m.StackInuse
}
