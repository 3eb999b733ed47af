//go:build !unix

package bench

// cpuTime reports that this platform's CPU time is not read: the
// benchmarks report no cpu-ns metric.
func cpuTime() int64 { return -1 }
