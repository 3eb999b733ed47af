package wire

import (
	"errors"
	"net"
	"sync"
	"testing"
	"time"
)

// interruptible is a net.Pipe end whose reads its owner can cut short, as
// internal/mux does: a flag and a past read deadline, set together.
type interruptible struct {
	net.Conn
	mu   sync.Mutex
	intr bool
}

func (c *interruptible) interrupt() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.intr = true
	c.SetReadDeadline(time.Unix(1, 0))
}

func (c *interruptible) interrupted() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.intr {
		return false
	}
	c.intr = false
	c.SetReadDeadline(time.Time{})
	return true
}

// setDeadline keeps an interrupt's deadline over the Reader's frame
// deadline, as the owner must.
func (c *interruptible) setDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.intr {
		t = time.Unix(1, 0)
	}
	return c.SetReadDeadline(t)
}

func pipeReader(t *testing.T, frameTimeout time.Duration) (*interruptible, net.Conn, *Reader) {
	t.Helper()
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	c := &interruptible{Conn: a}
	r := NewReader(c, 1<<10)
	if frameTimeout > 0 {
		r.SetFrameTimeout(frameTimeout, c.setDeadline)
	}
	r.SetInterrupt(c.interrupted)
	return c, b, r
}

// write writes p to w from another goroutine: net.Pipe blocks a write until
// it is read.
func write(t *testing.T, w net.Conn, p []byte) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := w.Write(p)
		done <- err
	}()
	return done
}

// An interrupted read returns ErrInterrupted, at any point of a frame, and
// the next ReadFrame resumes it: nothing read before is lost.
func TestReaderInterruptResumes(t *testing.T) {
	var w Writer
	w.Data(7, []byte("hello, interrupted world"))
	w.End(7, CodeOK, "")
	frames := append([]byte(nil), w.Bytes()...)
	for _, cut := range []int{0, 3, HeaderSize, HeaderSize + 5} {
		c, peer, r := pipeReader(t, time.Hour)
		interruptAfter(t, c, peer, frames[:cut])
		if _, err := r.ReadFrame(); !errors.Is(err, ErrInterrupted) {
			t.Fatalf("cut %d: ReadFrame = %v, want ErrInterrupted", cut, err)
		}
		done := write(t, peer, frames[cut:])
		f, err := r.ReadFrame()
		if err != nil || f.Type != TypeData || f.Stream != 7 || string(f.Payload) != "hello, interrupted world" {
			t.Fatalf("cut %d: after the interrupt, ReadFrame = %v %q, %v; want the DATA frame", cut, f.Type, f.Payload, err)
		}
		if f, err := r.ReadFrame(); err != nil || f.Type != TypeEnd {
			t.Fatalf("cut %d: second frame = %v, %v; want END", cut, f.Type, err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

// interruptAfter writes part to peer and interrupts c's reads once the
// Reader has read it: a net.Pipe write returns when it has been read, so
// the interrupt lands while the Reader waits for the rest.
func interruptAfter(t *testing.T, c *interruptible, peer net.Conn, part []byte) {
	t.Helper()
	go func() {
		if len(part) > 0 {
			if _, err := peer.Write(part); err != nil {
				return // the test failed and closed the pipe
			}
		}
		c.interrupt()
	}()
}

// A frame cut by an interrupt keeps its deadline: the trickle bound holds
// however often the reading changes hands.
func TestReaderInterruptKeepsFrameDeadline(t *testing.T) {
	c, peer, r := pipeReader(t, 200*time.Millisecond)
	var w Writer
	w.Data(1, make([]byte, 64))
	frame := w.Bytes()
	interruptAfter(t, c, peer, frame[:HeaderSize+1])
	if _, err := r.ReadFrame(); !errors.Is(err, ErrInterrupted) {
		t.Fatalf("ReadFrame = %v, want ErrInterrupted", err)
	}
	// The rest never comes: the frame's deadline, armed again, ends the
	// Reader, and the error is sticky.
	if _, err := r.ReadFrame(); !errors.Is(err, ErrFrameTimeout) {
		t.Fatalf("ReadFrame = %v, want ErrFrameTimeout", err)
	}
	if _, err := r.ReadFrame(); !errors.Is(err, ErrFrameTimeout) {
		t.Fatalf("after the frame timeout, ReadFrame = %v, want the same error", err)
	}
}

// A timeout nobody asked for as an interrupt still ends the Reader.
func TestReaderUnrequestedTimeoutIsSticky(t *testing.T) {
	c, _, r := pipeReader(t, 0)
	c.SetReadDeadline(time.Unix(1, 0))
	_, err := r.ReadFrame()
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || errors.Is(err, ErrInterrupted) {
		t.Fatalf("ReadFrame = %v, want the timeout", err)
	}
	c.SetReadDeadline(time.Time{})
	if _, err2 := r.ReadFrame(); err2 != err {
		t.Fatalf("second ReadFrame = %v, want the sticky %v", err2, err)
	}
}
