// Package frontend is an OpenAI-compatible HTTP server for LLM workers on
// Loom: it lists the models that workers register in discovery, turns chat
// and completion requests into tokens (package llm/tokenizer), routes each
// to a worker's generate endpoint with an llm.Router, and streams the
// tokens back as text, as Server-Sent Events or one JSON response.
//
// Endpoints:
//
//	GET  /v1/models            the models registered workers serve
//	GET  /v1/models/{model}    one of them
//	POST /v1/chat/completions  chat, stream true or false
//	POST /v1/completions       text completion, stream true or false
//	GET  /health               200 when a worker of some model is known, else 503
//	GET  /live                 200 while the process serves HTTP
//	GET  /metrics              Prometheus metrics of the runtime's registry
//
// A client that disconnects kills its request on the worker at once. A
// worker that fails mid-request, or leaves discovery and then goes quiet
// for Config.DepartedIdle, has the request re-issued to
// another worker with the prompt and the tokens already streamed (a
// migration), so the client sees one uninterrupted stream; only when
// Config.MaxMigrations are spent does the client get an error. Every
// completion reports its migrations in the X-Loom-Migrations trailer (a
// header when not streamed). Errors have
// OpenAI's JSON shape; docs/llm.md lists the statuses and metrics.
package frontend

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/llm"
	"github.com/loomrt/loom/llm/tokenizer"
	"github.com/loomrt/loom/metrics"
)

// Config configures a Frontend. The zero value works: every field has a
// default.
type Config struct {
	// Namespace is where the workers serve (default llm.DefaultNamespace):
	// the frontend calls {Namespace}/backend/generate.
	Namespace string
	// Router picks the worker for each request (default
	// llm.PickerRouter(loom.RoundRobin())).
	Router llm.Router
	// Tokenizer encodes prompts and decodes output (default
	// tokenizer.Default()). Workers must use the same vocabulary.
	Tokenizer *tokenizer.Tokenizer
	// MaxMigrations bounds how many times one request is re-issued to
	// another worker after its worker failed mid-request (default 3;
	// negative: never).
	MaxMigrations int
	// MaxInFlightPerWorker is the load threshold: a worker with this many
	// of this frontend's requests in flight takes no more, and a request
	// whose model's workers are all at it gets 429 (default 0: no limit).
	MaxInFlightPerWorker int
	// MaxBodyBytes bounds a request body (default 4 MiB); a larger one
	// gets 413 Request Entity Too Large.
	MaxBodyBytes int64
	// BodyTimeout bounds reading a request body, from the end of its
	// headers (default 30s): a client that sends part of a body and
	// stalls gets 408 and its connection closed, instead of holding a
	// goroutine and what it sent for as long as it likes. The answer that
	// follows, however long it streams, is not bounded by it. (Served
	// through Handler, it needs a ResponseWriter that takes read
	// deadlines, as net/http's does.)
	BodyTimeout time.Duration
	// IdleTimeout is how long a kept-alive connection may wait for its
	// next request before the frontend closes it (default 2 minutes).
	IdleTimeout time.Duration
	// WriteTimeout is how long one write of an answer may wait for the
	// client to take bytes (default 30s). A client that stops reading, or
	// whose host vanished mid-stream (its connection stays open while TCP
	// retransmits: about 15 minutes with Linux's defaults), is then taken
	// as gone: its request is cancelled on the worker. Like BodyTimeout,
	// it needs a ResponseWriter that takes deadlines.
	WriteTimeout time.Duration
	// DefaultMaxTokens is how many tokens a request that gives no
	// max_tokens may generate, within the model's context length
	// (default 1024).
	DefaultMaxTokens int
	// DepartedIdle is how long a request on a worker that has left
	// discovery may go without a response before it is cut and migrated
	// (default 1s). A worker that stops gracefully leaves discovery and
	// keeps streaming until its requests finish; one that hangs or is cut
	// off goes quiet.
	DepartedIdle time.Duration
	// Logger logs failures (default the runtime's logger).
	Logger *slog.Logger
}

// Defaults of Config.
const (
	DefaultMaxMigrations    = 3
	DefaultMaxBodyBytes     = 4 << 20
	DefaultDefaultMaxTokens = 1024
	DefaultDepartedIdle     = time.Second
	DefaultBodyTimeout      = 30 * time.Second
	DefaultIdleTimeout      = 2 * time.Minute
	DefaultWriteTimeout     = 30 * time.Second
)

// HeaderMigrations names the response field that counts the times a
// completion was re-issued to another worker after one failed: a header
// on a JSON response or an error, a trailer on a stream (declared in its
// headers, sent after data: [DONE] or the error event).
const HeaderMigrations = "X-Loom-Migrations"

// HeaderRequestID names the response header that gives a completion's id
// (the response's "id") on every response to a request that went to
// the workers, errors included: the id the frontend's log lines about
// the request name, and the llm.Request.ID its workers get.
const HeaderRequestID = "X-Request-Id"

// Frontend serves the OpenAI API for the workers of one namespace.
type Frontend struct {
	rt           *loom.Runtime
	cfg          Config
	tok          *tokenizer.Tokenizer
	router       llm.Router
	client       *loom.Client[llm.Request, llm.Response]
	log          *slog.Logger
	m            *metrics.Metrics
	unknownModel *metrics.LLMModel
	mms          sync.Map // model -> *metrics.LLMModel
	states       sync.Pool

	models  atomic.Pointer[modelSet]
	idBase  string
	idSeq   atomic.Uint64
	created int64

	mu        sync.Mutex
	tracked   map[uint64]map[*attempt]struct{} // worker -> attempts running on it
	instCards map[uint64]llm.ModelCard         // worker -> its model card
	cards     map[string]llm.ModelCard         // every model ever seen: its card when last served
	// departed: attempts running on workers that left discovery (see
	// sweepDeparted).
	departed map[*attempt]seen

	mux     *http.ServeMux
	srvMu   sync.Mutex
	servers []*http.Server
	done    bool // Shutdown or Close was called: Serve serves no more

	stop    context.CancelFunc
	watchWG sync.WaitGroup
	synced  chan struct{}
}

// orDefault sets *v to d unless it is positive.
func orDefault[T int | int64 | time.Duration](v *T, d T) {
	if *v <= 0 {
		*v = d
	}
}

// modelSet is the models served now, replaced on every change so that
// requests read it without a lock.
type modelSet struct {
	// cards: model -> its card, as its workers in discovery now give it
	// (the shortest context length among them); a model with none keeps
	// its last card, so that it gets 503 rather than 404.
	cards map[string]llm.ModelCard
	names []string            // sorted
	alive map[uint64]string   // workers in discovery now -> the model each serves
	ids   map[string][]uint64 // model -> the ids of its workers in alive, sorted
}

// workers returns how many workers serve model now.
func (s *modelSet) workers(model string) int { return len(s.ids[model]) }

// New returns a frontend calling the workers of cfg.Namespace through rt.
// It starts watching discovery for workers at once; Close or Shutdown
// stops it.
func New(ctx context.Context, rt *loom.Runtime, cfg Config) (*Frontend, error) {
	if cfg.Namespace == "" {
		cfg.Namespace = llm.DefaultNamespace
	}
	if cfg.Router == nil {
		cfg.Router = llm.PickerRouter(loom.RoundRobin())
	}
	if cfg.Tokenizer == nil {
		cfg.Tokenizer = tokenizer.Default()
	}
	if cfg.MaxMigrations == 0 {
		cfg.MaxMigrations = DefaultMaxMigrations
	} else if cfg.MaxMigrations < 0 {
		cfg.MaxMigrations = 0
	}
	if cfg.MaxInFlightPerWorker < 0 {
		return nil, fmt.Errorf("llm/frontend: MaxInFlightPerWorker is %d; want 0 (no limit) or more", cfg.MaxInFlightPerWorker)
	}
	orDefault(&cfg.MaxBodyBytes, DefaultMaxBodyBytes)
	orDefault(&cfg.DefaultMaxTokens, DefaultDefaultMaxTokens)
	orDefault(&cfg.DepartedIdle, DefaultDepartedIdle)
	orDefault(&cfg.BodyTimeout, DefaultBodyTimeout)
	orDefault(&cfg.IdleTimeout, DefaultIdleTimeout)
	orDefault(&cfg.WriteTimeout, DefaultWriteTimeout)
	if cfg.Logger == nil {
		cfg.Logger = rt.Logger()
	}
	path := cfg.Namespace + "/" + llm.WorkerComponent + "/" + llm.GenerateEndpoint
	ep, err := rt.Endpoint(path)
	if err != nil {
		return nil, fmt.Errorf("llm/frontend: namespace %q: %w", cfg.Namespace, err)
	}
	var seed [6]byte
	_, _ = rand.Read(seed[:])
	f := &Frontend{
		rt: rt, cfg: cfg, tok: cfg.Tokenizer, router: cfg.Router, log: cfg.Logger, m: rt.Metrics(),
		idBase: hex.EncodeToString(seed[:]), created: time.Now().Unix(),
		tracked: make(map[uint64]map[*attempt]struct{}), departed: make(map[*attempt]seen), instCards: make(map[uint64]llm.ModelCard),
		cards: make(map[string]llm.ModelCard), synced: make(chan struct{}),
	}
	f.unknownModel = f.modelMetrics("")
	f.models.Store(&modelSet{})
	f.client, err = loom.NewClient[llm.Request, llm.Response](ctx, ep,
		loom.WithPicker(picker{f}), loom.WithWaitTimeout(time.Second))
	if err != nil {
		return nil, fmt.Errorf("llm/frontend: client of %s: %w", path, err)
	}
	wctx, stop := context.WithCancel(rt.Context())
	events, err := rt.Discovery().Watch(wctx, discovery.Query{Namespace: cfg.Namespace, Component: llm.WorkerComponent, Endpoint: llm.GenerateEndpoint})
	if err != nil {
		stop()
		f.client.Close()
		return nil, fmt.Errorf("llm/frontend: watching workers of %s: %w", path, err)
	}
	f.stop = stop
	f.watchWG.Add(1)
	go f.watch(events)
	f.mux = http.NewServeMux()
	f.mux.HandleFunc("GET /v1/models", f.handleModels)
	f.mux.HandleFunc("GET /v1/models/{model...}", f.handleModel)
	f.mux.HandleFunc("POST /v1/chat/completions", f.handleChat)
	f.mux.HandleFunc("POST /v1/completions", f.handleCompletion)
	f.mux.HandleFunc("GET /health", f.handleHealth)
	f.mux.HandleFunc("GET /live", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"live"}` + "\n"))
	})
	f.mux.Handle("GET /metrics", promhttp.HandlerFor(f.m.Registry(), promhttp.HandlerOpts{}))
	f.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		allow := routeMethods[r.URL.Path]
		if allow == "" && strings.HasPrefix(r.URL.Path, "/v1/models/") {
			allow = http.MethodGet
		}
		if allow != "" {
			w.Header().Set("Allow", allow)
			writeError(w, &apiError{Status: http.StatusMethodNotAllowed, Type: typeInvalid,
				Message: fmt.Sprintf("%s %s: method not allowed; use %s", r.Method, r.URL.Path, allow)})
			return
		}
		writeError(w, &apiError{Status: http.StatusNotFound, Type: typeNotFound,
			Message: fmt.Sprintf("no route %s %s; the API serves /v1/models, /v1/chat/completions and /v1/completions", r.Method, r.URL.Path)})
	})
	return f, nil
}

// Handler returns the frontend's HTTP handler, to serve on a server of the
// caller's or mount under another mux.
func (f *Frontend) Handler() http.Handler { return f.mux }

// WaitSynced blocks until the frontend has read discovery's current
// workers once, or ctx ends.
func (f *Frontend) WaitSynced(ctx context.Context) error {
	select {
	case <-f.synced:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Serve serves HTTP on l until Shutdown or Close; it returns
// http.ErrServerClosed then. Called after either, it closes l and returns
// http.ErrServerClosed at once, so that a Serve started in a goroutine
// that a shutdown overtook does not serve on.
func (f *Frontend) Serve(l net.Listener) error {
	srv := &http.Server{Handler: f.mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: f.cfg.IdleTimeout}
	f.srvMu.Lock()
	if f.done {
		f.srvMu.Unlock()
		l.Close()
		return http.ErrServerClosed
	}
	f.servers = append(f.servers, srv)
	f.srvMu.Unlock()
	return srv.Serve(l)
}

// Shutdown stops the HTTP servers Serve started from accepting requests,
// waits until the requests they are answering end (or ctx ends: then they
// are cut), and stops the frontend's discovery watch and worker client.
func (f *Frontend) Shutdown(ctx context.Context) error {
	f.srvMu.Lock()
	f.done = true
	servers := slices.Clone(f.servers)
	f.srvMu.Unlock()
	var errs []error
	for _, s := range servers {
		if err := s.Shutdown(ctx); err != nil {
			errs = append(errs, err)
			_ = s.Close()
		}
	}
	f.Close()
	return errors.Join(errs...)
}

// Close stops now: it closes the HTTP servers (cutting their requests),
// the discovery watch and the worker client.
func (f *Frontend) Close() {
	f.srvMu.Lock()
	f.done = true
	servers := f.servers
	f.servers = nil
	f.srvMu.Unlock()
	for _, s := range servers {
		_ = s.Close()
	}
	f.stop()
	f.watchWG.Wait()
	f.client.Close()
}

// watch keeps the model set and the worker -> model map from discovery,
// and cuts the requests of a worker that left once they go quiet, so that
// they migrate.
func (f *Frontend) watch(events <-chan discovery.Event) {
	defer f.watchWG.Done()
	syncedOnce := false
	// Every half DepartedIdle, so that a request is judged between one
	// and one and a half DepartedIdle after it was last seen to move.
	every := max(f.cfg.DepartedIdle/2, time.Millisecond)
	sweep := time.NewTimer(every)
	sweep.Stop()
	defer sweep.Stop()
	armed := false
	for {
		var ev discovery.Event
		select {
		case e, ok := <-events:
			if !ok {
				return
			}
			ev = e
		case <-sweep.C:
			if armed = f.sweepDeparted(time.Now()); armed {
				sweep.Reset(every)
			}
			continue
		}
		switch ev.Kind {
		case discovery.Added:
			card, err := llm.ModelCardFrom(ev.Instance.Metadata)
			if err != nil {
				f.log.Warn("llm frontend: skipping a worker without a model card", "instance", fmt.Sprintf("%x", ev.Instance.ID), "err", err)
				continue
			}
			f.mu.Lock()
			f.instCards[ev.Instance.ID] = card
			f.publishLocked()
			f.mu.Unlock()
		case discovery.Removed:
			// The worker takes no new request; those it runs are watched
			// from now on.
			now := time.Now()
			f.mu.Lock()
			delete(f.instCards, ev.Instance.ID)
			f.publishLocked()
			for a := range f.tracked[ev.Instance.ID] {
				f.departed[a] = seen{responses: a.responses.Load(), at: now}
			}
			pending := len(f.departed) > 0
			f.mu.Unlock()
			if pending && !armed {
				armed = true
				sweep.Reset(every)
			}
		case discovery.Synced:
			if !syncedOnce {
				syncedOnce = true
				close(f.synced)
			}
		}
	}
}

// seen is what a request on a departed worker had had when last looked at.
type seen struct {
	responses uint64
	at        time.Time
}

// sweepDeparted cuts each request on a departed worker that has had no
// response for Config.DepartedIdle, so that it migrates; a worker that
// left gracefully is still streaming and keeps its requests. It reports
// whether requests are left to watch.
func (f *Frontend) sweepDeparted(now time.Time) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for a, s := range f.departed {
		if now.Sub(s.at) < f.cfg.DepartedIdle {
			continue
		}
		if n := a.responses.Load(); n != s.responses {
			f.departed[a] = seen{responses: n, at: now}
			continue
		}
		a.cancel(errWorkerGone)
		delete(f.departed, a)
	}
	return len(f.departed) > 0
}

func (f *Frontend) publishLocked() {
	s := &modelSet{cards: make(map[string]llm.ModelCard), alive: make(map[uint64]string, len(f.instCards)), ids: make(map[string][]uint64)}
	for id, c := range f.instCards {
		m := c.Name
		s.alive[id] = m
		s.ids[m] = append(s.ids[m], id)
		// Requests are checked against the shortest context among the
		// model's workers (0 says none), so that one accepted fits the
		// worker it goes to, whichever that is.
		cur, ok := s.cards[m]
		if !ok || c.ContextLength > 0 && (cur.ContextLength == 0 || c.ContextLength < cur.ContextLength) {
			s.cards[m] = c
		}
	}
	for m := range s.ids {
		s.names = append(s.names, m)
		if _, known := f.cards[m]; !known {
			// Its metrics from the start, at 0, before any request
			// names it.
			f.modelMetrics(m)
		}
		f.cards[m] = s.cards[m]
	}
	for m, c := range f.cards {
		if _, ok := s.cards[m]; !ok {
			s.cards[m] = c // known once: 503 rather than 404 while it has no worker
		}
	}
	for _, ids := range s.ids {
		slices.Sort(ids)
	}
	slices.Sort(s.names)
	f.models.Store(s)
}

// track records that attempt a runs on worker, so that the worker leaving
// discovery cuts it; it reports false if the worker has left already.
func (f *Frontend) track(a *attempt, worker uint64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.instCards[worker]; !ok {
		return false
	}
	set := f.tracked[worker]
	if set == nil {
		set = make(map[*attempt]struct{})
		f.tracked[worker] = set
	}
	set[a] = struct{}{}
	return true
}

func (f *Frontend) untrack(a *attempt, worker uint64) {
	f.mu.Lock()
	delete(f.departed, a)
	if set := f.tracked[worker]; set != nil {
		delete(set, a)
		if len(set) == 0 {
			delete(f.tracked, worker)
		}
	}
	f.mu.Unlock()
}

// routeMethods gives the method of each route the frontend serves, so
// that another method on it gets 405 rather than 404. (GET routes take
// HEAD too.)
var routeMethods = map[string]string{
	"/v1/models":           "GET, HEAD",
	"/v1/chat/completions": http.MethodPost,
	"/v1/completions":      http.MethodPost,
	"/health":              "GET, HEAD",
	"/live":                "GET, HEAD",
	"/metrics":             "GET, HEAD",
}

// modelObject is a model as /v1/models lists it.
type modelObject struct {
	ID            string `json:"id"`
	Object        string `json:"object"`
	Created       int64  `json:"created"`
	OwnedBy       string `json:"owned_by"`
	ContextLength int    `json:"context_length,omitempty"`
	Workers       int    `json:"workers"`
}

func (f *Frontend) modelObject(s *modelSet, name string) modelObject {
	return modelObject{ID: name, Object: "model", Created: f.created, OwnedBy: "loom",
		ContextLength: s.cards[name].ContextLength, Workers: s.workers(name)}
}

func (f *Frontend) handleModels(w http.ResponseWriter, _ *http.Request) {
	s := f.models.Load()
	out := struct {
		Object string        `json:"object"`
		Data   []modelObject `json:"data"`
	}{Object: "list", Data: []modelObject{}}
	for _, n := range s.names {
		out.Data = append(out.Data, f.modelObject(s, n))
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

// handleModel answers GET /v1/models/{model}: the model as listed, or 404
// when no worker serves it now.
func (f *Frontend) handleModel(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("model")
	s := f.models.Load()
	if s.workers(name) == 0 {
		msg := fmt.Sprintf("model %q does not exist: no worker has served it (GET /v1/models lists the served models)", name)
		if _, known := s.cards[name]; known {
			msg = fmt.Sprintf("model %q has no worker now (GET /v1/models lists the served models)", name)
		}
		writeError(w, &apiError{Status: http.StatusNotFound, Type: typeInvalid, Param: "model", Code: "model_not_found", Message: msg})
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(f.modelObject(s, name))
}

func (f *Frontend) handleHealth(w http.ResponseWriter, _ *http.Request) {
	s := f.models.Load()
	w.Header().Set("Content-Type", "application/json")
	status, code := "ready", http.StatusOK
	if len(s.alive) == 0 {
		status, code = "notready", http.StatusServiceUnavailable
	}
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(struct {
		Status  string   `json:"status"`
		Models  []string `json:"models"`
		Workers int      `json:"workers"`
	}{status, append([]string{}, s.names...), len(s.alive)})
}

// newID returns a request id: random per process, then a counter.
func (f *Frontend) newID(prefix string) string {
	return prefix + f.idBase + fmt.Sprintf("%08x", f.idSeq.Add(1))
}
