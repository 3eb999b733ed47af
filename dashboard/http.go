package dashboard

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"strconv"
	"time"
)

//go:embed assets
var assets embed.FS

// routes sets up the page, its assets and the data API.
func (d *Dashboard) routes() {
	static, _ := fs.Sub(assets, "assets")
	files := http.FileServerFS(static)
	d.mux = http.NewServeMux()
	d.mux.Handle("GET /", files)
	d.mux.HandleFunc("GET /api/state", d.serveState)
	d.mux.HandleFunc("GET /api/stream", d.serveStream)
}

// ServeHTTP serves the page (/), its assets, /api/state (the State as
// JSON) and /api/stream (the State as a server-sent event named "state",
// sent at once and then at each change). It only reads: there are no
// actions. An answer not written within Config.WriteTimeout (one event
// of the stream, any other answer whole) is ended, with its connection.
func (d *Dashboard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	// A writer that takes no deadline (one not from net/http's server)
	// is written without; the stream sets its own at each event.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(d.cfg.WriteTimeout))
	d.mux.ServeHTTP(w, r)
}

func (d *Dashboard) serveState(w http.ResponseWriter, _ *http.Request) {
	d.bmu.Lock()
	b := d.latest
	d.bmu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(b)
}

func (d *Dashboard) serveStream(w http.ResponseWriter, r *http.Request) {
	if _, ok := w.(http.Flusher); !ok {
		http.Error(w, "dashboard: streaming needs an http.Flusher; this server's ResponseWriter is not one", http.StatusInternalServerError)
		return
	}
	c := make(chan []byte, 1)
	d.bmu.Lock()
	c <- d.latest
	d.clients[c] = struct{}{}
	d.bmu.Unlock()
	defer func() {
		d.bmu.Lock()
		delete(d.clients, c)
		d.bmu.Unlock()
	}()
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	// A comment every 15 s keeps proxies from closing an idle stream.
	keep := time.NewTicker(15 * time.Second)
	defer keep.Stop()
	for {
		var err error
		select {
		case <-r.Context().Done():
			return
		case <-d.ctx.Done():
			return
		case <-keep.C:
			err = d.writeEvent(w, rc, ": keep-alive\n\n")
		case b := <-c:
			err = d.writeEvent(w, rc, "event: state\ndata: %s\n\n", b)
		}
		if err != nil {
			return
		}
	}
}

// writeEvent writes and flushes one event within Config.WriteTimeout.
// net/http clears the deadline when the request ends.
func (d *Dashboard) writeEvent(w http.ResponseWriter, rc *http.ResponseController, format string, args ...any) error {
	// A writer that takes no deadline (one not from net/http's server)
	// is written without.
	_ = rc.SetWriteDeadline(time.Now().Add(d.cfg.WriteTimeout))
	if _, err := fmt.Fprintf(w, format, args...); err != nil {
		return err
	}
	return rc.Flush()
}

// idleTimeout is how long a Server keeps a connection that is between
// requests: a page's browser that went away without closing it holds
// nothing for longer.
var idleTimeout = 2 * time.Minute

// Server is a dashboard served over HTTP on its own listener.
type Server struct {
	*Dashboard
	srv  *http.Server
	url  string
	done chan struct{}
}

// Listen serves d on addr (host:port;
// port 0 picks a free one). Close stops both.
func Listen(d *Dashboard, addr string) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dashboard: cannot listen on %s: %w", addr, err)
	}
	return serve(d, ln), nil
}

// serve serves d on ln.
func serve(d *Dashboard, ln net.Listener) *Server {
	// No WriteTimeout: it would end every page's stream after it; each
	// write bounds itself instead (writeEvent, ServeHTTP).
	s := &Server{Dashboard: d, srv: &http.Server{
		Handler:           d,
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       idleTimeout,
	}, url: "http://" + dialable(ln.Addr()), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("dashboard: HTTP server stopped", "addr", ln.Addr(), "err", err)
		}
	}()
	return s
}

// URL returns the page's address, http://host:port. On a server that
// listens on every address (0.0.0.0 or ::), where no browser can go, it
// names the loopback address 127.0.0.1.
func (s *Server) URL() string { return s.url }

// dialable is addr as host:port, with 127.0.0.1 for a host of every
// address.
func dialable(addr net.Addr) string {
	if tcp, ok := addr.(*net.TCPAddr); ok && tcp.IP.IsUnspecified() {
		return net.JoinHostPort("127.0.0.1", strconv.Itoa(tcp.Port))
	}
	return addr.String()
}

// Close stops the HTTP server (ending the pages' streams) and the
// dashboard. It lets answers under way finish for up to 2s, then closes
// the connections still open (a page that stopped reading), so that no
// goroutine is left waiting on a client: each ends as its write fails.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s.Dashboard.cancel() // ends the streams, so Shutdown does not wait for them
	var err error
	if s.srv.Shutdown(ctx) != nil {
		// A write waits for a client that stopped reading: cut it off.
		err = s.srv.Close()
	}
	<-s.done
	return errors.Join(err, s.Dashboard.Close())
}
