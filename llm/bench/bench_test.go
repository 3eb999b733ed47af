package bench

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"
	"go.uber.org/goleak"

	"github.com/loomrt/loom/llm/tokenizer"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestSummarizeIsNearestRank(t *testing.T) {
	seq := func(n int) []float64 {
		out := make([]float64, n)
		for i := range out {
			out[i] = float64(n - i) // reversed: Summarize must sort
		}
		return out
	}
	for _, tc := range []struct {
		name          string
		in            []float64
		p50, p90, p99 float64
		mean, max     float64
	}{
		{"no samples give zeros", nil, 0, 0, 0, 0, 0},
		{"one sample is every percentile", []float64{7}, 7, 7, 7, 7, 7},
		{"two samples: p50 is the lower", []float64{2, 1}, 1, 2, 2, 1.5, 2},
		{"1..10", seq(10), 5, 9, 10, 5.5, 10},
		{"1..100", seq(100), 50, 90, 99, 50.5, 100},
		{"1..1000", seq(1000), 500, 900, 990, 500.5, 1000},
		{"101 samples round ranks up", seq(101), 51, 91, 100, 51, 101},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := Summarize(tc.in)
			if p.P50 != tc.p50 || p.P90 != tc.p90 || p.P99 != tc.p99 || math.Abs(p.Mean-tc.mean) > 1e-9 || p.Max != tc.max || p.N != len(tc.in) {
				t.Errorf("Summarize = %+v, want p50 %g p90 %g p99 %g mean %g max %g n %d", p, tc.p50, tc.p90, tc.p99, tc.mean, tc.max, len(tc.in))
			}
		})
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{3, 1, 2}, 2}, {[]float64{4, 1, 3, 2}, 2.5}} {
		in := append([]float64(nil), tc.in...)
		if got := Median(in); got != tc.want {
			t.Errorf("Median(%v) = %g, want %g", tc.in, got, tc.want)
		}
		if len(in) > 0 && in[0] != tc.in[0] {
			t.Errorf("Median reordered its input: %v", in)
		}
	}
}

func readEvents(t *testing.T, in string) ([]string, error) {
	t.Helper()
	r := NewSSEReader(strings.NewReader(in))
	var out []string
	for {
		d, err := r.Next()
		if err != nil {
			return out, err
		}
		out = append(out, string(d))
	}
}

func TestSSEReader(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want []string
		err  error
	}{
		{"one event per blank line", "data: a\n\ndata: b\n\n", []string{"a", "b"}, io.EOF},
		{"CRLF and CR line ends", "data: a\r\n\r\ndata: b\r\rdata: c\n\n", []string{"a", "b", "c"}, io.EOF},
		{"comments and other fields are skipped", ": ping\nevent: x\nid: 3\nretry: 10\ndata: a\n\n", []string{"a"}, io.EOF},
		{"data lines of one event join with newlines", "data: a\ndata: b\n\n", []string{"a\nb"}, io.EOF},
		{"no space after the colon", "data:a\n\n", []string{"a"}, io.EOF},
		{"only the first space is dropped", "data:  a\n\n", []string{" a"}, io.EOF},
		{"an event without data is skipped", "event: x\n\ndata: a\n\n", []string{"a"}, io.EOF},
		{"an empty data field is an event", "data\n\n", []string{""}, io.EOF},
		{"an event cut off is an unexpected EOF", "data: a\n\ndata: b\n", []string{"a"}, io.ErrUnexpectedEOF},
		{"a line cut off is an unexpected EOF", "data: a", nil, io.ErrUnexpectedEOF},
		{"an empty stream is EOF", "", nil, io.EOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readEvents(t, tc.in)
			if !errors.Is(err, tc.err) || strings.Join(got, "|") != strings.Join(tc.want, "|") || len(got) != len(tc.want) {
				t.Errorf("events %q, %v; want %q, %v", got, err, tc.want, tc.err)
			}
		})
	}
}

func TestSSEReaderBoundsAnEvent(t *testing.T) {
	big := "data: " + strings.Repeat("x", MaxEventSize/2) + "\n"
	_, err := readEvents(t, big+big+big+"\n")
	if !errors.Is(err, ErrEventTooLarge) {
		t.Errorf("an event of 1.5 MiB gave %v, want ErrEventTooLarge", err)
	}
	_, err = readEvents(t, strings.Repeat("y", MaxEventSize+10))
	if !errors.Is(err, ErrEventTooLarge) {
		t.Errorf("a line of over 1 MiB gave %v, want ErrEventTooLarge", err)
	}
}

// FuzzSSEReader feeds arbitrary bytes: the reader never panics, never
// returns more than MaxEventSize, and reads back events that were
// written as single data lines.
func FuzzSSEReader(f *testing.F) {
	f.Add([]byte("data: {\"choices\":[]}\n\ndata: [DONE]\n\n"))
	f.Add([]byte("data: a\r\n\r\n: c\rdata:b\ndata:\n\n"))
	f.Add([]byte("event: x\nid\n\n\n\ndata"))
	f.Fuzz(func(t *testing.T, in []byte) {
		r := NewSSEReader(bytes.NewReader(in))
		for range len(in) + 1 {
			d, err := r.Next()
			if err != nil {
				break
			}
			if len(d) > MaxEventSize {
				t.Fatalf("event of %d bytes", len(d))
			}
		}
		// The reader agrees with a plain reading of the standard.
		got, gotErr := readEvents(t, string(in))
		want, wantErr := referenceEvents(in)
		if gotErr != wantErr || strings.Join(got, "\x00") != strings.Join(want, "\x00") || len(got) != len(want) {
			t.Fatalf("%q: got %q, %v; the standard says %q, %v", in, got, gotErr, want, wantErr)
		}
		// Round trip: each line of the input (without CR) as one event.
		var enc bytes.Buffer
		var sent []string
		for p := range strings.SplitSeq(strings.ReplaceAll(string(in), "\r", ""), "\n") {
			enc.WriteString("data: " + p + "\n\n")
			sent = append(sent, p)
		}
		got, err := readEvents(t, enc.String())
		if err != io.EOF || strings.Join(got, "\n") != strings.Join(sent, "\n") || len(got) != len(sent) {
			t.Fatalf("round trip of %q: got %q, %v", sent, got, err)
		}
	})
}

// referenceEvents reads events as the HTML standard describes, slowly:
// split into lines at CRLF, LF or CR; a last line without an end is cut
// off.
func referenceEvents(in []byte) ([]string, error) {
	var lines []string
	cur := []byte{}
	complete := true
	for i := 0; i < len(in); i++ {
		switch in[i] {
		case '\r':
			lines = append(lines, string(cur))
			cur = cur[:0]
			if i+1 < len(in) && in[i+1] == '\n' {
				i++
			}
		case '\n':
			lines = append(lines, string(cur))
			cur = cur[:0]
		default:
			cur = append(cur, in[i])
		}
	}
	if len(cur) > 0 {
		complete = false
	}
	var out []string
	var data string
	has := false
	for _, l := range lines {
		if l == "" {
			if has {
				out = append(out, data)
			}
			data, has = "", false
			continue
		}
		if l[0] == ':' {
			continue
		}
		field, value, _ := strings.Cut(l, ":")
		value = strings.TrimPrefix(value, " ")
		if field != "data" {
			continue
		}
		if has {
			data += "\n"
		}
		data += value
		has = true
	}
	if has || !complete {
		return out, io.ErrUnexpectedEOF
	}
	return out, io.EOF
}

func TestParseTrace(t *testing.T) {
	good := `{"timestamp": 0, "input_length": 100, "output_length": 10, "prefix_group": 2}

{"timestamp": 15.5, "input_length": 50, "output_length": 5, "hash_ids": [1, 2]}
`
	recs, err := ParseTrace(strings.NewReader(good), "t.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	want := []TraceRecord{{0, 100, 10, 2}, {15, 50, 5, -1}}
	if len(recs) != 2 || recs[0] != want[0] || recs[1] != want[1] {
		t.Fatalf("ParseTrace = %+v, want %+v", recs, want)
	}
	for _, tc := range []struct {
		name, in, want string
	}{
		{"not JSON", "{\"timestamp\": 0,\n", "t.jsonl line 1: unexpected end of JSON input"},
		{"no timestamp", `{"input_length": 1, "output_length": 1}`, "line 1: no timestamp"},
		{"no input length", `{"timestamp": 1, "output_length": 1}`, "line 1: no input_length"},
		{"no output length", `{"timestamp": 1, "input_length": 1}`, "line 1: no output_length"},
		{"negative timestamp", `{"timestamp": -1, "input_length": 1, "output_length": 1}`, "timestamp -1 is not a non-negative number"},
		{"zero input", `{"timestamp": 1, "input_length": 0, "output_length": 1}`, "input_length 0 is outside 1..1048576"},
		{"huge output", `{"timestamp": 1, "input_length": 1, "output_length": 99999999}`, "output_length 99999999 is outside"},
		{"a string length", `{"timestamp": 1, "input_length": "5", "output_length": 1}`, "line 1: json: cannot unmarshal string"},
		{"unsorted", "{\"timestamp\": 5, \"input_length\": 1, \"output_length\": 1}\n{\"timestamp\": 4, \"input_length\": 1, \"output_length\": 1}", "line 2: timestamp 4 is before the previous line's 5 (sort the trace by timestamp)"},
		{"empty", "\n\n", "t.jsonl has no records"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseTrace(strings.NewReader(tc.in), "t.jsonl")
			if !errors.Is(err, ErrBadTrace) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ParseTrace error = %v, want ErrBadTrace containing %q", err, tc.want)
			}
		})
	}
	if _, err := LoadTrace(t.TempDir() + "/missing.jsonl"); err == nil || !strings.Contains(err.Error(), "missing.jsonl") {
		t.Errorf("LoadTrace of a missing file = %v, want an error naming it", err)
	}
}

func TestRunPrefixWorkloadClosedLoop(t *testing.T) {
	s := newSSEServer(t)
	wl, err := Prefix(PrefixConfig{Groups: 2, PrefixTokens: 30, UserTokens: 5, OutputTokens: 4, Turns: 3, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	var progress []Progress
	res, err := Run(context.Background(), Config{
		URL: s.URL, Workload: wl, Requests: 40, Concurrency: 4,
		Progress: func(p Progress) { progress = append(progress, p) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests != 40 || res.Completed != 40 || len(res.Errors) != 0 || res.Unfinished != 0 {
		t.Fatalf("result %+v: want 40 requests completed, no errors", res)
	}
	if res.TTFT.N != 40 || res.E2E.N != 40 || res.ITL.N != 40*3 || res.TTFT.P50 <= 0 || res.E2E.P99 < res.TTFT.P99 {
		t.Errorf("latencies: ttft %+v itl %+v e2e %+v", res.TTFT, res.ITL, res.E2E)
	}
	if res.OutputTokensMean != 4 || res.RequestsPerS <= 0 || res.OutputTokensPerS <= 0 {
		t.Errorf("output tokens mean %g, %g req/s, %g tok/s; want 4 tokens and positive rates", res.OutputTokensMean, res.RequestsPerS, res.OutputTokensPerS)
	}
	// Every request but the first of each group finds its system
	// prompt cached; the server counts words as tokens.
	if res.KvHitRate <= 0.3 || res.KvHitRate >= 1 {
		t.Errorf("kv hit rate %g, want the shared prefixes to show", res.KvHitRate)
	}
	if res.PerWorker["w0"]+res.PerWorker["w1"] != 40 || len(res.PerWorker) != 2 {
		t.Errorf("per worker %v, want 40 requests over w0 and w1", res.PerWorker)
	}
	if res.Migrated.Requests != 10 || res.Migrated.TTFT.N != 10 {
		t.Errorf("migrated %+v, want the 10 requests whose trailer said 1", res.Migrated)
	}
	if n := len(progress); n == 0 || progress[n-1].Done != 40 {
		t.Errorf("progress %+v, want a last report of 40 done", progress)
	}
	// Conversations resend their history: a third turn carries the
	// system prompt, two user turns with the answer between them, and a
	// third user turn.
	third := 0
	for _, req := range s.requests() {
		if len(req.Messages) == 6 {
			third++
			roles := ""
			for _, m := range req.Messages {
				roles += m.Role[:1]
			}
			if roles != "suauau" || req.Messages[2].Content != "t0 t1 t2 t3 " {
				t.Fatalf("third turn %q with %+v, want system, user, assistant... with the answer", roles, req.Messages)
			}
		}
		if len(req.Messages) > 6 {
			t.Fatalf("a conversation went past 3 turns: %d messages", len(req.Messages))
		}
	}
	if third == 0 {
		t.Error("no conversation reached its third turn")
	}
}

func TestRunOpenLoopCountsShedRequests(t *testing.T) {
	s := newSSEServer(t)
	s.status = func(n int64) int {
		if n%2 == 0 {
			return 429
		}
		if n%5 == 0 {
			return 529
		}
		return 0
	}
	wl, _ := Unique(UniqueConfig{InputTokens: 8, OutputTokens: 2})
	res, err := Run(context.Background(), Config{URL: s.URL, Model: "mock-model", Workload: wl, Requests: 20, Rate: 500})
	if err != nil {
		t.Fatal(err)
	}
	// Of requests 1..20: 10 even ones get 429, 5, 15 get 529.
	if res.Errors[ErrKindShed429] != 10 || res.Errors[ErrKindShed529] != 2 || res.Completed != 8 || res.ShedFraction != 0.6 {
		t.Errorf("errors %v, completed %d, shed %g; want 10 x 429, 2 x 529, 8 completed, shed 0.6", res.Errors, res.Completed, res.ShedFraction)
	}
	if !strings.Contains(res.ErrorSamples[ErrKindShed429], "overloaded") {
		t.Errorf("error sample %q, want the server's message", res.ErrorSamples[ErrKindShed429])
	}
}

func TestRunCountsAHungRequestUnfinished(t *testing.T) {
	s := newSSEServer(t)
	s.hang = func(n int64) bool { return n == 3 }
	wl, _ := Unique(UniqueConfig{InputTokens: 8, OutputTokens: 2})
	res, err := Run(context.Background(), Config{URL: s.URL, Workload: wl, Requests: 6, Concurrency: 2, RequestTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.Completed != 5 || res.Unfinished != 1 || len(res.Errors) != 0 {
		t.Errorf("completed %d, unfinished %d, errors %v; want 5, 1 and none", res.Completed, res.Unfinished, res.Errors)
	}
}

func TestRunTakesTheBaseURLWithOrWithoutV1(t *testing.T) {
	s := newSSEServer(t)
	for _, url := range []string{s.URL, s.URL + "/", s.URL + "/v1", s.URL + "/v1/"} {
		wl, _ := Unique(UniqueConfig{InputTokens: 4, OutputTokens: 2})
		res, err := Run(context.Background(), Config{URL: url, Workload: wl, Requests: 2, Concurrency: 1})
		if err != nil || res.Completed != 2 {
			t.Errorf("URL %s: %v, %+v", url, err, res)
		}
	}
}

func TestRunClassifiesBrokenStreams(t *testing.T) {
	s := newSSEServer(t)
	s.broken = func(n int64) string {
		switch n {
		case 1:
			return "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n" // no [DONE]
		case 2:
			return "data: {not json\n\n"
		case 3:
			return "data: {\"error\":{\"message\":\"worker failed\",\"type\":\"server_error\"}}\n\n"
		}
		return ""
	}
	wl, _ := Unique(UniqueConfig{InputTokens: 4, OutputTokens: 2})
	res, err := Run(context.Background(), Config{URL: s.URL, Workload: wl, Requests: 4, Concurrency: 1})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{ErrKindNoDone: 1, ErrKindStream: 1, ErrKindServer: 1}
	if len(res.Errors) != 3 || res.Errors[ErrKindNoDone] != 1 || res.Errors[ErrKindStream] != 1 || res.Errors[ErrKindServer] != 1 || res.Completed != 1 {
		t.Errorf("errors %v, completed %d; want %v and 1 completed", res.Errors, res.Completed, want)
	}
	if !strings.Contains(res.ErrorSamples[ErrKindServer], "worker failed") {
		t.Errorf("error sample %q, want the server's message", res.ErrorSamples[ErrKindServer])
	}
}

func TestRunCountsConnectFailures(t *testing.T) {
	s := newSSEServer(t)
	url := s.URL
	s.Close() // nothing listens there now
	wl, _ := Unique(UniqueConfig{InputTokens: 4, OutputTokens: 2})
	res, err := Run(context.Background(), Config{URL: url, Model: "mock-model", Workload: wl, Requests: 3, Concurrency: 1})
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors[ErrKindConnect] != 3 || res.Completed != 0 {
		t.Errorf("errors %v, completed %d; want 3 connect errors", res.Errors, res.Completed)
	}
}

func TestRunReplaysATrace(t *testing.T) {
	s := newSSEServer(t)
	recs := []TraceRecord{{0, 40, 3, 1}, {5, 20, 2, 1}, {10, 30, 1, -1}, {30, 25, 2, 1}}
	wl := Trace(recs, TraceConfig{PrefixTokens: 16, Speed: 1})
	start := time.Now()
	res, err := Run(context.Background(), Config{URL: s.URL, Workload: wl, Requests: 100})
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests != 4 || res.Completed != 4 {
		t.Fatalf("result %+v, want the trace's 4 requests completed", res)
	}
	if el := time.Since(start); el < 30*time.Millisecond {
		t.Errorf("the trace's last request is at 30 ms, the run took %v", el)
	}
	words := map[int]bool{}
	cachedGroup := 0
	for _, req := range s.requests() {
		n := 0
		for _, m := range req.Messages {
			n += len(strings.Fields(m.Content))
		}
		words[n] = true
		if req.Messages[0].Role == "system" {
			cachedGroup++
		}
	}
	for _, r := range recs {
		if !words[r.InputLength] {
			t.Errorf("no request had the %d prompt words of a trace record; saw %v", r.InputLength, words)
		}
	}
	if cachedGroup != 3 {
		t.Errorf("%d requests opened with a group's system prompt, want 3", cachedGroup)
	}
	if res.KvHitRate <= 0 {
		t.Errorf("kv hit rate %g: group 1's 16-word prefix repeats", res.KvHitRate)
	}
}

func TestRunRefusesBadConfigs(t *testing.T) {
	wl, _ := Unique(UniqueConfig{InputTokens: 1, OutputTokens: 1})
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no URL", Config{Workload: wl, Requests: 1}, "no server URL"},
		{"no requests", Config{URL: "http://x", Workload: wl}, "requests = 0"},
		{"both loops", Config{URL: "http://x", Workload: wl, Requests: 1, Concurrency: 1, Rate: 1}, "choose closed loop or open loop"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Run(context.Background(), tc.cfg)
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Run = %v, want ErrConfig with %q", err, tc.want)
			}
		})
	}
	if _, err := Prefix(PrefixConfig{Groups: 1, PrefixTokens: 1, UserTokens: 1, OutputTokens: 1}); err == nil || !strings.Contains(err.Error(), "turns = 0") {
		t.Errorf("a prefix workload of 0 turns: %v, want an error naming turns", err)
	}
}

func TestVocabularyWordsAreOneTokenEach(t *testing.T) {
	tk := tokenizer.Default()
	for _, w := range vocabulary {
		if ids := tk.Encode(nil, " "+w); len(ids) != 1 {
			t.Errorf("%q is %d tokens for Loom's tokenizer, want 1 (drop it from the vocabulary)", w, len(ids))
		}
	}
	if len(vocabulary) < 150 {
		t.Errorf("vocabulary of %d words: prompts repeat too soon", len(vocabulary))
	}
}

func TestMediansTotalCountsAndTakeMedianRates(t *testing.T) {
	cpu := func(v float64) *float64 { return &v }
	runs := []*Result{
		{Requests: 10, Completed: 9, Errors: map[string]int{"http_429": 1}, RequestsPerS: 5, TTFT: Percentiles{P50: 30, N: 9}, KvHitRate: 0.5, FrontendCPUMsPerRequest: cpu(3), PerWorker: map[string]int{"a": 9}},
		{Requests: 10, Completed: 10, Errors: map[string]int{}, RequestsPerS: 7, TTFT: Percentiles{P50: 10, N: 10}, KvHitRate: 0.7, FrontendCPUMsPerRequest: cpu(1), PerWorker: map[string]int{"a": 4, "b": 6}},
		{Requests: 10, Completed: 8, Unfinished: 1, Errors: map[string]int{"http_429": 1}, RequestsPerS: 6, TTFT: Percentiles{P50: 20, N: 8}, KvHitRate: 0.6, FrontendCPUMsPerRequest: cpu(2), PerWorker: map[string]int{"b": 8}},
	}
	runs[1].KvEvents = &KvEventStats{Received: 100, Dropped: 1, Gaps: 1, Resyncs: 3}
	runs[2].KvEvents = &KvEventStats{Received: 50, Resyncs: 2}
	for i, r := range runs {
		n := int64(10 + i)
		r.CPUProfileSamples = &n
		r.CPUByPart = map[string]float64{PartFrontend: *r.FrontendCPUMsPerRequest}
	}
	runs[2].CPUByPart[PartNATS] = 1 // only the last run's profile saw NATS
	m := Medians(runs)
	if m.Requests != 30 || m.Completed != 27 || m.Unfinished != 1 || m.Errors["http_429"] != 2 || m.PerWorker["a"] != 13 || m.PerWorker["b"] != 14 {
		t.Errorf("counts %+v: want totals over the runs", m)
	}
	if ev := m.KvEvents; ev == nil || *ev != (KvEventStats{Received: 150, Dropped: 1, Gaps: 1, Resyncs: 5}) {
		t.Errorf("kv_events %+v: want the totals of the runs that report them", ev)
	}
	if m.RequestsPerS != 6 || m.TTFT.P50 != 20 || m.TTFT.N != 27 || m.KvHitRate != 0.6 || *m.FrontendCPUMsPerRequest != 2 || len(m.Runs) != 3 {
		t.Errorf("medians %+v: want 6 req/s, ttft p50 20, kv 0.6, cpu 2, 3 runs kept", m)
	}
	if m.CPUProfileSamples == nil || *m.CPUProfileSamples != 33 || m.CPUByPart[PartFrontend] != 2 || m.CPUByPart[PartNATS] != 0 || len(m.CPUByPart) != 2 {
		t.Errorf("cpu_profile_samples %v, by part %v: want 33 samples, frontend 2 and nats 0 (none in 2 runs of 3)", m.CPUProfileSamples, m.CPUByPart)
	}
	if Medians(runs[:1]) != runs[0] {
		t.Error("the medians of one run are not that run")
	}

	// A run whose profile took no sample has no frontend figure: the
	// medians have none either, rather than one that counts it as 0.
	none := int64(0)
	runs[1].CPUProfileSamples, runs[1].FrontendCPUMsPerRequest, runs[1].CPUByPart = &none, nil, nil
	m = Medians(runs)
	if m.FrontendCPUMsPerRequest != nil || m.CPUByPart != nil || m.CPUProfileSamples == nil || *m.CPUProfileSamples != 22 {
		t.Errorf("one run without a sample: frontend %v, by part %v, samples %v; want none, none and 22", m.FrontendCPUMsPerRequest, m.CPUByPart, m.CPUProfileSamples)
	}
}

func TestCPUSplitAttributesLabelledWork(t *testing.T) {
	s, err := StartCPUSplit(nil)
	if err != nil {
		t.Fatal(err)
	}
	spin := func(d time.Duration) {
		x := 0
		for start := ProcessCPU(); ProcessCPU()-start < d; {
			for i := range 100000 {
				x += i
			}
		}
		_ = x
	}
	Part(context.Background(), PartFrontend, func(context.Context) { spin(300 * time.Millisecond) })
	Part(context.Background(), PartGenerator, func(context.Context) { spin(100 * time.Millisecond) })
	total, parts, samples, err := s.Stop()
	if err != nil {
		t.Fatal(err)
	}
	if total < 400*time.Millisecond {
		t.Fatalf("total CPU %v after spinning 400ms", total)
	}
	if samples == 0 {
		t.Fatalf("no profile sample in %v of CPU", total)
	}
	// The profile samples at 100 Hz: the frontend's share is about 3/4.
	if f := float64(parts[PartFrontend]) / float64(total); f < 0.5 || f > 0.95 {
		t.Errorf("frontend share %.2f of %v (parts %v), want about 0.75", f, total, parts)
	}
	if parts[PartGenerator] == 0 {
		t.Errorf("the generator's spin got no share: %v", parts)
	}
}

func TestCPUSplitWithNoSampleLeavesThePartsUnknown(t *testing.T) {
	label := func(part string) map[string][]string { return map[string][]string{PartLabel: {part}} }
	sampled := &profile.Profile{Sample: []*profile.Sample{
		{Value: []int64{3, 30e6}, Label: label(PartFrontend)},
		{Value: []int64{1, 10e6}},
	}}
	parts, samples := split(80*time.Millisecond, sampled)
	if samples != 4 || parts[PartFrontend] != 60*time.Millisecond || parts[PartOther] != 20*time.Millisecond {
		t.Errorf("3 frontend samples and 1 unlabelled of 80ms: parts %v, %d samples; want 60ms, 20ms, 4", parts, samples)
	}
	// A run shorter than the 10 ms sampling period: the total is still
	// measured, the split is not, and a map of zeros would say it was.
	if parts, samples := split(8*time.Millisecond, &profile.Profile{}); parts != nil || samples != 0 {
		t.Errorf("no sample: parts %v, %d samples; want nil and 0", parts, samples)
	}
}
