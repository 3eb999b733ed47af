package metrics

import (
	"math"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
)

// The counts every request updates (its outcome, items, bytes, duration,
// the requests in flight) are striped: an update adds to one of several
// stripes, each on cache lines of its own (see pick for which), and a
// collector sums the stripes at scrape time. With one shared word per
// count, requests on many cores would all write the same cache lines,
// about fifteen times per request; a prometheus.Counter or Histogram is
// such a word (a histogram's sum a compare-and-swap loop on a float).

// stripes is how many stripes a striped count has: a power of two at
// least GOMAXPROCS when the Metrics were made, at most 64.
func stripes() int {
	n := 1
	for n < runtime.GOMAXPROCS(0) && n < 64 {
		n <<= 1
	}
	return n
}

// pick returns a stripe index below n, a power of two: a hash of the
// calling goroutine's stack, so that a goroutine keeps to one stripe and
// goroutines on other cores spread over the others, for the price of a
// multiplication (a random pick per update, even math/rand/v2's per-thread
// one, cost a unary call 0.1 µs in all). Stacks are aligned to their size,
// at least 2 KiB, so the bits above it tell goroutines apart.
func pick(n int) int {
	var here byte
	h := uint64(uintptr(unsafe.Pointer(&here))>>11) * 0x9E3779B97F4A7C15
	return int(h>>32) & (n - 1)
}

// cacheLine is the size stripes are padded to.
const cacheLine = 64

type paddedInt struct {
	v atomic.Int64
	_ [cacheLine - 8]byte
}

// Counter is a striped counter.
type Counter struct{ s []paddedInt }

func newCounter(n int) *Counter { return &Counter{s: make([]paddedInt, n)} }

// Inc adds 1.
func (c *Counter) Inc() { c.s[pick(len(c.s))].v.Add(1) }

// Add adds n.
func (c *Counter) Add(n int) { c.s[pick(len(c.s))].v.Add(int64(n)) }

// Value returns the sum of the stripes.
func (c *Counter) Value() int64 {
	var sum int64
	for i := range c.s {
		sum += c.s[i].v.Load()
	}
	return sum
}

// Gauge is a striped gauge: Add(1) when something starts, Add(-1) when it
// ends, on any stripe.
type Gauge = Counter

func newGauge(n int) *Gauge { return newCounter(n) }

// The upper bounds of the request duration histograms: 100 µs × 4^i, 100
// µs to 26.2 s. bucketBounds are the "le" labels, the same floats as
// before the histograms were striped; durationBuckets the same bounds in
// nanoseconds, which Observe compares.
const numBuckets = 10

var (
	bucketBounds    = prometheus.ExponentialBuckets(0.0001, 4, numBuckets)
	durationBuckets = func() []time.Duration {
		b := make([]time.Duration, len(bucketBounds))
		for i, s := range bucketBounds {
			b[i] = time.Duration(math.Round(s * 1e9))
		}
		return b
	}()
)

// histStripe is one stripe of a Histogram: a count per bucket (the last
// for durations above every bound) and the sum in nanoseconds.
type histStripe struct {
	counts [numBuckets + 1]atomic.Uint64
	sum    atomic.Int64
	_      [2*cacheLine - (numBuckets+2)*8]byte
}

// Histogram is a striped histogram of durations over durationBuckets.
type Histogram struct{ s []histStripe }

func newHistogram(n int) *Histogram { return &Histogram{s: make([]histStripe, n)} }

// Observe records d.
func (h *Histogram) Observe(d time.Duration) {
	i := 0
	for i < len(durationBuckets) && d > durationBuckets[i] {
		i++
	}
	s := &h.s[pick(len(h.s))]
	s.counts[i].Add(1)
	s.sum.Add(int64(d))
}

// snapshot returns the count, the sum in seconds and the cumulative count
// at each bound, by bound in seconds, for a constant prometheus histogram.
// The count is the sum of the buckets, so that the histogram is
// consistent however updates interleave with the reading.
func (h *Histogram) snapshot() (count uint64, sum float64, cumulative map[float64]uint64) {
	var counts [numBuckets + 1]uint64
	var ns int64
	for i := range h.s {
		for j := range counts {
			counts[j] += h.s[i].counts[j].Load()
		}
		ns += h.s[i].sum.Load()
	}
	cumulative = make(map[float64]uint64, len(durationBuckets))
	for j, b := range bucketBounds {
		count += counts[j]
		cumulative[b] = count
	}
	count += counts[len(durationBuckets)]
	return count, time.Duration(ns).Seconds(), cumulative
}
