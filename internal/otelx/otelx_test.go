package otelx

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// counting is a TracerProvider that counts the tracers made of it; each
// tracer knows its provider.
type counting struct {
	trace.TracerProvider
	made atomic.Int64
}

type tracerOf struct {
	trace.Tracer
	p trace.TracerProvider
}

func (c *counting) Tracer(name string, opts ...trace.TracerOption) trace.Tracer {
	c.made.Add(1)
	return tracerOf{c.TracerProvider.Tracer(name, opts...), c}
}

func newCounting() *counting { return &counting{TracerProvider: noop.NewTracerProvider()} }

// TestTracerKeepsTheTracersOfSeveralProviders: a program tracing with
// several providers in turn (two runtimes, each WithTracerProvider) gets
// each provider's tracer, made once, without an allocation per call.
func TestTracerKeepsTheTracersOfSeveralProviders(t *testing.T) {
	a, b := newCounting(), newCounting()
	for range 100 {
		for _, p := range []*counting{a, b} {
			if got := Tracer(p).(tracerOf).p; got != p {
				t.Fatalf("Tracer gave a tracer of %p, want one of %p", got, p)
			}
		}
	}
	if a.made.Load() != 1 || b.made.Load() != 1 {
		t.Errorf("used in turn 100 times each, the providers made %d and %d tracers, want 1 each", a.made.Load(), b.made.Load())
	}
	if n := testing.AllocsPerRun(100, func() { Tracer(a); Tracer(b) }); n != 0 {
		t.Errorf("Tracer allocates %v times per pair of calls, want 0", n)
	}
}

// TestTracerGivesEachProviderItsOwnTracer: with more providers than the
// cache holds, from many goroutines, each call still gets a tracer of the
// provider asked for.
func TestTracerGivesEachProviderItsOwnTracer(t *testing.T) {
	ps := make([]*counting, 3*tracerSlots)
	for i := range ps {
		ps[i] = newCounting()
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for g := range 4 {
		wg.Go(func() {
			for i := range 200 {
				p := ps[(i*7+g)%len(ps)]
				if got := Tracer(p).(tracerOf).p; got != p {
					errs <- fmt.Errorf("Tracer gave a tracer of %p, want one of %p", got, p)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// uncomparable is a provider of a type that cannot be compared (nor be a
// map key).
type uncomparable struct {
	trace.TracerProvider
	tags []string
}

// holder is of a comparable type, but compared with another of its type
// it panics when it holds a provider that cannot be compared.
type holder struct{ trace.TracerProvider }

// TestTracerTakesAProviderThatCannotBeCompared: such a provider works
// (uncached) instead of panicking when compared with a cached one of its
// type.
func TestTracerTakesAProviderThatCannotBeCompared(t *testing.T) {
	p := uncomparable{TracerProvider: noop.NewTracerProvider(), tags: []string{"x"}}
	for _, tp := range []trace.TracerProvider{p, p, holder{p}, holder{p}, holder{noop.NewTracerProvider()}} {
		if Tracer(tp) == nil {
			t.Fatal("no tracer")
		}
	}
}
