package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/hashicorp/yamux"
)

// startYamux starts a server that answers one length-prefixed request per
// yamux stream, and a client with one session that opens a new stream for
// every call: yamux's own request model, as HashiCorp's net/rpc over yamux
// uses it.
func startYamux(tb testing.TB) *peer {
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("yamux: listen: %v", err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var sessions []*yamux.Session
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			sess, err := yamux.Server(c, cfg)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			sessions = append(sessions, sess)
			mu.Unlock()
			wg.Go(func() {
				for {
					st, err := sess.AcceptStream()
					if err != nil {
						return
					}
					wg.Go(func() { serveYamuxStream(st) })
				}
			})
		}
	})
	stopServer := func() {
		ln.Close()
		mu.Lock()
		for _, s := range sessions {
			s.Close()
		}
		mu.Unlock()
		wg.Wait()
	}
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		stopServer()
		tb.Fatalf("yamux: dial: %v", err)
	}
	sess, err := yamux.Client(c, cfg)
	if err != nil {
		c.Close()
		stopServer()
		tb.Fatalf("yamux: client: %v", err)
	}
	outs := sync.Pool{New: func() any { return new([5 + msgSize]byte) }}
	return &peer{
		unary: func(ctx context.Context, req, buf []byte) ([]byte, error) {
			st, err := sess.OpenStream()
			if err != nil {
				return nil, err
			}
			defer st.Close()
			out := outs.Get().(*[5 + msgSize]byte)
			defer outs.Put(out)
			frame := append(out[:0], 0, 0, 0, 0)
			binary.BigEndian.PutUint32(frame, uint32(len(req)))
			if _, err := st.Write(append(frame, req...)); err != nil {
				return nil, err
			}
			return readFrame(st, out[:4], buf)
		},
		close: func() {
			sess.Close()
			stopServer()
		},
	}
}

// readFrame reads a [length u32][payload] frame into buf, using hdr (4
// bytes) for the length.
func readFrame(r io.Reader, hdr, buf []byte) ([]byte, error) {
	if _, err := io.ReadFull(r, hdr); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr)
	if n > rawMaxFrame {
		return nil, fmt.Errorf("%d-byte frame", n)
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	_, err := io.ReadFull(r, buf)
	return buf, err
}

// serveYamuxStream echoes the one request on st and closes it.
func serveYamuxStream(st *yamux.Stream) {
	defer st.Close()
	var frame [4 + msgSize]byte
	req, err := readFrame(st, frame[:4], frame[4:4])
	if err != nil || len(req) != msgSize {
		return
	}
	_, _ = st.Write(frame[:])
}
