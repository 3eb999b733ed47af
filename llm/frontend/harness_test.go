package frontend_test

import (
	"context"
	"iter"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/llm"
	"github.com/loomrt/loom/llm/frontend"
	"github.com/loomrt/loom/llm/tokenizer"
	"github.com/loomrt/loom/loomtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const model = "test-model"

// stack is a frontend and workers, each on a runtime of its own sharing a
// discovery store, calling each other over a real request plane (tcp, or
// nats on an embedded server): processes in all but name.
type stack struct {
	*loomtest.System
	t   testing.TB
	fe  *frontend.Frontend
	rt  *loom.Runtime
	url string // http://127.0.0.1:port
	// listener, if set, wraps the frontend's listener before start.
	listener func(net.Listener) net.Listener
}

func newStack(t testing.TB, plane string, fcfg frontend.Config) *stack {
	t.Helper()
	return newStackOn(t, plane, fcfg, nil)
}

// newStackOn is newStack with the frontend's runtime on the discovery
// handle wrap makes of its own (nil: the handle itself), made with opts.
func newStackOn(t testing.TB, plane string, fcfg frontend.Config, wrap func(discovery.Discovery) discovery.Discovery, opts ...loom.Option) *stack {
	t.Helper()
	s := newSystem(t, plane, wrap, opts...)
	s.start(fcfg)
	return s
}

// newSystem is a stack whose frontend is not started yet: s.rt is the
// runtime start will give it.
func newSystem(t testing.TB, plane string, wrap func(discovery.Discovery) discovery.Discovery, opts ...loom.Option) *stack {
	t.Helper()
	s := &stack{System: loomtest.New(t, loomtest.Options{Plane: plane}), t: t}
	s.Config.Client.WaitTimeout = 2 * time.Second
	d := s.Connect()
	if wrap != nil {
		d = wrap(d)
	}
	s.rt = s.RuntimeOn(d, opts...)
	return s
}

// start starts the frontend on s.rt, serving HTTP at s.url until the
// test ends.
func (s *stack) start(fcfg frontend.Config) {
	t := s.t
	t.Helper()
	fe, err := frontend.New(context.Background(), s.rt, fcfg)
	if err != nil {
		t.Fatal(err)
	}
	s.fe = fe
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.url = "http://" + l.Addr().String()
	if s.listener != nil {
		l = s.listener(l)
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = fe.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = fe.Shutdown(ctx)
		<-served
	})
}

// testWorker is an engine serving llm.Request the way a worker does: its
// output is a function of the original prompt and the position, so a
// request resumed elsewhere (a migration) continues the same text.
type testWorker struct {
	rt   *loom.Runtime
	disc discovery.Discovery
	card llm.ModelCard

	delay time.Duration
	// pauseAfter makes every request wait for its kill after emitting
	// that many tokens (0: never); paused is signalled each time.
	pauseAfter int
	paused     chan string
	// fail makes every request fail with this error after its first
	// token.
	fail error
	// burst makes every request one response carrying all its tokens.
	burst bool
	// gate, if set, is received from before each token after the first.
	gate chan struct{}

	mu       sync.Mutex
	requests []llm.Request
	killed   chan string // request ids whose handler context ended early
	served   atomic.Int64
	running  atomic.Int64 // requests whose Generate has not returned
}

type workerOpts struct {
	model      string
	delay      time.Duration
	pauseAfter int
	fail       error
	ctxLen     int
	burst      bool
	gate       chan struct{}
}

func (s *stack) worker(o workerOpts) *testWorker {
	s.t.Helper()
	if o.model == "" {
		o.model = model
	}
	d := s.Connect()
	rt := s.RuntimeOn(d)
	w := &testWorker{rt: rt, disc: d, card: llm.ModelCard{Name: o.model, BlockSize: 16, ContextLength: o.ctxLen},
		delay: o.delay, pauseAfter: o.pauseAfter, fail: o.fail, burst: o.burst, gate: o.gate,
		paused: make(chan string, 64), killed: make(chan string, 64)}
	ep, err := rt.Endpoint(llm.DefaultNamespace + "/" + llm.WorkerComponent + "/" + llm.GenerateEndpoint)
	if err != nil {
		s.t.Fatal(err)
	}
	if err := loom.Serve(context.Background(), ep, loom.Engine[llm.Request, llm.Response](w), loom.WithMetadata(w.card.Metadata())); err != nil {
		s.t.Fatal(err)
	}
	return w
}

// kill ends the worker at once: its requests are cancelled and it leaves
// discovery, as a crashed process's would.
func (w *testWorker) kill() {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = w.rt.Shutdown(ctx)
}

// outputToken is the k-th token generated for prompt.
func outputToken(prompt []uint32, k int) uint32 {
	var seed uint32
	for _, t := range prompt {
		seed = seed*31 + t
	}
	out := tokenizer.Default().OutputVocab()
	return out[(int(seed%997)+k*7)%len(out)]
}

func (w *testWorker) Generate(ctx context.Context, req llm.Request) iter.Seq2[llm.Response, error] {
	return func(yield func(llm.Response, error) bool) {
		w.mu.Lock()
		w.requests = append(w.requests, req)
		w.mu.Unlock()
		w.served.Add(1)
		w.running.Add(1)
		defer w.running.Add(-1)
		prompt := req.TokenIDs[:len(req.TokenIDs)-req.Generated]
		if w.burst {
			resp := llm.Response{Worker: w.rt.ID(), FinishReason: llm.FinishLength}
			for i := range req.MaxTokens {
				resp.TokenIDs = append(resp.TokenIDs, outputToken(prompt, req.Generated+i))
			}
			yield(resp, nil)
			return
		}
		for i := range req.MaxTokens {
			if i > 0 && w.gate != nil {
				select {
				case <-w.gate:
				case <-ctx.Done():
					w.killed <- req.ID
					return
				}
			}
			if i == w.pauseAfter && w.pauseAfter > 0 {
				w.paused <- req.ID
				<-ctx.Done()
			}
			if ctx.Err() != nil {
				w.killed <- req.ID
				return
			}
			if w.delay > 0 {
				select {
				case <-time.After(w.delay):
				case <-ctx.Done():
					w.killed <- req.ID
					return
				}
			}
			if i == 1 && w.fail != nil {
				yield(llm.Response{}, w.fail)
				return
			}
			resp := llm.Response{TokenIDs: []uint32{outputToken(prompt, req.Generated+i)}}
			if i == 0 {
				resp.Worker = w.rt.ID()
				resp.CachedTokens = len(prompt) / 2
			}
			if i == req.MaxTokens-1 {
				resp.FinishReason = llm.FinishLength
			}
			if !yield(resp, nil) {
				return
			}
		}
	}
}

func (w *testWorker) lastRequest() llm.Request {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.requests) == 0 {
		return llm.Request{}
	}
	return w.requests[len(w.requests)-1]
}

// waitFor waits for ch to yield, failing the test with what after a
// generous bound (it is a deadlock guard, not a timing assertion).
func waitFor[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(20 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
	var zero T
	return zero
}

// waitReady waits until the frontend lists n workers.
func (s *stack) waitReady(n int) {
	s.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(s.url + "/health")
		if err == nil {
			var h struct{ Workers int }
			_ = decodeJSON(resp, &h)
			if h.Workers == n {
				return
			}
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("the frontend never saw %d workers", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// laggingStack is a stack whose frontend allows maxMigrations, with its
// runtime's discovery behind a laggingWatch; migrating is closed when the
// frontend logs its first migration.
func laggingStack(t testing.TB, maxMigrations int) (s *stack, lag *laggingWatch, migrating <-chan struct{}) {
	t.Helper()
	lag = &laggingWatch{}
	ch := make(chan struct{})
	log := slog.New(signalLog{msg: "llm frontend: migrating request", ch: ch, once: new(sync.Once)})
	s = newStackOn(t, "tcp", frontend.Config{MaxMigrations: maxMigrations, Logger: log}, func(d discovery.Discovery) discovery.Discovery {
		lag.Discovery = d
		return lag
	})
	return s, lag, ch
}

// laggingWatch is a discovery handle whose first watch of the workers
// (the frontend's client's, made before the frontend's own) stops
// delivering events while held, as a watch that lags behind another does.
type laggingWatch struct {
	discovery.Discovery
	mu      sync.Mutex
	watches int
	held    bool
	release chan struct{} // closed by open
}

func (l *laggingWatch) Watch(ctx context.Context, q discovery.Query) (<-chan discovery.Event, error) {
	in, err := l.Discovery.Watch(ctx, q)
	if err != nil || q.Endpoint != llm.GenerateEndpoint {
		return in, err
	}
	l.mu.Lock()
	l.watches++
	first := l.watches == 1
	l.mu.Unlock()
	if !first {
		return in, nil
	}
	out := make(chan discovery.Event)
	send := func(ev discovery.Event) bool {
		select {
		case out <- ev:
			return true
		case <-ctx.Done():
			return false
		}
	}
	go func() {
		defer close(out)
		var held []discovery.Event
		for {
			l.mu.Lock()
			holding, release := l.held, l.release
			l.mu.Unlock()
			if !holding {
				for _, ev := range held {
					if !send(ev) {
						return
					}
				}
				held = nil
			}
			select {
			case ev, ok := <-in:
				if !ok {
					return
				}
				l.mu.Lock()
				holding = l.held
				l.mu.Unlock()
				if holding {
					held = append(held, ev)
				} else if !send(ev) {
					return
				}
			case <-release:
			}
		}
	}()
	return out, nil
}

// hold stops the lagging watch's events until open.
func (l *laggingWatch) hold() {
	l.mu.Lock()
	l.held, l.release = true, make(chan struct{})
	l.mu.Unlock()
}

// open delivers the held events and those after them.
func (l *laggingWatch) open() {
	l.mu.Lock()
	l.held = false
	close(l.release)
	l.mu.Unlock()
}

// signalLog is a slog handler that closes ch the first time msg is logged.
type signalLog struct {
	msg  string
	ch   chan struct{}
	once *sync.Once
}

func (h signalLog) Enabled(context.Context, slog.Level) bool { return true }
func (h signalLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.once.Do(func() { close(h.ch) })
	}
	return nil
}
func (h signalLog) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h signalLog) WithGroup(string) slog.Handler      { return h }
