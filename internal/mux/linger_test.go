package mux

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/internal/wire"
)

// lingerRig is a conn whose writer goroutine writes into a net.Pipe, so
// that a write stays in flight until the test reads it.
type lingerRig struct {
	t    *testing.T
	c    *conn
	peer net.Conn
	rd   *wire.Reader
}

func newLingerRig(t *testing.T, linger time.Duration) *lingerRig {
	a, b := net.Pipe()
	c := newConn(a, wire.Preface{}, wire.DefaultMaxFrameSize, 0, 0, limits{}, quiet)
	c.linger = linger
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.writeLoop()
	}()
	t.Cleanup(func() {
		c.shutdown(errors.New("test over"))
		b.Close()
		<-done
	})
	return &lingerRig{t: t, c: c, peer: b, rd: wire.NewReader(b, wire.DefaultMaxFrameSize)}
}

// data queues a DATA frame of n bytes as a handler's Send does.
func (r *lingerRig) data(id uint32, n int) {
	r.c.wmu.Lock()
	r.c.w.DataPrefixed(id, nil, make([]byte, n))
	r.c.commitData()
}

// state reads the writer's flags under the lock.
func (r *lingerRig) state() (busy, lingering bool, queued int) {
	r.c.wmu.Lock()
	defer r.c.wmu.Unlock()
	return r.c.wBusy, r.c.wLinger, r.c.w.Len()
}

// frame reads the next frame the writer wrote, failing after 10 s.
func (r *lingerRig) frame(what string) wire.Frame {
	r.t.Helper()
	r.peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	f, err := r.rd.ReadFrame()
	if err != nil {
		r.t.Fatalf("%s: %v", what, err)
	}
	return f
}

// burst has the writer write one frame and, while that write is in
// flight, queues a second of tail bytes: then it reads the first.
func (r *lingerRig) burst(tail int) {
	r.t.Helper()
	r.data(1, 100) // the writer was idle: it writes at once
	testutil.Eventually(r.t, 10*time.Second, "the writer's write to be in flight", func() bool {
		busy, _, queued := r.state()
		return busy && queued == 0
	})
	r.data(1, tail)
	if f := r.frame("the first write"); f.Type != wire.TypeData || len(f.Payload) != 100 {
		r.t.Fatalf("first frame: %v of %d bytes, want DATA of 100", f.Type, len(f.Payload))
	}
}

// waitLinger waits until the writer lingers over a queued tail, with no
// write in flight.
func (r *lingerRig) waitLinger() {
	r.t.Helper()
	testutil.Eventually(r.t, 10*time.Second, "the writer to linger over the tail", func() bool {
		busy, lingering, queued := r.state()
		return !busy && lingering && queued > 0
	})
}

// The tail of a burst, DATA queued while the writer wrote, is written once
// the linger ends, with nothing else to push it out.
func TestABurstsTailIsWrittenAfterTheLinger(t *testing.T) {
	r := newLingerRig(t, lingerWrite)
	r.burst(200)
	if f := r.frame("the tail"); len(f.Payload) != 200 {
		t.Fatalf("tail frame of %d bytes, want 200", len(f.Payload))
	}
}

// While the writer lingers, a small tail stays queued; it leaves as soon
// as it holds minWrite, in one write with what came after it.
func TestALingeringWriterWritesOnceTheBatchHoldsMinWrite(t *testing.T) {
	r := newLingerRig(t, time.Hour)
	r.burst(200)
	r.waitLinger()
	var sizes []int
	total := 200
	for total < minWrite {
		r.data(1, 1000)
		sizes = append(sizes, 1000)
		total += wire.HeaderSize + 1000
	}
	if f := r.frame("the tail"); len(f.Payload) != 200 {
		t.Fatalf("tail frame of %d bytes, want 200", len(f.Payload))
	}
	for i, n := range sizes {
		if f := r.frame("the batch"); len(f.Payload) != n {
			t.Fatalf("frame %d after the tail: %d bytes, want %d", i, len(f.Payload), n)
		}
	}
}

// Any frame but a stream's DATA ends the linger at once: an END, say.
func TestAnEndEndsTheLinger(t *testing.T) {
	r := newLingerRig(t, time.Hour)
	r.burst(200)
	r.waitLinger()
	r.c.wmu.Lock()
	r.c.w.End(1, wire.CodeOK, "")
	r.c.commit()
	if f := r.frame("the tail"); len(f.Payload) != 200 {
		t.Fatalf("tail frame of %d bytes, want 200", len(f.Payload))
	}
	if f := r.frame("the END"); f.Type != wire.TypeEnd {
		t.Fatalf("got %v, want END", f.Type)
	}
}
