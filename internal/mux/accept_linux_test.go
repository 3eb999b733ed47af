package mux

import (
	"context"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/loomrt/loom/internal/testutil"
)

// TestServeCarriesOnWhenTheProcessRunsOutOfFiles: an Accept that fails
// because the process has no file descriptor left (a burst of
// connections against ulimit -n) is retried once there is room again.
// Serve used to return on it, leaving an instance that is registered
// and serves its open connections but refuses every new one.
func TestServeCarriesOnWhenTheProcessRunsOutOfFiles(t *testing.T) {
	var failed atomic.Int64
	log := slog.New(handlerFunc(func(r slog.Record) {
		if strings.Contains(r.Message, "accept failed") {
			failed.Add(1)
		}
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(ServerConfig{Logger: log}, HandlerFunc(echo))
	served := make(chan error, 1)
	serveDone := make(chan struct{})
	go func() {
		defer close(serveDone)
		served <- srv.Serve(ln)
	}()
	defer func() {
		srv.Close()
		<-serveDone
	}()
	addr := ln.Addr().String()

	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("counting open files needs /proc: %v", err)
	}
	var was syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &was); err != nil {
		t.Fatal(err)
	}
	low := was
	low.Cur = uint64(len(fds) + 8)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	restore := func() {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &was); err != nil {
			t.Fatal(err)
		}
	}
	defer restore()
	// Dial until the process is out of files; the connections the kernel
	// completed wait in the listener's backlog for an Accept that fails.
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for len(conns) < 64 {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			break
		}
		conns = append(conns, c)
	}
	testutil.Eventually(t, 10*time.Second, "an Accept failed for want of a file, or Serve returned", func() bool {
		return failed.Load() > 0 || len(served) > 0
	})
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	restore()
	select {
	case err := <-served:
		t.Fatalf("Serve returned %v when the process ran out of files; want it to carry on accepting", err)
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p := newPool(t, ClientConfig{})
	st, err := p.Open(ctx, addr, Request{Path: "p", Payload: []byte("again")})
	if err != nil {
		t.Fatalf("a call once files were free again: %v", err)
	}
	defer st.Close()
	got, err := recvAll(st)
	if err != nil || len(got) != 1 || string(got[0]) != "again" {
		t.Fatalf("a call once files were free again: %q, %v", got, err)
	}
}

// handlerFunc is a slog.Handler calling f for every record.
type handlerFunc func(slog.Record)

func (f handlerFunc) Enabled(context.Context, slog.Level) bool { return true }
func (f handlerFunc) Handle(_ context.Context, r slog.Record) error {
	f(r)
	return nil
}
func (f handlerFunc) WithAttrs([]slog.Attr) slog.Handler { return f }
func (f handlerFunc) WithGroup(string) slog.Handler      { return f }
