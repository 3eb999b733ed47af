package bench

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
)

// The raw TCP peer is the physical floor: no multiplexing, no codec, no
// per-call allocation. A request is [op u8][length u32][payload]; a
// response is [length u32][payload]; a stream's responses end with an
// empty frame.
//
// rawOpStreamFresh streams as rawOpStream does, but its server makes
// each item anew, as the Loom `loom` row's handler does: the floor for a
// handler that hands over the items it yields.
const (
	rawOpUnary       = 1
	rawOpStream      = 2
	rawOpStreamFresh = 3
	rawMaxFrame      = 1 << 20
)

// rawServer serves the raw protocol, one goroutine per connection.
type rawServer struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func newRawServer(tb testing.TB) *rawServer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("rawtcp: listen: %v", err)
	}
	s := &rawServer{ln: ln, conns: make(map[net.Conn]struct{})}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns[c] = struct{}{}
			s.mu.Unlock()
			s.wg.Go(func() {
				serveRaw(c)
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				c.Close()
			})
		}
	})
	return s
}

func (s *rawServer) close() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// serveRaw answers requests on c until it closes.
func serveRaw(c net.Conn) {
	r := bufio.NewReaderSize(c, 4<<10)
	w := bufio.NewWriterSize(c, 32<<10)
	var hdr [5]byte
	var lenBuf [4]byte
	req := make([]byte, 0, msgSize)
	item := make([]byte, 0, msgSize)
	writeFrame := func(p []byte) {
		binary.BigEndian.PutUint32(lenBuf[:], uint32(len(p)))
		w.Write(lenBuf[:])
		w.Write(p)
	}
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return
		}
		n := binary.BigEndian.Uint32(hdr[1:])
		if n > rawMaxFrame {
			return
		}
		if cap(req) < int(n) {
			req = make([]byte, n)
		}
		req = req[:n]
		if _, err := io.ReadFull(r, req); err != nil {
			return
		}
		switch hdr[0] {
		case rawOpUnary:
			writeFrame(req)
		case rawOpStream:
			for i := range seqOf(req) {
				item = fill(item, i)
				writeFrame(item)
			}
			writeFrame(nil)
		case rawOpStreamFresh:
			for i := range seqOf(req) {
				writeFrame(fill(make([]byte, 0, msgSize), i))
			}
			writeFrame(nil)
		default:
			return
		}
		if w.Flush() != nil {
			return
		}
	}
}

// rawConn is the client's end of one connection; one call at a time.
type rawConn struct {
	c   net.Conn
	r   *bufio.Reader
	out []byte
	hdr [4]byte
}

func (rc *rawConn) send(op byte, req []byte) error {
	rc.out = append(rc.out[:0], op, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(rc.out[1:], uint32(len(req)))
	rc.out = append(rc.out, req...)
	_, err := rc.c.Write(rc.out)
	return err
}

// recv reads one response frame into buf.
func (rc *rawConn) recv(buf []byte) ([]byte, error) {
	return readFrame(rc.r, rc.hdr[:], buf)
}

// startRawTCP starts the raw server and a client with a pool of conns
// connections; each call takes one connection for itself.
func startRawTCP(conns int) starter { return startRaw(conns, rawOpStream) }

// startRawTCPFresh is startRawTCP(1) whose server makes each streamed
// item anew.
func startRawTCPFresh(tb testing.TB) *peer { return startRaw(1, rawOpStreamFresh)(tb) }

// startRaw starts the raw server and a client with a pool of conns
// connections, streaming with streamOp.
func startRaw(conns int, streamOp byte) starter {
	return func(tb testing.TB) *peer {
		srv := newRawServer(tb)
		pool := make(chan *rawConn, conns)
		closeAll := func() {
			close(pool)
			for rc := range pool {
				rc.c.Close()
			}
			srv.close()
		}
		for range conns {
			c, err := net.Dial("tcp", srv.ln.Addr().String())
			if err != nil {
				closeAll()
				tb.Fatalf("rawtcp: dial: %v", err)
			}
			pool <- &rawConn{c: c, r: bufio.NewReaderSize(c, 32<<10), out: make([]byte, 0, 5+msgSize)}
		}
		return &peer{
			unary: func(ctx context.Context, req, buf []byte) ([]byte, error) {
				rc := <-pool
				defer func() { pool <- rc }()
				if err := rc.send(rawOpUnary, req); err != nil {
					return nil, err
				}
				return rc.recv(buf)
			},
			stream: func(ctx context.Context, req []byte, item func([]byte) error) error {
				rc := <-pool
				defer func() { pool <- rc }()
				if err := rc.send(streamOp, req); err != nil {
					return err
				}
				buf := make([]byte, 0, msgSize)
				for {
					var err error
					if buf, err = rc.recv(buf); err != nil {
						return err
					}
					if len(buf) == 0 {
						return nil
					}
					if err := item(buf); err != nil {
						// The rest of the stream is still on the wire; this
						// connection is unusable.
						rc.c.Close()
						return errors.Join(err, errors.New("rawtcp: connection dropped"))
					}
				}
			},
			close: closeAll,
		}
	}
}
