package bench

import (
	"context"
	"iter"
	"log/slog"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/discovery/memory"
)

// BenchmarkUnaryTracing: Loom's unary call over TCP (as BenchmarkUnary)
// with tracing turned off by configuration, so that no OpenTelemetry code
// runs at all ("none"); with tracing on but no TracerProvider installed,
// a program's usual state ("off"); and with an SDK provider sampling every
// call and exporting to a no-op exporter through the batch processor
// ("on"). "off" should be within 3% of "none".
func BenchmarkUnaryTracing(b *testing.B) {
	for _, mode := range tracingModes {
		b.Run(mode, func(b *testing.B) {
			call := tracingPeer(b, mode)
			call() // connect
			b.ReportAllocs()
			for b.Loop() {
				call()
			}
		})
	}
}

var tracingModes = []string{"none", "off", "on"}

// BenchmarkUnaryTracingInterleaved makes the three modes' calls in turn,
// one of each per op, and reports each mode's mean time per call: on a
// shared machine whose load changes from second to second, interleaving
// puts the three under the same load.
func BenchmarkUnaryTracingInterleaved(b *testing.B) {
	var calls []func()
	for _, mode := range tracingModes {
		call := tracingPeer(b, mode)
		call()
		calls = append(calls, call)
	}
	took := make([]time.Duration, len(calls))
	n := 0
	for b.Loop() {
		for i, call := range calls {
			start := time.Now()
			call()
			took[i] += time.Since(start)
		}
		n++
	}
	for i, mode := range tracingModes {
		b.ReportMetric(float64(took[i].Nanoseconds())/float64(n), "ns/call-"+mode)
	}
	b.ReportMetric(100*(float64(took[1])/float64(took[0])-1), "%off-vs-none")
}

// tracingPeer starts a server and a client runtime in the tracing mode
// and returns a function that makes one unary call.
func tracingPeer(b *testing.B, mode string) func() {
	cfg := config.Default()
	cfg.Client.LocalFastPath = false
	cfg.Tracing.Enabled = mode != "none"
	opts := []loom.Option{loom.WithConfig(cfg), loom.WithLogger(slog.New(slog.DiscardHandler))}
	if mode == "on" {
		tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()))
		b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
		opts = append(opts, loom.WithTracerProvider(tp))
	}
	store := memory.NewStore()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	b.Cleanup(cancel)
	newRT := func() *loom.Runtime {
		d := store.Connect()
		b.Cleanup(func() { _ = d.Close() })
		rt, err := loom.NewRuntime(ctx, append(opts, loom.WithDiscovery(d))...)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = rt.Shutdown(context.Background()) })
		return rt
	}
	srv, cli := newRT(), newRT()
	ep, err := srv.Endpoint(loomUnary)
	if err != nil {
		b.Fatal(err)
	}
	echo := loom.EngineFunc[[]byte, []byte](func(ctx context.Context, req []byte) iter.Seq2[[]byte, error] {
		return func(yield func([]byte, error) bool) { yield(req, nil) }
	})
	if err := loom.Serve(ctx, ep, echo); err != nil {
		b.Fatal(err)
	}
	cep, err := cli.Endpoint(loomUnary)
	if err != nil {
		b.Fatal(err)
	}
	c, err := loom.NewClient[[]byte, []byte](ctx, cep)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close() })
	req := make([]byte, msgSize)
	return func() {
		for resp, err := range c.Generate(context.Background(), req) {
			if err != nil || len(resp) != msgSize {
				b.Fatal(err)
			}
		}
	}
}
