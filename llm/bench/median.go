package bench

import "maps"

// Medians combines the results of repeated runs of one configuration:
// counts (requests, completed, errors, unfinished, migrated, per worker,
// the router's event counts) are totals over the runs, so that no failure
// hides; latencies, rates, hit rates and CPU costs are the medians of the
// runs' values. The runs are kept in Runs. One run is returned as it is.
// The frontend's CPU and the split by part are the medians only when
// every run's profile took a sample (see cpuSplit).
func Medians(runs []*Result) *Result {
	if len(runs) == 1 {
		return runs[0]
	}
	out := &Result{Errors: map[string]int{}, PerWorker: map[string]int{}, ErrorSamples: map[string]string{}, Runs: runs}
	med := func(f func(*Result) float64) float64 { return medianOf(runs, f) }
	pct := func(f func(*Result) *Percentiles) Percentiles {
		var p Percentiles
		p.P50 = med(func(r *Result) float64 { return f(r).P50 })
		p.P90 = med(func(r *Result) float64 { return f(r).P90 })
		p.P99 = med(func(r *Result) float64 { return f(r).P99 })
		p.Mean = med(func(r *Result) float64 { return f(r).Mean })
		p.Max = med(func(r *Result) float64 { return f(r).Max })
		for _, r := range runs {
			p.N += f(r).N
		}
		return p
	}
	for _, r := range runs {
		out.Requests += r.Requests
		out.Completed += r.Completed
		out.Unfinished += r.Unfinished
		out.Migrated.Requests += r.Migrated.Requests
		for k, v := range r.Errors {
			out.Errors[k] += v
		}
		for k, v := range r.PerWorker {
			out.PerWorker[k] += v
		}
		maps.Copy(out.ErrorSamples, r.ErrorSamples)
		if rs := r.KvEvents; rs != nil {
			if out.KvEvents == nil {
				out.KvEvents = &KvEventStats{}
			}
			out.KvEvents.Received += rs.Received
			out.KvEvents.Dropped += rs.Dropped
			out.KvEvents.Gaps += rs.Gaps
			out.KvEvents.Resyncs += rs.Resyncs
		}
	}
	out.TTFT = pct(func(r *Result) *Percentiles { return &r.TTFT })
	out.ITL = pct(func(r *Result) *Percentiles { return &r.ITL })
	out.E2E = pct(func(r *Result) *Percentiles { return &r.E2E })
	out.Migrated.TTFT = pct(func(r *Result) *Percentiles { return &r.Migrated.TTFT })
	out.Migrated.E2E = pct(func(r *Result) *Percentiles { return &r.Migrated.E2E })
	out.DurationS = med(func(r *Result) float64 { return r.DurationS })
	out.RequestsPerS = med(func(r *Result) float64 { return r.RequestsPerS })
	out.OutputTokensPerS = med(func(r *Result) float64 { return r.OutputTokensPerS })
	out.PromptTokensMean = med(func(r *Result) float64 { return r.PromptTokensMean })
	out.OutputTokensMean = med(func(r *Result) float64 { return r.OutputTokensMean })
	out.KvHitRate = med(func(r *Result) float64 { return r.KvHitRate })
	out.ShedFraction = med(func(r *Result) float64 { return r.ShedFraction })
	out.ProcessCPUMsPerRequest = med(func(r *Result) float64 { return r.ProcessCPUMsPerRequest })
	cpuSplit(out, runs)
	return out
}

// medianOf is the median of f over runs.
func medianOf(runs []*Result, f func(*Result) float64) float64 {
	xs := make([]float64, len(runs))
	for i, r := range runs {
		xs[i] = f(r)
	}
	return Median(xs)
}

// cpuSplit sets out's CPU profile sample count, the total over runs, and
// the medians of the runs' frontend CPU and split by part. A run whose
// profile took no sample has no split: counting it as zero would pull
// the medians down with a figure nobody measured, and leaving it out
// would make them medians of fewer runs than the summary says. So with
// such a run the split is unknown.
func cpuSplit(out *Result, runs []*Result) {
	var samples int64
	measured := true
	for _, r := range runs {
		if r.CPUProfileSamples == nil {
			return // not in-process, or no profile: nothing to add up
		}
		samples += *r.CPUProfileSamples
		measured = measured && r.FrontendCPUMsPerRequest != nil
	}
	out.CPUProfileSamples = &samples
	if !measured {
		return
	}
	// A part absent from a run took none of that run's samples: 0 there.
	out.CPUByPart = map[string]float64{}
	for _, r := range runs {
		for part := range r.CPUByPart {
			out.CPUByPart[part] = medianOf(runs, func(r *Result) float64 { return r.CPUByPart[part] })
		}
	}
	fe := medianOf(runs, func(r *Result) float64 { return *r.FrontendCPUMsPerRequest })
	out.FrontendCPUMsPerRequest = &fe
}
