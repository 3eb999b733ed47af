package zmtp

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

// A connection's read buffer stays small for a peer that sends little and
// grows to maxReadBuffer for one that sends more than a read takes.
func TestReadBufferGrowsWithTheTraffic(t *testing.T) {
	_, quiet, err := readHandshake(bytes.NewReader(append(greeting[:], AppendReady(nil, SUB)...)), 1024)
	if err != nil {
		t.Fatal(err)
	}
	if len(quiet.r.buf) != minReadBuffer {
		t.Errorf("a handshake left a buffer of %d bytes, want %d", len(quiet.r.buf), minReadBuffer)
	}
	var wire []byte
	for len(wire) < 1<<20 {
		wire = AppendMessage(wire, []byte("topic"), []byte("a small event"))
	}
	busy := &readBuffer{rd: bytes.NewReader(wire)}
	r := NewReader(busy, 1024)
	for {
		if _, _, err := r.Next(); err != nil {
			if err != io.EOF {
				t.Fatal(err)
			}
			break
		}
	}
	if len(busy.buf) != maxReadBuffer {
		t.Errorf("1 MiB of small messages left a buffer of %d bytes, want %d", len(busy.buf), maxReadBuffer)
	}
}

// FuzzReadBuffer: whatever the bytes, however the source cuts them and
// however they are read (byte by byte, or in reads of any size), the
// read buffer gives them back in order, then the source's error, and
// never holds more than maxReadBuffer. At most 2000 reads an input keep
// each run quick; run it with -fuzzminimizetime 2s, as minimizing a
// large input for the default minute stalls the fuzzer meanwhile.
func FuzzReadBuffer(f *testing.F) {
	f.Add(bytes.Repeat([]byte("abc"), 1000), []byte{1, 0, 200, 3}, false)
	f.Add([]byte{}, []byte{}, true)
	f.Add(bytes.Repeat([]byte{7}, 3000), []byte{255, 255, 0}, false)
	f.Fuzz(func(t *testing.T, data, sizes []byte, oneByte bool) {
		var src io.Reader = bytes.NewReader(data)
		if oneByte {
			src = iotest.OneByteReader(src)
		}
		b := &readBuffer{rd: iotest.DataErrReader(src)}
		var got []byte
		scratch := make([]byte, 255*64)
		var err error
		for i := 0; i < 2000 && err == nil; i++ {
			size := 0
			if len(sizes) > 0 {
				size = int(sizes[i%len(sizes)]) * 64 // up to 16 KiB
			}
			if size == 0 {
				var c byte
				if c, err = b.ReadByte(); err == nil {
					got = append(got, c)
				}
			} else {
				var n int
				n, err = b.Read(scratch[:size])
				if n < 0 || n > size {
					t.Fatalf("Read of %d bytes returned %d", size, n)
				}
				got = append(got, scratch[:n]...)
			}
			if len(b.buf) > maxReadBuffer {
				t.Fatalf("buffer of %d bytes", len(b.buf))
			}
		}
		if !bytes.HasPrefix(data, got) {
			t.Fatalf("read %d bytes that are not the first of the %d written", len(got), len(data))
		}
		if err != nil && (!errors.Is(err, io.EOF) || len(got) != len(data)) {
			t.Fatalf("after %d of %d bytes: %v, want io.EOF after all", len(got), len(data), err)
		}
	})
}
