package bench

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// A Workload makes the requests of a run. Next returns the next request
// to send (nil when the workload has no more, as a trace at its end); Done
// hands back its outcome, so that a conversation can continue with the
// answer in its history. Both are called from many goroutines.
type Workload interface {
	Next() *Item
	Done(it *Item, o *Outcome)
}

// Item is one request of a workload.
type Item struct {
	Messages  []Message
	MaxTokens int
	// At is when the request arrives, from the start of the run, for a
	// workload that says so (a trace); -1 otherwise.
	At   time.Duration
	conv *conversation
}

// Prompts are made of common English words, each one token after a space
// for Loom's tokenizer (a test checks it) and for the usual BPE
// vocabularies, so a prompt of n words is about n tokens plus the chat
// template's. The server's count (usage.prompt_tokens) is what the
// results report.
var vocabulary = strings.Fields(`the of and to in is was for on that with as by at from his her it an were are which this
be or has had not but first one their new after who they have two been other all during
when time more most some only over many these would can such world year where state city
may under between both then through while well three team same part since area about
season school war life work number people before four early age song music long best game
could set group end like back high record river also place name main made left five make
good each said take line side field book small water light house point model token block
cache worker event plane stream order power story start home word night land system front
level south north east west value color green black white blue red large short quick slow
bright dark open close paper table chair window door road train ship bird fish tree stone
metal glass sand cloud rain snow wind lake sea ocean hill valley forest garden farm market
bank office wall street square center circle`)

// words returns n words drawn from rng.
func words(rng *rand.Rand, n int) string {
	var b strings.Builder
	b.Grow(n * 6)
	for i := range n {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(vocabulary[rng.IntN(len(vocabulary))])
	}
	return b.String()
}

// systemPrompt returns the first n words of group g's system prompt: the
// same words for the same group in every run, so that a shorter prompt of
// the group is a prefix of a longer one.
func systemPrompt(seed uint64, g, n int) string {
	return words(rand.New(rand.NewPCG(seed^0x5eed, uint64(g))), n)
}

// PrefixConfig shapes the prefix-heavy workload.
type PrefixConfig struct {
	// Groups of conversations each share one system prompt of
	// PrefixTokens words.
	Groups       int
	PrefixTokens int
	// UserTokens words make each user turn, unique to it.
	UserTokens int
	// OutputTokens bounds each answer (max_tokens).
	OutputTokens int
	// Turns per conversation: each turn after the first resends the
	// history (system prompt, earlier turns and answers) and a new user
	// turn.
	Turns int
	// Seed makes the prompts; equal seeds give equal system prompts.
	Seed uint64
}

type conversation struct {
	msgs []Message
	turn int
}

type prefixWorkload struct {
	cfg     PrefixConfig
	mu      sync.Mutex
	rng     *rand.Rand
	idle    []*conversation
	started int
	prompts []string
}

// Prefix returns the prefix-heavy workload: conversations spread evenly
// over cfg.Groups, each opening with its group's system prompt, each of
// cfg.Turns turns resending the whole conversation. Conversations waiting
// for their next turn are resumed before new ones start, in random order.
func Prefix(cfg PrefixConfig) (Workload, error) {
	for _, f := range []struct {
		name string
		v    int
	}{{"groups", cfg.Groups}, {"prefix tokens", cfg.PrefixTokens}, {"user tokens", cfg.UserTokens}, {"output tokens", cfg.OutputTokens}, {"turns", cfg.Turns}} {
		if f.v < 1 {
			return nil, fmt.Errorf("bench: prefix workload: %s = %d, want at least 1", f.name, f.v)
		}
	}
	w := &prefixWorkload{cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Seed, 1))}
	for g := range cfg.Groups {
		w.prompts = append(w.prompts, systemPrompt(cfg.Seed, g, cfg.PrefixTokens))
	}
	return w, nil
}

func (w *prefixWorkload) Next() *Item {
	w.mu.Lock()
	defer w.mu.Unlock()
	var c *conversation
	if n := len(w.idle); n > 0 {
		i := w.rng.IntN(n)
		c = w.idle[i]
		w.idle[i] = w.idle[n-1]
		w.idle = w.idle[:n-1]
	} else {
		g := w.started % w.cfg.Groups
		w.started++
		c = &conversation{msgs: []Message{{Role: "system", Content: w.prompts[g]}}}
	}
	c.msgs = append(c.msgs, Message{Role: "user", Content: words(w.rng, w.cfg.UserTokens)})
	c.turn++
	return &Item{Messages: c.msgs, MaxTokens: w.cfg.OutputTokens, At: -1, conv: c}
}

func (w *prefixWorkload) Done(it *Item, o *Outcome) {
	c := it.conv
	if o.ErrKind != "" || c.turn >= w.cfg.Turns {
		return
	}
	c.msgs = append(c.msgs, Message{Role: "assistant", Content: o.Text})
	w.mu.Lock()
	w.idle = append(w.idle, c)
	w.mu.Unlock()
}

// UniqueConfig shapes the no-sharing workload.
type UniqueConfig struct {
	InputTokens, OutputTokens int
	Seed                      uint64
}

type uniqueWorkload struct {
	cfg UniqueConfig
	mu  sync.Mutex
	rng *rand.Rand
}

// Unique returns the no-sharing workload: single-turn requests of
// cfg.InputTokens random words each.
func Unique(cfg UniqueConfig) (Workload, error) {
	if cfg.InputTokens < 1 || cfg.OutputTokens < 1 {
		return nil, fmt.Errorf("bench: unique workload: input tokens %d and output tokens %d must both be at least 1", cfg.InputTokens, cfg.OutputTokens)
	}
	return &uniqueWorkload{cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Seed, 2))}, nil
}

func (w *uniqueWorkload) Next() *Item {
	w.mu.Lock()
	text := words(w.rng, w.cfg.InputTokens)
	w.mu.Unlock()
	return &Item{Messages: []Message{{Role: "user", Content: text}}, MaxTokens: w.cfg.OutputTokens, At: -1}
}

func (*uniqueWorkload) Done(*Item, *Outcome) {}

// TraceRecord is one line of a trace file: a JSON object with the
// request's arrival in milliseconds from the trace's start, its prompt
// and output lengths in tokens, and optionally the prefix group whose
// shared system prompt it opens with (absent or negative: none). Other
// fields are ignored, so Mooncake-style traces with hash_ids load too.
type TraceRecord struct {
	Timestamp    int64 `json:"timestamp"`
	InputLength  int   `json:"input_length"`
	OutputLength int   `json:"output_length"`
	PrefixGroup  int   `json:"prefix_group"`
}

// ErrBadTrace is wrapped by the error of a trace file line that is not
// a valid TraceRecord.
var ErrBadTrace = errors.New("bench: bad trace")

// maxTraceTokens bounds a trace record's lengths.
const maxTraceTokens = 1 << 20

// ParseTrace reads a trace file's JSON lines (blank lines skipped). name
// is used in errors, which give the line number and what is wrong.
func ParseTrace(r io.Reader, name string) ([]TraceRecord, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	var out []TraceRecord
	line := 0
	for sc.Scan() {
		line++
		b := sc.Bytes()
		if len(strings.TrimSpace(string(b))) == 0 {
			continue
		}
		var raw struct {
			Timestamp    *json.Number `json:"timestamp"`
			InputLength  *int         `json:"input_length"`
			OutputLength *int         `json:"output_length"`
			PrefixGroup  *int         `json:"prefix_group"`
		}
		if err := json.Unmarshal(b, &raw); err != nil {
			return nil, fmt.Errorf("%w: %s line %d: %v (each line must be a JSON object like {\"timestamp\": 0, \"input_length\": 512, \"output_length\": 64, \"prefix_group\": 3})", ErrBadTrace, name, line, err)
		}
		bad := func(format string, args ...any) error {
			return fmt.Errorf("%w: %s line %d: %s", ErrBadTrace, name, line, fmt.Sprintf(format, args...))
		}
		switch {
		case raw.Timestamp == nil:
			return nil, bad("no timestamp (milliseconds from the trace's start)")
		case raw.InputLength == nil:
			return nil, bad("no input_length (prompt tokens)")
		case raw.OutputLength == nil:
			return nil, bad("no output_length (tokens to generate)")
		}
		ts, err := strconv.ParseFloat(raw.Timestamp.String(), 64)
		if err != nil || ts < 0 {
			return nil, bad("timestamp %s is not a non-negative number of milliseconds", raw.Timestamp)
		}
		rec := TraceRecord{Timestamp: int64(ts), InputLength: *raw.InputLength, OutputLength: *raw.OutputLength, PrefixGroup: -1}
		if raw.PrefixGroup != nil && *raw.PrefixGroup >= 0 {
			rec.PrefixGroup = *raw.PrefixGroup
		}
		if rec.InputLength < 1 || rec.InputLength > maxTraceTokens {
			return nil, bad("input_length %d is outside 1..%d", rec.InputLength, maxTraceTokens)
		}
		if rec.OutputLength < 1 || rec.OutputLength > maxTraceTokens {
			return nil, bad("output_length %d is outside 1..%d", rec.OutputLength, maxTraceTokens)
		}
		if n := len(out); n > 0 && rec.Timestamp < out[n-1].Timestamp {
			return nil, bad("timestamp %d is before the previous line's %d (sort the trace by timestamp)", rec.Timestamp, out[n-1].Timestamp)
		}
		out = append(out, rec)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %s after line %d: %v", ErrBadTrace, name, line, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: %s has no records", ErrBadTrace, name)
	}
	return out, nil
}

// LoadTrace reads the trace file at path (see ParseTrace).
func LoadTrace(path string) ([]TraceRecord, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("bench: trace: %w", err)
	}
	defer f.Close()
	return ParseTrace(f, path)
}

// TraceConfig shapes the replay of a trace.
type TraceConfig struct {
	// PrefixTokens is the length of a prefix group's shared system
	// prompt, cut to the record's input length.
	PrefixTokens int
	// Speed scales time: 2 replays twice as fast. 0 means 1.
	Speed float64
	Seed  uint64
}

type traceWorkload struct {
	recs []TraceRecord
	cfg  TraceConfig
	mu   sync.Mutex
	next int
	rng  *rand.Rand
}

// Trace returns a workload that replays recs in order, each arriving at
// its timestamp (scaled by cfg.Speed) when the run is open-loop by trace.
func Trace(recs []TraceRecord, cfg TraceConfig) Workload {
	if cfg.Speed <= 0 {
		cfg.Speed = 1
	}
	return &traceWorkload{recs: recs, cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Seed, 3))}
}

func (w *traceWorkload) Next() *Item {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.next >= len(w.recs) {
		return nil
	}
	r := w.recs[w.next]
	w.next++
	var msgs []Message
	user := r.InputLength
	if r.PrefixGroup >= 0 && w.cfg.PrefixTokens > 0 {
		p := min(w.cfg.PrefixTokens, r.InputLength-1)
		if p > 0 {
			msgs = append(msgs, Message{Role: "system", Content: systemPrompt(w.cfg.Seed, r.PrefixGroup, p)})
			user -= p
		}
	}
	msgs = append(msgs, Message{Role: "user", Content: words(w.rng, user)})
	at := time.Duration(float64(r.Timestamp-w.recs[0].Timestamp) * float64(time.Millisecond) / w.cfg.Speed)
	return &Item{Messages: msgs, MaxTokens: r.OutputLength, At: at}
}

func (*traceWorkload) Done(*Item, *Outcome) {}
