package bench_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/loomrt/loom/llm/bench"
)

// A server that streams two tokens to every chat request stands in for
// an OpenAI-compatible one here; point URL at a real server instead.
func ExampleRun() {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for _, tok := range []string{"Hello", " there"} {
			fmt.Fprintf(w, "data: {\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":%q},\"finish_reason\":null}]}\n\n", tok)
		}
		fmt.Fprint(w, "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":40,\"completion_tokens\":2,\"prompt_tokens_details\":{\"cached_tokens\":32}}}\n\n")
		fmt.Fprint(w, "data: [DONE]\n\n")
	}))
	defer srv.Close()

	wl, err := bench.Prefix(bench.PrefixConfig{Groups: 2, PrefixTokens: 32, UserTokens: 8, OutputTokens: 2, Turns: 2})
	if err != nil {
		panic(err)
	}
	res, err := bench.Run(context.Background(), bench.Config{
		URL: srv.URL, Model: "mock-model", Workload: wl, Requests: 20, Concurrency: 4,
	})
	if err != nil {
		panic(err)
	}
	fmt.Printf("%d completed, %d errors, %d unfinished, kv hit rate %.2f, %d ITL gaps\n",
		res.Completed, len(res.Errors), res.Unfinished, res.KvHitRate, res.ITL.N)
	// Output: 20 completed, 0 errors, 0 unfinished, kv hit rate 0.80, 20 ITL gaps
}

func ExampleSummarize() {
	p := bench.Summarize([]float64{12, 10, 11, 50, 13, 10, 12, 11, 10, 200})
	fmt.Printf("p50 %g p90 %g p99 %g max %g\n", p.P50, p.P90, p.P99, p.Max)
	// Output: p50 11 p90 50 p99 200 max 200
}
