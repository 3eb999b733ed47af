package bench

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"testing"
)

const (
	msgSize     = 64      // bytes in every request and response item
	streamItems = 100_000 // response items per call in BenchmarkStream
	callers     = 64      // concurrent callers in BenchmarkParallel
	idleStreams = 10_000  // open streams in BenchmarkIdleStreams
)

// pattern is the body of every message; the first 8 bytes are replaced by
// a sequence number, so that a response can be checked against its call.
var pattern = func() (p [msgSize]byte) {
	for i := range p {
		p[i] = 'a' + byte(i%26)
	}
	return p
}()

// fill makes p the message with sequence number seq, reusing p's array.
func fill(p []byte, seq uint64) []byte {
	p = append(p[:0], pattern[:]...)
	binary.BigEndian.PutUint64(p, seq)
	return p
}

// seqOf returns the sequence number of message p (for a stream request,
// the number of items asked for).
func seqOf(p []byte) uint64 {
	if len(p) < 8 {
		return 0
	}
	return binary.BigEndian.Uint64(p)
}

// check reports whether p is the message with sequence number seq.
func check(p []byte, seq uint64) error {
	if len(p) != msgSize {
		return fmt.Errorf("got a %d-byte message, want %d bytes", len(p), msgSize)
	}
	if got := seqOf(p); got != seq {
		return fmt.Errorf("got message %d, want %d", got, seq)
	}
	if !bytes.Equal(p[8:], pattern[8:]) {
		return fmt.Errorf("message %d: body corrupted", seq)
	}
	return nil
}

// errShortStream reports a stream that ended before all its items came.
var errShortStream = errors.New("stream ended early")

// peer is one system under test: its server runs in this process and its
// client reaches it over loopback TCP.
type peer struct {
	// unary sends req and returns the one response, which may reuse buf.
	// It is safe for concurrent use.
	unary func(ctx context.Context, req, buf []byte) ([]byte, error)
	// stream sends req, whose sequence number is the count of items to
	// send back, and calls item for each response in order. The slice
	// given to item is valid only during the call.
	stream func(ctx context.Context, req []byte, item func([]byte) error) error
	// close stops the client and the server and waits for their goroutines.
	close func()
}

// starter starts a peer, failing tb if it cannot.
type starter func(tb testing.TB) *peer

// counts are what a benchmark reports besides time, read before its loop:
// garbage collections, and the CPU time the whole process spent (both
// sides of every peer run in it), which a shared machine's neighbours
// disturb less than they disturb elapsed time.
type counts struct {
	gc  uint64
	cpu int64 // nanoseconds of user and system time
}

func startCounts() counts { return counts{gcCycles(), cpuTime()} }

// report reports the collections and the process's CPU time since
// startCounts, per op: cpu-ns/op, or per item (cpu-ns/item) when an op
// carries items.
func (c counts) report(b *testing.B, items int) {
	b.ReportMetric(float64(gcCycles()-c.gc)/float64(b.N), "gc/op")
	if c.cpu < 0 {
		return // no CPU clock on this platform
	}
	cpu := float64(cpuTime()-c.cpu) / float64(b.N)
	if items > 1 {
		b.ReportMetric(cpu/float64(items), "cpu-ns/item")
		return
	}
	b.ReportMetric(cpu, "cpu-ns/op")
}

// gcCycles returns how many collections the process has finished. A
// benchmark reports the cycles its ops caused as gc/op: a count, where
// the collector's share of ns/op is a time that varies from run to run.
func gcCycles() uint64 {
	s := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// unaryOnce makes one checked call.
func unaryOnce(ctx context.Context, p *peer, req, buf []byte, seq uint64) ([]byte, error) {
	req = fill(req, seq)
	resp, err := p.unary(ctx, req, buf)
	if err != nil {
		return resp, err
	}
	return resp, check(resp, seq)
}

// streamOnce makes one streaming call for n items and checks every item.
func streamOnce(ctx context.Context, p *peer, req []byte, n uint64) error {
	var next uint64
	err := p.stream(ctx, fill(req, n), func(item []byte) error {
		if err := check(item, next); err != nil {
			return err
		}
		next++
		return nil
	})
	if err == nil && next != n {
		err = fmt.Errorf("%w: %d of %d items", errShortStream, next, n)
	}
	return err
}

// parallel makes n checked unary calls from k goroutines at once, each
// goroutine calling again as soon as its call returns. It returns the
// first error.
func parallel(ctx context.Context, p *peer, k, n int) error {
	var next atomic.Int64
	var first error
	var once sync.Once
	var wg sync.WaitGroup
	for range k {
		wg.Go(func() {
			req, buf := make([]byte, 0, msgSize), make([]byte, 0, msgSize)
			for {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				resp, err := unaryOnce(ctx, p, req, buf, uint64(i))
				if err != nil {
					once.Do(func() { first = err })
					next.Store(int64(n)) // stop the others
					return
				}
				buf = resp
			}
		})
	}
	wg.Wait()
	return first
}
