package kvrouter

import (
	"slices"
	"testing"
	"time"

	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/llm/mocker"
)

// BenchmarkTTFT measures the time to first token through the kv router
// with 4 mock workers at their default speed (20µs per uncached prompt
// token, 5ms decode steps), for prompts of a 2,048-token shared prefix
// plus a 64-token question: warm (the prefix is cached on a worker, and
// the router sends the request there) and cold (every prefix is new).
// Requests go one at a time over the TCP request plane.
func BenchmarkTTFT(b *testing.B) {
	for _, mode := range []string{"warm", "cold"} {
		b.Run(mode, func(b *testing.B) {
			s := newSystem(b, 4, mocker.Config{})
			r := s.router(KV, Config{})
			c := s.client(r, 4)
			synced(b, r, s.cluster)
			ctx := testutil.Timeout(b, 10*time.Minute)
			system := prompt(1, 2048)
			if mode == "warm" {
				if res := send(ctx, c, r, "prime", system, 1); res.err != nil {
					b.Fatal(res.err)
				}
				synced(b, r, s.cluster)
			}
			var total time.Duration
			cached := 0
			b.ResetTimer()
			for i := range b.N {
				p := system
				if mode == "cold" {
					p = prompt(uint32(1000+i), 2048)
				}
				res := send(ctx, c, r, "q", append(slices.Clone(p), prompt(uint32(5000+i), 64)...), 1)
				if res.err != nil {
					b.Fatal(res.err)
				}
				total += res.ttft
				cached += res.cached
			}
			b.ReportMetric(float64(total.Microseconds())/float64(b.N)/1000, "ttft_ms")
			b.ReportMetric(float64(cached)/float64(b.N), "cached_tokens")
		})
	}
}
