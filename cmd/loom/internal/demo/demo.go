// Package demo is `loom demo`: a whole Loom system in one process. An
// embedded nats-server with JetStream, several backend runtimes serving a
// token-streaming `generate` endpoint, and a frontend that sends a batch of
// requests through a Client and reports what it saw.
package demo

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"iter"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loomrt/loom"
	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/discovery/memory"
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/natsconn"
)

// Options shape a demo run.
type Options struct {
	Instances   int           // backend runtimes serving generate
	Requests    int           // requests the frontend sends
	Concurrency int           // requests in flight at once
	Tokens      int           // tokens streamed per request
	TokenDelay  time.Duration // simulated time to produce one token
	Router      string        // client.router value
	Plane       string        // how calls travel: local (in-process fast path), tcp or nats
	Progress    bool          // print a progress line while running
	// Observable gives each backend a status server (on a free port,
	// named in its instance record) and the NATS server a monitoring
	// port, so that a dashboard can show their load.
	Observable bool
}

// DefaultOptions are what `loom demo` runs with no flags.
func DefaultOptions() Options {
	return Options{Instances: 3, Requests: 200, Concurrency: 16, Tokens: 32, TokenDelay: 200 * time.Microsecond, Router: "round_robin", Plane: "tcp", Progress: true}
}

// Request is what the frontend sends to backend/generate.
type Request struct {
	Prompt    string `json:"prompt"`
	MaxTokens int    `json:"max_tokens"`
}

// Token is one streamed response item.
type Token struct {
	Text     string `json:"text"`
	Index    int    `json:"index"`
	Instance uint64 `json:"instance"`
}

// Summary is what a batch measured.
type Summary struct {
	Requests     int
	Errors       int
	Items        int
	Elapsed      time.Duration
	P50, P99     time.Duration // whole-request latency
	TTFT50       time.Duration // time to first token, median
	PerInstance  map[uint64]int
	NATSURL      string
	NATSRTT      time.Duration
	JetStream    bool
	FirstFailure error
}

// System is a running demo: the embedded NATS server, the backends and the
// frontend's client.
type System struct {
	opts     Options
	log      *slog.Logger
	nats     *embedded.NATS
	backends []*loom.Runtime
	frontend *loom.Runtime
	client   *loom.Client[Request, Token]
	conns    []*nats.Conn          // closed at Shutdown
	discs    []discovery.Discovery // closed at Shutdown
	natsURL  string
	rtt      time.Duration

	cfg       config.Config // the backends'
	store     *memory.Store // the demo's own discovery
	observers []*loom.Runtime
}

var words = strings.Fields("the loom weaves threads of requests across components finding each other through discovery streaming tokens back over a multiplexed plane")

// generate is the backend's handler: it streams tokens for a prompt.
func generate(rt *loom.Runtime, delay time.Duration) loom.EngineFunc[Request, Token] {
	return func(ctx context.Context, req Request) iter.Seq2[Token, error] {
		return func(yield func(Token, error) bool) {
			if req.MaxTokens <= 0 {
				yield(Token{}, fmt.Errorf("max_tokens must be positive, got %d", req.MaxTokens))
				return
			}
			h := fnv.New32a()
			_, _ = io.WriteString(h, req.Prompt)
			seed := int(h.Sum32())
			for i := range req.MaxTokens {
				if delay > 0 {
					select {
					case <-ctx.Done():
						return
					case <-time.After(delay):
					}
				}
				if loom.IsStopped(ctx) {
					return
				}
				if !yield(Token{Text: words[(seed+i)%len(words)], Index: i, Instance: rt.ID()}, nil) {
					return
				}
			}
		}
	}
}

// Start brings the system up: NATS, the backends, the frontend. fe, if
// given (loom.Run's runtime), lends the system its configuration but for
// NATS and discovery, which are the demo's own.
// Options out of range are an error naming the option (as its flag).
func Start(ctx context.Context, opts Options, log *slog.Logger, fe *loom.Runtime) (*System, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	s := &System{opts: opts, log: log}
	ok := false
	defer func() {
		if !ok {
			s.Shutdown(context.Background())
		}
	}()
	var err error
	nopts := embedded.NATSOptions{JetStream: true}
	if opts.Observable {
		nopts.MonitorPort = -1
	}
	s.nats, err = embedded.StartNATS(nopts)
	if err != nil {
		return nil, fmt.Errorf("demo: start embedded nats-server: %w", err)
	}
	s.natsURL = s.nats.ClientURL()

	// The demo is a system of its own: the frontend and the backends meet
	// in a discovery store of the demo's, on its nats-server, whatever the
	// environment names (loom up's lines may be set in the shell), and
	// demos in one process do not meet. fe, loom.Run's runtime, gives the
	// operator's other settings and the process's lifecycle.
	cfg := config.Default()
	if fe != nil {
		cfg = fe.Config()
	}
	store := memory.NewStore()
	cfg.NATS.URL, cfg.Discovery.Backend = s.natsURL, "memory"
	cfg.Client.Router = opts.Router
	if opts.Observable {
		cfg.Status.Port = -1
	}
	switch opts.Plane {
	case "local":
		cfg.Client.LocalFastPath = true
	case "tcp", "nats":
		cfg.Client.LocalFastPath = false
		cfg.RequestPlane.Transport = opts.Plane
	default:
		return nil, fmt.Errorf("demo: --plane %q: use local, tcp or nats", opts.Plane)
	}
	s.cfg, s.store = cfg, store
	for range opts.Instances {
		rt, err := s.runtime(ctx, cfg, store)
		if err != nil {
			return nil, err
		}
		s.backends = append(s.backends, rt)
		ep, err := rt.Endpoint("demo/backend/generate")
		if err != nil {
			return nil, err
		}
		if err := loom.Serve(ctx, ep, generate(rt, opts.TokenDelay)); err != nil {
			return nil, err
		}
	}
	if s.frontend, err = s.runtime(ctx, cfg, store); err != nil {
		return nil, err
	}
	ep, err := s.frontend.Endpoint("demo/backend/generate")
	if err != nil {
		return nil, err
	}
	picker, err := loom.PickerByName(opts.Router)
	if err != nil {
		return nil, err
	}
	if s.client, err = loom.NewClient[Request, Token](ctx, ep, loom.WithPicker(picker)); err != nil {
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := s.client.WaitForInstances(wctx, opts.Instances); err != nil {
		return nil, err
	}
	nc, err := s.backends[0].NATS(ctx)
	if err != nil {
		return nil, err
	}
	if s.rtt, err = nc.RTT(); err != nil {
		return nil, fmt.Errorf("demo: nats round trip: %w", err)
	}
	ok = true
	return s, nil
}

// Observer returns a new runtime on the demo's NATS server and discovery
// that serves nothing, for a dashboard; Shutdown stops it.
func (s *System) Observer(ctx context.Context) (*loom.Runtime, error) {
	cfg := s.cfg
	cfg.Status.Port = 0
	rt, err := s.runtime(ctx, cfg, s.store)
	if err != nil {
		return nil, err
	}
	s.observers = append(s.observers, rt)
	return rt, nil
}

// MonitorURL returns the NATS server's monitoring URL, or "" without
// Options.Observable.
func (s *System) MonitorURL() string { return s.nats.MonitorURL() }

// runtime makes a backend or frontend runtime with an in-process NATS
// connection, on store.
func (s *System) runtime(ctx context.Context, cfg config.Config, store *memory.Store) (*loom.Runtime, error) {
	nc, err := natsconn.Connect(ctx, cfg.NATS, natsconn.WithLogger(s.log), natsconn.WithInProcessServer(s.nats.Server()))
	if err != nil {
		return nil, err
	}
	s.conns = append(s.conns, nc)
	d := store.Connect()
	s.discs = append(s.discs, d)
	return loom.NewRuntime(ctx, loom.WithConfig(cfg), loom.WithNATSConn(nc), loom.WithLogger(s.log), loom.WithDiscovery(d))
}

// Batch sends opts.Requests requests, opts.Concurrency at a time, printing
// progress to out, and returns what it measured.
func (s *System) Batch(ctx context.Context, out io.Writer) Summary {
	o := s.opts
	sum := Summary{PerInstance: map[uint64]int{}, NATSURL: s.natsURL, NATSRTT: s.rtt, JetStream: s.nats.Server().JetStreamEnabled()}
	var (
		mu        sync.Mutex
		latencies []time.Duration
		ttfts     []time.Duration
		done      atomic.Int64
		items     atomic.Int64
	)
	jobs := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for range o.Concurrency {
		wg.Go(func() {
			for i := range jobs {
				t0 := time.Now()
				var ttft time.Duration
				var inst uint64
				n := 0
				var err error
				for tok, e := range s.client.Generate(ctx, Request{Prompt: fmt.Sprintf("prompt %d", i), MaxTokens: o.Tokens}) {
					if e != nil {
						err = e
						break
					}
					if n == 0 {
						ttft = time.Since(t0)
					}
					n++
					inst = tok.Instance
				}
				lat := time.Since(t0)
				items.Add(int64(n))
				done.Add(1)
				mu.Lock()
				if err != nil || n != o.Tokens {
					sum.Errors++
					if sum.FirstFailure == nil {
						sum.FirstFailure = cmpErr(err, n, o.Tokens)
					}
				} else {
					latencies = append(latencies, lat)
					ttfts = append(ttfts, ttft)
					sum.PerInstance[inst]++
				}
				mu.Unlock()
			}
		})
	}
	stopProgress := make(chan struct{})
	var pw sync.WaitGroup
	if o.Progress {
		pw.Go(func() {
			t := time.NewTicker(100 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-stopProgress:
					fmt.Fprintf(out, "\r  %d/%d requests, %d tokens streamed\n", done.Load(), o.Requests, items.Load())
					return
				case <-t.C:
					fmt.Fprintf(out, "\r  %d/%d requests, %d tokens streamed", done.Load(), o.Requests, items.Load())
				}
			}
		})
	}
feed:
	for i := range o.Requests {
		select {
		case jobs <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	close(stopProgress)
	pw.Wait()
	sum.Elapsed = time.Since(start)
	sum.Requests = int(done.Load())
	sum.Items = int(items.Load())
	sum.P50, sum.P99 = percentile(latencies, 50), percentile(latencies, 99)
	sum.TTFT50 = percentile(ttfts, 50)
	return sum
}

func cmpErr(err error, n, want int) error {
	if err != nil {
		return err
	}
	return fmt.Errorf("stream ended after %d of %d tokens", n, want)
}

func percentile(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return d[(len(d)-1)*p/100]
}

// Backends returns the backend runtimes' ids in start order.
func (s *System) Backends() []uint64 {
	ids := make([]uint64, len(s.backends))
	for i, rt := range s.backends {
		ids[i] = rt.ID()
	}
	return ids
}

// Shutdown stops the frontend, the backends (draining their
// requests until ctx ends) and the NATS server.
func (s *System) Shutdown(ctx context.Context) error {
	var errs []error
	if s.client != nil {
		s.client.Close()
	}
	if s.frontend != nil {
		errs = append(errs, s.frontend.Shutdown(ctx))
	}
	for _, rt := range s.observers {
		errs = append(errs, rt.Shutdown(ctx))
	}
	for _, rt := range s.backends {
		errs = append(errs, rt.Shutdown(ctx))
	}
	for _, d := range s.discs {
		errs = append(errs, d.Close())
	}
	for _, nc := range s.conns {
		nc.Close()
	}
	if s.nats != nil {
		s.nats.Shutdown()
	}
	return errors.Join(errs...)
}

// Report is the summary as loom demo --json prints it: times in
// milliseconds or seconds as the names say, instance ids as JSON numbers
// (as discovery records have them).
type Report struct {
	Requests      int              `json:"requests"`
	Failed        int              `json:"failed"`
	StreamedItems int              `json:"streamed_items"`
	ElapsedS      float64          `json:"elapsed_s"`
	RequestsPerS  float64          `json:"requests_per_s"`
	ItemsPerS     float64          `json:"items_per_s"`
	LatencyP50MS  float64          `json:"latency_p50_ms"`
	LatencyP99MS  float64          `json:"latency_p99_ms"`
	TTFTP50MS     float64          `json:"ttft_p50_ms"`
	PerInstance   []InstanceReport `json:"per_instance"`
	NATS          NATSReport       `json:"nats"`
	FirstFailure  string           `json:"first_failure,omitempty"`
}

// InstanceReport is one backend's share of the requests.
type InstanceReport struct {
	InstanceID uint64 `json:"instance_id"`
	Requests   int    `json:"requests"`
}

// NATSReport is the embedded server the demo ran on.
type NATSReport struct {
	URL       string  `json:"url"`
	JetStream bool    `json:"jetstream"`
	RTTMS     float64 `json:"rtt_ms"`
}

// Report returns the summary for printing as JSON, with the backends ids
// in start order.
func (sum Summary) Report(ids []uint64) Report {
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	r := Report{
		Requests: sum.Requests, Failed: sum.Errors, StreamedItems: sum.Items, ElapsedS: sum.Elapsed.Seconds(),
		LatencyP50MS: ms(sum.P50), LatencyP99MS: ms(sum.P99), TTFTP50MS: ms(sum.TTFT50),
		PerInstance: make([]InstanceReport, 0, len(ids)),
		NATS:        NATSReport{URL: sum.NATSURL, JetStream: sum.JetStream, RTTMS: ms(sum.NATSRTT)},
	}
	if sum.Elapsed > 0 {
		r.RequestsPerS, r.ItemsPerS = float64(sum.Requests)/sum.Elapsed.Seconds(), float64(sum.Items)/sum.Elapsed.Seconds()
	}
	for _, id := range ids {
		r.PerInstance = append(r.PerInstance, InstanceReport{InstanceID: id, Requests: sum.PerInstance[id]})
	}
	if sum.FirstFailure != nil {
		r.FirstFailure = sum.FirstFailure.Error()
	}
	return r
}

// Print writes the summary as the demo shows it.
func (sum Summary) Print(w io.Writer, ids []uint64) {
	fmt.Fprintf(w, "\nsummary\n")
	fmt.Fprintf(w, "  requests        %d (%d failed)\n", sum.Requests, sum.Errors)
	fmt.Fprintf(w, "  streamed items  %d\n", sum.Items)
	fmt.Fprintf(w, "  elapsed         %s (%.0f requests/s, %.0f items/s)\n", sum.Elapsed.Round(time.Millisecond),
		float64(sum.Requests)/sum.Elapsed.Seconds(), float64(sum.Items)/sum.Elapsed.Seconds())
	fmt.Fprintf(w, "  latency         p50 %s  p99 %s  (first token p50 %s)\n", round(sum.P50), round(sum.P99), round(sum.TTFT50))
	fmt.Fprintf(w, "  per instance   ")
	for _, id := range ids {
		fmt.Fprintf(w, " %x:%d", id, sum.PerInstance[id])
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "  nats            %s, JetStream %v, round trip %s\n", sum.NATSURL, sum.JetStream, round(sum.NATSRTT))
	if sum.FirstFailure != nil {
		fmt.Fprintf(w, "  first failure   %v\n", sum.FirstFailure)
	}
}

func round(d time.Duration) time.Duration {
	switch {
	case d > time.Second:
		return d.Round(time.Millisecond)
	case d > time.Millisecond:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}

// Validate reports options out of range, naming each as its flag.
func (o Options) Validate() error {
	var bad []string
	for _, c := range []struct {
		name string
		ok   bool
		got  any
		want string
	}{
		{"instances", o.Instances >= 1, o.Instances, "at least 1"},
		{"concurrency", o.Concurrency >= 1, o.Concurrency, "at least 1"},
		{"tokens", o.Tokens >= 1, o.Tokens, "at least 1"},
		{"requests", o.Requests >= 0, o.Requests, "0 or more"},
		{"token-delay", o.TokenDelay >= 0, o.TokenDelay, "0 or more"},
		{"plane", o.Plane == "local" || o.Plane == "tcp" || o.Plane == "nats", o.Plane, "local, tcp or nats"},
	} {
		if !c.ok {
			bad = append(bad, fmt.Sprintf("--%s %v: want %s", c.name, c.got, c.want))
		}
	}
	if _, err := loom.PickerByName(o.Router); err != nil {
		bad = append(bad, fmt.Sprintf("--router %v: want round_robin, random, power_of_two or least_loaded", o.Router))
	}
	if len(bad) > 0 {
		return fmt.Errorf("demo: %s", strings.Join(bad, "; "))
	}
	return nil
}
