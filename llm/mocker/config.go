package mocker

import (
	"errors"
	"fmt"
	"time"

	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/llm"
	"github.com/loomrt/loom/llm/tokenizer"
)

// Config shapes a mock worker. Every field has a default that works
// unset (see Defaults), and each is a plain value, so a command line can
// bind a flag to it.
type Config struct {
	// Namespace the worker serves in; default llm.DefaultNamespace.
	Namespace string
	// Model is the served model's name; default DefaultModel.
	Model string
	// BlockSize is tokens per KV block; default llm.DefaultBlockSize.
	BlockSize int
	// KvBlocks is the KV cache's size in blocks; default 8192.
	KvBlocks int
	// ContextLength bounds prompt plus output tokens; default 8192.
	ContextLength int
	// MaxBatch is how many requests are decoded together (running); more
	// wait. Default 32.
	MaxBatch int
	// PrefillPerToken is the simulated time to prefill one prompt token
	// not found in the cache; default 20µs (a 1,000-token cold prompt
	// takes 20 ms). Negative means 0.
	PrefillPerToken time.Duration
	// DecodeStep is the simulated time of one decode step of the whole
	// batch (one token for every running request); default 5ms. Negative
	// means 0.
	DecodeStep time.Duration
	// OutputVocab is the list of tokens output is drawn from; default
	// DefaultVocab.
	OutputVocab []uint32
	// MetricsInterval is how often load_metrics is published when nothing
	// changes; default 1s. MetricsMinInterval rate-limits publishing on
	// change; default 20ms.
	MetricsInterval    time.Duration
	MetricsMinInterval time.Duration

	// Prefill makes this worker a prefill worker: it serves no generate
	// endpoint and takes jobs from the prefill queue instead.
	Prefill bool
	// RemotePrefill makes a decode worker hand prompts of more than
	// RemotePrefillMin uncached tokens (default 512) to prefill workers
	// through the prefill queue.
	RemotePrefill    bool
	RemotePrefillMin int
	// PrefillAckWait is the prefill queue's ack wait (default 3s): how long
	// a job may go without an acknowledgement or a progress report before
	// the queue delivers it to another prefill worker. Progress is
	// reported every half of it while a prefill runs, so it bounds how long
	// a request waits on a prefill worker that died, not how long a
	// prefill may take. It applies to the queue's consumer, which prefill
	// workers create; the runtime's queue.ack_wait (30s, for jobs that may
	// wait longer) does not apply to this queue.
	PrefillAckWait time.Duration
}

// Defaults of Config.
const (
	DefaultModel           = "mock-model"
	DefaultKvBlocks        = 8192
	DefaultContextLength   = 8192
	DefaultMaxBatch        = 32
	DefaultPrefillPerToken = 20 * time.Microsecond
	DefaultDecodeStep      = 5 * time.Millisecond
	DefaultRemotePrefill   = 512
	DefaultPrefillAckWait  = 3 * time.Second
)

// DefaultVocab is the output vocabulary used when Config.OutputVocab is
// empty: the words of Loom's tokenizer (package llm/tokenizer), each after
// a space, so that a frontend decodes the output to readable text.
var DefaultVocab = tokenizer.Default().OutputVocab()

// withDefaults returns c with its zero fields set, or an error naming a
// field with a bad value.
func (c Config) withDefaults() (Config, error) {
	if c.Namespace == "" {
		c.Namespace = llm.DefaultNamespace
	}
	if c.Model == "" {
		c.Model = DefaultModel
	}
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.BlockSize, llm.DefaultBlockSize)
	def(&c.KvBlocks, DefaultKvBlocks)
	def(&c.ContextLength, DefaultContextLength)
	def(&c.MaxBatch, DefaultMaxBatch)
	def(&c.RemotePrefillMin, DefaultRemotePrefill)
	if c.PrefillPerToken == 0 {
		c.PrefillPerToken = DefaultPrefillPerToken
	}
	if c.DecodeStep == 0 {
		c.DecodeStep = DefaultDecodeStep
	}
	if c.PrefillAckWait <= 0 {
		c.PrefillAckWait = DefaultPrefillAckWait
	}
	c.PrefillPerToken = max(c.PrefillPerToken, 0)
	c.DecodeStep = max(c.DecodeStep, 0)
	if c.MetricsInterval <= 0 {
		c.MetricsInterval = time.Second
	}
	if c.MetricsMinInterval <= 0 {
		c.MetricsMinInterval = 20 * time.Millisecond
	}
	if len(c.OutputVocab) == 0 {
		c.OutputVocab = DefaultVocab
	}
	var errs []error
	if err := discovery.ValidateNamespace(c.Namespace); err != nil {
		errs = append(errs, fmt.Errorf("mocker: namespace: %w", err))
	}
	for _, f := range []struct {
		name string
		v    int
	}{{"block size", c.BlockSize}, {"kv blocks", c.KvBlocks}, {"context length", c.ContextLength}, {"max batch", c.MaxBatch}, {"remote prefill min", c.RemotePrefillMin}} {
		if f.v < 1 {
			errs = append(errs, fmt.Errorf("mocker: %s is %d; it must be at least 1 (or 0 for the default)", f.name, f.v))
		}
	}
	if c.Prefill && c.RemotePrefill {
		errs = append(errs, errors.New("mocker: a worker is either a prefill worker (Prefill) or hands prefills to them (RemotePrefill), not both"))
	}
	return c, errors.Join(errs...)
}

// Card returns the model card the worker registers.
func (c Config) Card() llm.ModelCard {
	c, _ = c.withDefaults()
	return llm.ModelCard{Name: c.Model, BlockSize: c.BlockSize, ContextLength: c.ContextLength, KvBlocks: c.KvBlocks}
}
