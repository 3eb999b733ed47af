package dashboard

import (
	"bytes"
	"math"
	"strings"
	"testing"
	"unicode/utf8"
)

const exposition = `# HELP loom_requests_total Requests served, by endpoint and outcome code.
# TYPE loom_requests_total counter
loom_requests_total{code="ok",component="greeter",endpoint="greet",namespace="hello"} 90
loom_requests_total{code="error",component="greeter",endpoint="greet",namespace="hello"} 6
loom_requests_total{code="panic",component="greeter",endpoint="greet",namespace="hello"} 1
loom_requests_total{code="refused",component="greeter",endpoint="greet",namespace="hello"} 3
# TYPE loom_requests_in_flight gauge
loom_requests_in_flight{component="greeter",endpoint="greet",namespace="hello"} 4
# TYPE loom_request_duration_seconds histogram
loom_request_duration_seconds_bucket{component="greeter",endpoint="greet",namespace="hello",le="0.01"} 50
loom_request_duration_seconds_bucket{component="greeter",endpoint="greet",namespace="hello",le="0.1"} 90
loom_request_duration_seconds_bucket{component="greeter",endpoint="greet",namespace="hello",le="1"} 100
loom_request_duration_seconds_bucket{component="greeter",endpoint="greet",namespace="hello",le="+Inf"} 100
loom_request_duration_seconds_sum{component="greeter",endpoint="greet",namespace="hello"} 4
loom_request_duration_seconds_count{component="greeter",endpoint="greet",namespace="hello"} 100
# TYPE loom_events_published_total counter
loom_events_published_total{subject="namespace.dynamo.component.backend.kv_events",transport="nats"} 12
# TYPE loom_events_lost_total counter
loom_events_lost_total{pattern="namespace.dynamo.*.kv_events",transport="nats"} 5
# TYPE loom_events_reordered_total counter
loom_events_reordered_total{pattern="namespace.dynamo.*.kv_events",transport="nats"} 1
# TYPE loom_llm_ttft_seconds histogram
loom_llm_ttft_seconds_bucket{le="0.1"} 3
loom_llm_ttft_seconds_bucket{le="+Inf"} 4
loom_llm_ttft_seconds_sum 0.5
loom_llm_ttft_seconds_count 4
`

func TestParseMetrics(t *testing.T) {
	s, err := parseMetrics(strings.NewReader(exposition), DefaultServingPrefixes)
	if err != nil {
		t.Fatal(err)
	}
	e := s.endpoints["hello/greeter/greet"]
	if e == nil || e.total() != 100 || e.failed() != 7 || e.inFlight != 4 || e.refused != 3 {
		t.Fatalf("endpoint counts %+v", e)
	}
	// 50 of 100 at or below 10ms: the median is the 10ms bound; the 99th
	// is 9/10 of the way from 0.1 to 1.
	if q := e.duration.quantile(0.5); q != 0.01 {
		t.Errorf("p50 %v, want 0.01", q)
	}
	if q := e.duration.quantile(0.99); math.Abs(q-0.91) > 1e-9 {
		t.Errorf("p99 %v, want 0.91", q)
	}
	if p := s.events.pubs["nats namespace.dynamo.component.backend.kv_events"]; p == nil || p.published != 12 {
		t.Errorf("publisher counts %+v", s.events.pubs)
	}
	if c := s.events.subs["nats namespace.dynamo.*.kv_events"]; c == nil || c.lost != 5 || c.reordered != 1 {
		t.Errorf("subscription counts %+v", s.events.subs)
	}
	if f := s.serving["loom_llm_ttft_seconds"]; f == nil || f.kind != "histogram" || len(f.series) != 1 || f.series[0].hist.count != 4 {
		t.Errorf("serving families %+v", s.serving)
	}
	if _, err := parseMetrics(strings.NewReader("loom_requests_total{code=\"ok\" 1\n"), nil); err == nil {
		t.Error("a malformed exposition parsed")
	}
}

func TestHistogramWindow(t *testing.T) {
	h := func(counts ...float64) histogram {
		return histogram{bounds: []float64{0.001, 0.01, math.Inf(1)}, counts: counts, count: counts[len(counts)-1]}
	}
	d := h(10, 20, 20).sub(h(10, 10, 10))
	// The window holds 10 observations, all between 1ms and 10ms.
	if d.count != 10 || math.Abs(d.quantile(0.5)-0.0055) > 1e-12 {
		t.Errorf("window %+v p50 %v", d, d.quantile(0.5))
	}
	if q := (histogram{}).quantile(0.5); !math.IsNaN(q) {
		t.Errorf("empty histogram p50 %v, want NaN", q)
	}
	// Everything above the last finite bound: the bound is the estimate.
	if q := h(0, 0, 5).quantile(0.99); q != 0.01 {
		t.Errorf("+Inf bucket p99 %v, want 0.01", q)
	}
	// A restarted process (counts went down) starts the window afresh.
	if r := h(1, 1, 1).sub(h(5, 5, 5)); r.count != 1 {
		t.Errorf("after restart %+v", r)
	}
}

// FuzzParseMetrics: scraped bytes never panic the parser, and what parses
// has no negative in-flight count from the parser itself.
func FuzzParseMetrics(f *testing.F) {
	f.Add([]byte(exposition))
	f.Add([]byte("# TYPE x histogram\nx_bucket{le=\"1\"} 1\nx_count 1\n"))
	f.Add([]byte("loom_requests_in_flight{namespace=\"a\"} NaN\n"))
	f.Add([]byte("loom_build_info{version=\"v1\",revision=\"ab\",go_version=\"go1\"} 1\nloom_build_info{version=\"v2\"} 1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := parseMetrics(bytes.NewReader(data), []string{"loom_", "x"})
		if err != nil {
			return
		}
		for _, e := range s.endpoints {
			_ = e.duration.quantile(0.99)
			_ = e.duration.sub(e.firstResponse).quantile(0.5)
		}
		for _, f := range s.serving {
			for _, sr := range f.series {
				_ = sr.hist.quantile(0.5)
			}
		}
		for _, l := range []string{s.build.Version, s.build.Revision, s.build.GoVersion} {
			if len(l) > maxBuildLabel || !utf8.ValidString(l) {
				t.Fatalf("build label %q: %d bytes, valid UTF-8 %v", l, len(l), utf8.ValidString(l))
			}
		}
		if s.build.Version == "" {
			t.Fatal("an empty build version, want unknown")
		}
	})
}

// FuzzDecodeVarz: bytes from a monitoring endpoint decode or fail with an
// error, never panic.
func FuzzDecodeVarz(f *testing.F) {
	f.Add([]byte(`{"server_id":"N1","version":"2.11","connections":3,"in_msgs":10,"cpu":1.5}`))
	f.Add([]byte(`{"server_id":""}`))
	f.Add([]byte(`[`))
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := decodeVarz(bytes.NewReader(data))
		if err == nil && v.ServerID == "" {
			t.Fatal("decoded a /varz without a server_id")
		}
	})
}

func TestParseBuildInfo(t *testing.T) {
	long := strings.Repeat("é", 200) // 400 bytes, two to a character
	tests := []struct {
		name, text string
		want       Build
	}{
		{"a process that says its build", `# TYPE loom_build_info gauge
loom_build_info{go_version="go1.26.8",revision="0123456789abcdef0123456789abcdef01234567",version="v0.4.0"} 1
`, Build{Version: "v0.4.0", Revision: "0123456789abcdef0123456789abcdef01234567", GoVersion: "go1.26.8"}},
		{"a process that does not is unknown", exposition, Build{Version: UnknownBuild}},
		{"an empty version is unknown", `loom_build_info{version="",go_version="go1.26.8"} 1
`, Build{Version: UnknownBuild, GoVersion: "go1.26.8"}},
		{"of several series only the first is kept", `# TYPE loom_build_info gauge
loom_build_info{version="v1"} 1
loom_build_info{version="v2"} 1
loom_build_info{version="v3"} 1
`, Build{Version: "v1"}},
		{"a long value is cut at a character, with an ellipsis", `loom_build_info{version="` + long + `"} 1
`, Build{Version: strings.Repeat("é", (maxBuildLabel-len("…"))/2) + "…"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := parseMetrics(strings.NewReader(tt.text), nil)
			if err != nil {
				t.Fatal(err)
			}
			if s.build != tt.want {
				t.Errorf("build %+v, want %+v", s.build, tt.want)
			}
			if len(s.build.Version) > maxBuildLabel {
				t.Errorf("version of %d bytes kept, want at most %d", len(s.build.Version), maxBuildLabel)
			}
		})
	}
}
