package dashboard

import (
	"encoding/json"
	"math"
	"time"

	"github.com/loomrt/loom/workqueue"
)

// State is what the page shows: GET /api/state returns it and
// GET /api/stream sends it as a server-sent event named "state" at each
// change. Numbers the dashboard could not measure are null.
type State struct {
	// Time is when the state was built; Interval how often load,
	// queues and NATS are read.
	Time     time.Time `json:"time"`
	Interval float64   `json:"interval_seconds"`
	// Discovery names the backend the dashboard watches; Synced is false
	// until its first snapshot arrived; DiscoveryError says why watching
	// failed, if it did.
	Discovery      string `json:"discovery"`
	Synced         bool   `json:"synced"`
	DiscoveryError string `json:"discovery_error,omitempty"`
	// Instances are the instance records, ordered by key, each with its
	// load.
	Instances []Instance `json:"instances"`
	// Totals sum the instances' load.
	Totals Totals `json:"totals"`
	// History is the recent totals, oldest first, for the charts.
	History []Point `json:"history"`
	// Processes are the status servers scraped for load.
	Processes []Process `json:"processes"`
	// Builds are the builds of Loom the instances' processes run, most
	// instances first; more than one is a rolling upgrade under way or a
	// process left on another build. Instances whose process was not
	// read (no status server, a failed scrape) are not counted.
	Builds  []BuildCount `json:"builds"`
	Events  Events       `json:"events"`
	Queues  Queues       `json:"queues"`
	NATS    NATS         `json:"nats"`
	Serving Serving      `json:"serving"`
}

// Instance is one instance record, as `loom ls --json` prints it, with
// what the dashboard knows of its state and load.
type Instance struct {
	Namespace  string            `json:"namespace"`
	Component  string            `json:"component"`
	Endpoint   string            `json:"endpoint"`
	InstanceID uint64            `json:"instance_id"`
	ID         string            `json:"id"` // InstanceID in hex, as `loom ls` shows it
	Transport  string            `json:"transport"`
	Address    string            `json:"address"`
	TLS        bool              `json:"tls,omitempty"`
	Codec      string            `json:"codec"`
	Metadata   map[string]string `json:"metadata,omitempty"`
	// RegisteredAt and Age come from the record's registered_at.
	RegisteredAt *time.Time `json:"registered_at,omitempty"`
	Age          Num        `json:"age_seconds"`
	// StatusAddr is its process's status server, from the record's
	// status_addr; empty when the process runs none.
	StatusAddr string `json:"status_addr,omitempty"`
	// State is "ready", "draining" (the process's /health says it is
	// shutting down) or "unknown" (no status server to ask).
	State string `json:"state"`
	// Load is from its process's /metrics, for this endpoint; nil when
	// there is none (LoadError says why).
	Load      *Load  `json:"load,omitempty"`
	LoadError string `json:"load_error,omitempty"`
	// Build is the build its process runs, from the process's last
	// scrape; nil when that scrape failed or there is none.
	Build *Build `json:"build,omitempty"`
}

// Build is which build of Loom a process runs, as the labels of its
// loom_build_info say (`loom version` prints the same). Each is cut to
// 128 bytes.
type Build struct {
	// Version is Loom's module version, or "unknown" (UnknownBuild)
	// when the process exports no loom_build_info: an older Loom, or
	// not Loom.
	Version string `json:"version"`
	// Revision is the commit, for a binary built from a checkout of
	// Loom itself; GoVersion the toolchain that built it.
	Revision  string `json:"revision,omitempty"`
	GoVersion string `json:"go_version,omitempty"`
}

// BuildCount is one build (a version and revision) and how many
// instances, in how many processes, run it.
type BuildCount struct {
	Version   string `json:"version"`
	Revision  string `json:"revision,omitempty"`
	Instances int    `json:"instances"`
	Processes int    `json:"processes"`
}

// Load is an endpoint's served requests in one process. Rates are over
// the last interval, percentiles over the last Window seconds; totals are
// the counters as /metrics shows them.
type Load struct {
	RequestsPerSec Num `json:"requests_per_second"`
	ErrorsPerSec   Num `json:"errors_per_second"`
	InFlight       Num `json:"in_flight"`
	P50            Num `json:"p50_ms"`
	P99            Num `json:"p99_ms"`
	FirstP50       Num `json:"first_response_p50_ms"`
	Window         Num `json:"window_seconds"`
	// Requests counts every request ended (loom_requests_total, all
	// codes); Errors those whose handler failed (codes error and panic).
	Requests  Num `json:"requests_total"`
	Errors    Num `json:"errors_total"`
	Cancelled Num `json:"cancelled_total"`
	Refused   Num `json:"refused_total"`
	// RateHistory is RequestsPerSec over the recent intervals, oldest
	// first.
	RateHistory []Num `json:"rate_history"`
}

// Totals sum the load of every instance the dashboard has metrics for.
type Totals struct {
	Instances      int `json:"instances"`
	Endpoints      int `json:"endpoints"`
	Processes      int `json:"processes"`
	RequestsPerSec Num `json:"requests_per_second"`
	ErrorsPerSec   Num `json:"errors_per_second"`
	InFlight       Num `json:"in_flight"`
	P50            Num `json:"p50_ms"`
	P99            Num `json:"p99_ms"`
	EventsPerSec   Num `json:"events_per_second"`
	QueueJobs      Num `json:"queue_jobs"`
	DeadLetters    Num `json:"dead_letters"`
}

// Point is the totals at one time, for the charts.
type Point struct {
	T              int64 `json:"t"` // Unix milliseconds
	RequestsPerSec Num   `json:"requests_per_second"`
	ErrorsPerSec   Num   `json:"errors_per_second"`
	InFlight       Num   `json:"in_flight"`
	P99            Num   `json:"p99_ms"`
	EventsPerSec   Num   `json:"events_per_second"`
}

// Process is one scraped status server (or extra metrics URL).
type Process struct {
	Target    string    `json:"target"`
	Instances []string  `json:"instances"` // hex ids registered with this status_addr
	Ready     *bool     `json:"ready"`
	Scraped   time.Time `json:"scraped"`
	Error     string    `json:"error,omitempty"`
	// Build is the build it runs; nil when its last scrape failed.
	Build *Build `json:"build,omitempty"`
}

// Events is the event plane as the dashboard sees it: the events its own
// subscription to every event receives, per publisher, and the counters
// every scraped process keeps (loom_events_*).
type Events struct {
	// Transport and Pattern of the dashboard's subscription; Error says
	// why it has none.
	Transport string `json:"transport"`
	Pattern   string `json:"pattern"`
	Error     string `json:"error,omitempty"`
	// RatePerSec is the events per second it received over the last
	// interval; Received, Lost and Dropped its Stats (Dropped: by its
	// own buffer, when the dashboard could not keep up).
	RatePerSec Num    `json:"events_per_second"`
	Received   uint64 `json:"received"`
	Lost       uint64 `json:"lost"`
	Dropped    uint64 `json:"dropped"`
	// Publishers are the publishers heard, most recently heard first.
	Publishers []Publisher `json:"publishers"`
	// Published sums the scraped processes' publisher counters by
	// transport and subject; Subscriptions their subscription counters
	// by transport and pattern.
	Published     []PublishedSubject `json:"published"`
	Subscriptions []SubscribedStream `json:"subscriptions"`
}

// Publisher is one event publisher, as the dashboard's subscription
// follows its sequence numbers.
type Publisher struct {
	ID         string    `json:"id"`          // publisher id in hex
	InstanceID string    `json:"instance_id"` // its runtime's instance id in hex, "" if it did not say
	Subject    string    `json:"subject"`
	Topic      string    `json:"topic"`
	Codec      string    `json:"codec"`
	Events     uint64    `json:"events"`
	RatePerSec Num       `json:"events_per_second"`
	Sequence   uint64    `json:"last_sequence"`
	Gaps       uint64    `json:"gaps"` // times its sequence skipped
	Lost       uint64    `json:"lost"` // sequence numbers skipped in all
	LastSeen   time.Time `json:"last_seen"`
}

// PublishedSubject is the publishers' counters on one subject, summed over
// the scraped processes.
type PublishedSubject struct {
	Transport   string `json:"transport"`
	Subject     string `json:"subject"`
	Processes   int    `json:"processes"`
	Published   Num    `json:"published_total"`
	RatePerSec  Num    `json:"events_per_second"`
	Errors      Num    `json:"publish_errors_total"`
	SendDropped Num    `json:"send_dropped_total"`
}

// SubscribedStream is the subscriptions' counters on one pattern, summed
// over the scraped processes.
type SubscribedStream struct {
	Transport  string `json:"transport"`
	Pattern    string `json:"pattern"`
	Processes  int    `json:"processes"`
	Received   Num    `json:"received_total"`
	RatePerSec Num    `json:"events_per_second"`
	Lost       Num    `json:"lost_total"` // lost less reordered: never arrived
	Dropped    Num    `json:"dropped_total"`
	Malformed  Num    `json:"malformed_total"`
}

// Queues are the work queues on the NATS server (workqueue.Admin).
type Queues struct {
	Error  string           `json:"error,omitempty"`
	Queues []workqueue.Info `json:"queues"`
}

// NATS is the NATS server's and JetStream's health: from the server's
// monitoring endpoint when it is reachable, else from what the client
// connection and the JetStream account info say.
type NATS struct {
	URL       string `json:"url"`
	Connected bool   `json:"connected"`
	Error     string `json:"error,omitempty"`
	ServerID  string `json:"server_id,omitempty"`
	Version   string `json:"version,omitempty"`
	RTT       Num    `json:"rtt_ms"`
	// Monitor is the monitoring URL read, or "" (MonitorError says why).
	Monitor      string `json:"monitor,omitempty"`
	MonitorError string `json:"monitor_error,omitempty"`
	// From the monitoring endpoint (/varz): null without it.
	Uptime        string `json:"uptime,omitempty"`
	Connections   Num    `json:"connections"`
	InMsgsPerSec  Num    `json:"in_msgs_per_second"`
	OutMsgsPerSec Num    `json:"out_msgs_per_second"`
	InBytesPerSec Num    `json:"in_bytes_per_second"`
	SlowConsumers Num    `json:"slow_consumers"`
	Mem           Num    `json:"mem_bytes"`
	CPU           Num    `json:"cpu_percent"`
	// JetStream is the account's JetStream usage; nil when JetStream is
	// off or unreachable (JetStreamError says why).
	JetStream      *JetStream `json:"jetstream,omitempty"`
	JetStreamError string     `json:"jetstream_error,omitempty"`
}

// JetStream is an account's JetStream usage and limits.
type JetStream struct {
	Streams    int    `json:"streams"`
	Consumers  int    `json:"consumers"`
	Memory     uint64 `json:"memory_bytes"`
	Storage    uint64 `json:"storage_bytes"`
	MaxMemory  int64  `json:"max_memory_bytes"`
	MaxStorage int64  `json:"max_storage_bytes"`
	APITotal   uint64 `json:"api_total"`
	APIErrors  uint64 `json:"api_errors"`
}

// Serving is the LLM serving view: the metric families whose names start
// with one of the serving prefixes, summed over the scraped processes.
type Serving struct {
	Prefixes []string        `json:"prefixes"`
	Families []ServingFamily `json:"families"`
	// Summary reads the families of the LLM frontend and workers by
	// name (docs/dashboard.md lists them); a figure whose family is
	// absent is null.
	Summary ServingSummary `json:"summary"`
}

// ServingSummary is the serving view's headline: workers, request and
// token rates, time to first token, inter-token latency, KV hit rate.
type ServingSummary struct {
	// Workers counts the instances of {ns}/backend/generate, the
	// endpoint LLM workers serve (package llm).
	Workers        int `json:"workers"`
	RequestsPerSec Num `json:"requests_per_second"`
	InFlight       Num `json:"in_flight"`
	TokensPerSec   Num `json:"output_tokens_per_second"`
	TTFTP50        Num `json:"ttft_p50_ms"`
	TTFTP99        Num `json:"ttft_p99_ms"`
	ITLP50         Num `json:"itl_p50_ms"`
	// KVHitRate, KVUsage and Waiting come from the workers' latest
	// load_metrics events (llm.LoadMetrics: the mean of
	// gpu_prefix_cache_hit_rate and of gpu_cache_usage_perc, the sum of
	// num_requests_waiting over the workers heard in the last 10 s);
	// without them, KVHitRate is the gauge loom_llm_kv_hit_rate if a
	// process exports one.
	KVHitRate Num `json:"kv_hit_rate"`
	KVUsage   Num `json:"kv_usage"`
	Waiting   Num `json:"waiting"`
	// Reporting counts the workers whose load_metrics are in the figures.
	Reporting int `json:"reporting_workers"`
}

// ServingFamily is one metric family summed over processes: a counter's
// total and rate, a gauge's sum, a histogram's count, rate and
// percentiles over the window.
type ServingFamily struct {
	Name       string `json:"name"`
	Help       string `json:"help"`
	Kind       string `json:"kind"`
	Processes  int    `json:"processes"`
	Value      Num    `json:"value"`
	RatePerSec Num    `json:"per_second"`
	P50        Num    `json:"p50"`
	P99        Num    `json:"p99"`
	Mean       Num    `json:"mean"`
}

// Num is a number that may be unknown: NaN encodes as JSON null.
type Num float64

// MarshalJSON writes null for NaN and infinities, else the number.
func (n Num) MarshalJSON() ([]byte, error) {
	f := float64(n)
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return []byte("null"), nil
	}
	return json.Marshal(math.Round(f*1000) / 1000)
}

// UnmarshalJSON reads null as NaN.
func (n *Num) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*n = Num(math.NaN())
		return nil
	}
	var f float64
	if err := json.Unmarshal(b, &f); err != nil {
		return err
	}
	*n = Num(f)
	return nil
}

// Known reports whether n holds a number.
func (n Num) Known() bool { return !math.IsNaN(float64(n)) && !math.IsInf(float64(n), 0) }

var unknown = Num(math.NaN())
