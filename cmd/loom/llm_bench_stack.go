package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/discovery/memory"
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/llm/bench"
	"github.com/loomrt/loom/llm/frontend"
	"github.com/loomrt/loom/llm/kvrouter"
	"github.com/loomrt/loom/llm/mocker"
	"github.com/loomrt/loom/natsconn"
)

// stack is the serving stack `loom llm bench --workers` measures, in this
// process: embedded NATS, a memory discovery store, mock workers each
// with a runtime of its own, and the frontend on 127.0.0.1. Each part is
// started under its pprof part label, so the CPU profile can tell them
// apart (bench.CPUSplit).
type stack struct {
	nats    *embedded.NATS
	store   *memory.Store
	cluster *mocker.Cluster
	wcfg    mocker.Config
	fe      *frontend.Frontend
	feRT    *loom.Runtime
	feConn  interface{ Close() }
	ln      net.Listener
	served  chan error
	kv      kvrouter.Router

	mu      sync.Mutex
	workers []*mocker.Worker // every worker started, killed ones too
	live    []uint64

	cpu     *bench.CPUSplit
	profile *os.File
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func startStack(ctx context.Context, workers int, routerName string, speed mockSpeed) (_ *stack, err error) {
	s := &stack{store: memory.NewStore(), served: make(chan error, 1)}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	log := quietLogger()
	bench.Part(ctx, bench.PartNATS, func(context.Context) {
		s.nats, err = embedded.StartNATS(embedded.NATSOptions{JetStream: true})
	})
	if err != nil {
		return nil, fmt.Errorf("llm bench: starting NATS: %w", err)
	}
	cfg := config.Default()
	cfg.NATS.URL = s.nats.ClientURL()
	switch speed.plane {
	case "local":
		cfg.Client.LocalFastPath = true
	case "tcp", "nats":
		cfg.Client.LocalFastPath = false
		cfg.RequestPlane.Transport = speed.plane
	default:
		return nil, fmt.Errorf("llm bench: --plane %q: want tcp, nats or local", speed.plane)
	}
	s.wcfg = mocker.Config{PrefillPerToken: speed.prefillPerToken, DecodeStep: speed.decodeStep, MaxBatch: speed.maxBatch, KvBlocks: speed.kvBlocks}
	bench.Part(ctx, bench.PartWorkers, func(ctx context.Context) {
		s.cluster, err = mocker.StartCluster(ctx, mocker.ClusterConfig{Workers: workers, Worker: s.wcfg, Runtime: cfg, NATS: s.nats, Store: s.store, Logger: log})
	})
	if err != nil {
		return nil, fmt.Errorf("llm bench: starting %d mock workers: %w", workers, err)
	}
	for _, w := range s.cluster.Workers() {
		s.workers = append(s.workers, w)
		s.live = append(s.live, w.ID())
	}
	bench.Part(ctx, bench.PartFrontend, func(ctx context.Context) { err = s.startFrontend(ctx, cfg, routerName, speed.maxInFlight, log) })
	if err != nil {
		return nil, err
	}
	// Ready when the frontend lists the model and knows every worker.
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := s.fe.WaitSynced(wctx); err != nil {
		return nil, fmt.Errorf("llm bench: the frontend did not see the workers: %w", err)
	}
	if err := waitModels(wctx, s.URL()); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *stack) startFrontend(ctx context.Context, cfg config.Config, routerName string, maxInFlight int, log *slog.Logger) error {
	nc, err := natsconn.Connect(ctx, cfg.NATS, natsconn.WithLogger(log), natsconn.WithInProcessServer(s.nats.Server()))
	if err != nil {
		return fmt.Errorf("llm bench: the frontend's NATS connection: %w", err)
	}
	s.feConn = nc
	if s.feRT, err = loom.NewRuntime(ctx, loom.WithConfig(cfg), loom.WithNATSConn(nc), loom.WithLogger(log), loom.WithDiscovery(s.store.Connect())); err != nil {
		return err
	}
	r, err := kvrouter.New(ctx, s.feRT, routerName, kvrouter.Config{})
	if err != nil {
		return fmt.Errorf("llm bench: router: %w", err)
	}
	s.kv = r
	if s.fe, err = frontend.New(ctx, s.feRT, frontend.Config{Router: r, Logger: log, MaxInFlightPerWorker: maxInFlight}); err != nil {
		return err
	}
	if s.ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		return err
	}
	go func() { s.served <- s.fe.Serve(s.ln) }()
	return nil
}

// waitModels waits until GET /v1/models answers with a model.
func waitModels(ctx context.Context, base string) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/models", nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("llm bench: the frontend at %s listed no model: %w (last: %v)", base, ctx.Err(), err)
		case <-t.C:
		}
	}
}

// URL is the frontend's base URL.
func (s *stack) URL() string { return "http://" + s.ln.Addr().String() }

// KillOne kills the oldest live worker as if its process crashed.
func (s *stack) KillOne() bool {
	s.mu.Lock()
	if len(s.live) <= 1 {
		s.mu.Unlock()
		return false
	}
	id := s.live[0]
	s.live = s.live[1:]
	s.mu.Unlock()
	return s.cluster.Kill(id) == nil
}

// StartOne starts one more worker.
func (s *stack) StartOne(ctx context.Context) error {
	var w *mocker.Worker
	var err error
	bench.Part(ctx, bench.PartWorkers, func(ctx context.Context) { w, err = s.cluster.Add(ctx, s.wcfg) })
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.workers = append(s.workers, w)
	s.live = append(s.live, w.ID())
	s.mu.Unlock()
	return nil
}

// StartMeasuring starts the CPU split; Report stops it. With a file
// name, the CPU profile is also written there.
func (s *stack) StartMeasuring(profile string) error {
	var save io.Writer
	if profile != "" {
		f, err := os.Create(profile)
		if err != nil {
			return fmt.Errorf("llm bench: --cpuprofile: %w", err)
		}
		s.profile, save = f, f
	}
	var err error
	s.cpu, err = bench.StartCPUSplit(save)
	return err
}

// Report adds what only the stack knows to res: each worker's request
// count and the frontend's CPU time per request (see setCPU). Migrations
// come from the frontend's X-Loom-Migrations trailer, as against a URL.
func (s *stack) Report(res *bench.Result) {
	if st := s.kv.Stats(); st.Name == kvrouter.KV {
		res.KvEvents = &bench.KvEventStats{Received: st.EventsReceived, Dropped: st.EventsDropped, Gaps: st.Gaps, Resyncs: st.Resyncs}
	}
	res.PerWorker = map[string]int{}
	s.mu.Lock()
	for _, w := range s.workers {
		res.PerWorker[strconv.FormatUint(w.ID(), 16)] = int(w.Stats().Requests)
	}
	s.mu.Unlock()
	if s.cpu == nil || res.Completed == 0 {
		return
	}
	total, parts, samples, err := s.cpu.Stop()
	s.cpu = nil
	if s.profile != nil {
		s.profile.Close()
		s.profile = nil
	}
	if err != nil {
		return
	}
	setCPU(res, total, parts, samples)
}

// setCPU sets res's CPU figures per completed request from a CPUSplit:
// the process's total, and, when the profile took samples to split it
// by, the frontend's share and every part's.
func setCPU(res *bench.Result, total time.Duration, parts map[string]time.Duration, samples int64) {
	n := float64(res.Completed)
	res.ProcessCPUMsPerRequest = float64(total) / float64(time.Millisecond) / n
	res.CPUProfileSamples = &samples
	if samples == 0 {
		// Too short a run for the 100 Hz profile: the total is measured,
		// how it splits is not, and 0 for the frontend would be a guess.
		return
	}
	var labelled time.Duration
	for p, d := range parts {
		if p != bench.PartOther {
			labelled += d
		}
	}
	fe := parts[bench.PartFrontend]
	if labelled > 0 {
		fe += time.Duration(float64(parts[bench.PartOther]) * float64(parts[bench.PartFrontend]) / float64(labelled))
	}
	v := float64(fe) / float64(time.Millisecond) / n
	res.FrontendCPUMsPerRequest = &v
	res.CPUByPart = map[string]float64{}
	for p, d := range parts {
		res.CPUByPart[p] = float64(d) / float64(time.Millisecond) / n
	}
}

// Close stops everything the stack started.
func (s *stack) Close() {
	if s.cpu != nil {
		_, _, _, _ = s.cpu.Stop()
	}
	if s.profile != nil {
		s.profile.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if s.fe != nil {
		_ = s.fe.Shutdown(ctx)
		s.fe.Close()
		if s.ln != nil {
			<-s.served
		}
	}
	if s.kv != nil {
		_ = s.kv.Close()
	}
	if s.feRT != nil {
		_ = s.feRT.Shutdown(ctx)
	}
	if s.feConn != nil {
		s.feConn.Close()
	}
	if s.cluster != nil {
		s.cluster.Close()
	}
	if s.nats != nil {
		s.nats.Shutdown()
	}
}
