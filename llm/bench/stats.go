package bench

import (
	"math"
	"slices"
)

// Percentiles summarises a set of samples in milliseconds. Percentiles
// are nearest-rank: P(q) is the smallest sample with at least q of all
// samples at or below it, so every reported value is one that was seen.
type Percentiles struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	Mean float64 `json:"mean"`
	Max  float64 `json:"max"`
	// N is the number of samples.
	N int `json:"n"`
}

// Summarize returns the percentiles of samples, sorting samples in place.
// No samples give all zeros.
func Summarize(samples []float64) Percentiles {
	if len(samples) == 0 {
		return Percentiles{}
	}
	slices.Sort(samples)
	var sum float64
	for _, v := range samples {
		sum += v
	}
	return Percentiles{
		P50:  nearestRank(samples, 0.50),
		P90:  nearestRank(samples, 0.90),
		P99:  nearestRank(samples, 0.99),
		Mean: sum / float64(len(samples)),
		Max:  samples[len(samples)-1],
		N:    len(samples),
	}
}

// nearestRank returns the q-quantile of sorted samples: the value at rank
// ceil(q*n), counting ranks from 1.
func nearestRank(sorted []float64, q float64) float64 {
	r := int(math.Ceil(q * float64(len(sorted))))
	r = max(1, min(r, len(sorted)))
	return sorted[r-1]
}

// Median returns the median of xs (the mean of the two middle values for
// an even count) without changing xs; 0 for none.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
