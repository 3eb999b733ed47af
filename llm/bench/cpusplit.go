package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"runtime/pprof"
	"time"

	"github.com/google/pprof/profile"
)

// PartLabel is the pprof label key that names which part of an in-process
// run a goroutine works for (PartFrontend, PartWorkers, PartGenerator,
// PartNATS). Goroutines inherit their creator's labels, so a part started
// inside Part(ctx, name, f) is counted under name.
const PartLabel = "loom.part"

// Parts of an in-process run.
const (
	PartFrontend  = "frontend"
	PartWorkers   = "workers"
	PartGenerator = "generator"
	PartNATS      = "nats"
	// PartOther counts samples with no part label: the garbage
	// collector's background workers and other runtime work.
	PartOther = "other"
)

// Part runs f with the goroutine labelled as part name; goroutines f
// starts inherit the label.
func Part(ctx context.Context, name string, f func(context.Context)) {
	pprof.Do(ctx, pprof.Labels(PartLabel, name), f)
}

// CPUSplit measures the process's CPU time over an interval and splits it
// between the labelled parts by the CPU profile's samples: part p gets
// total × samples(p) / samples(all). getrusage gives the total; the
// profile, sampled at 100 Hz, only the proportions.
type CPUSplit struct {
	cpu0  time.Duration
	prof  bytes.Buffer
	saved io.Writer
}

// StartCPUSplit starts measuring. It fails if a CPU profile is already
// being taken. If save is not nil, the profile is also written there at
// Stop (for `go tool pprof`).
func StartCPUSplit(save io.Writer) (*CPUSplit, error) {
	s := &CPUSplit{saved: save}
	if err := pprof.StartCPUProfile(&s.prof); err != nil {
		return nil, fmt.Errorf("bench: cannot profile the process to split its CPU time: %w", err)
	}
	s.cpu0 = ProcessCPU()
	return s, nil
}

// Stop ends the measurement and returns the total CPU time, each part's
// share of it (PartOther for unlabelled samples) and the number of
// profile samples the shares come from. A run shorter than a sampling
// period (10 ms of CPU) can end with no sample: then parts is nil, as
// the shares are unknown, and only total is a measurement.
func (s *CPUSplit) Stop() (total time.Duration, parts map[string]time.Duration, samples int64, err error) {
	total = ProcessCPU() - s.cpu0
	pprof.StopCPUProfile()
	if s.saved != nil {
		if _, err := s.saved.Write(s.prof.Bytes()); err != nil {
			return total, nil, 0, fmt.Errorf("bench: saving the CPU profile: %w", err)
		}
	}
	p, err := profile.Parse(&s.prof)
	if err != nil {
		return total, nil, 0, fmt.Errorf("bench: reading the CPU profile: %w", err)
	}
	parts, samples = split(total, p)
	return total, parts, samples, nil
}

// split shares total between the parts named by the samples' PartLabel,
// in proportion to their samples; parts is nil when p has no sample.
func split(total time.Duration, p *profile.Profile) (parts map[string]time.Duration, samples int64) {
	count := map[string]int64{}
	for _, smp := range p.Sample {
		part := PartOther
		if v := smp.Label[PartLabel]; len(v) > 0 {
			part = v[0]
		}
		// A Go CPU profile's first value is the sample count.
		count[part] += smp.Value[0]
		samples += smp.Value[0]
	}
	if samples == 0 {
		return nil, 0
	}
	parts = map[string]time.Duration{}
	for part, n := range count {
		parts[part] = time.Duration(float64(total) * float64(n) / float64(samples))
	}
	return parts, samples
}
