package loom

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/discovery"
)

// statusServer is the process's HTTP status server (seed 004's system
// status server): liveness, readiness, metrics and metadata.
type statusServer struct {
	srv  *http.Server
	addr string
	done chan struct{}
}

// statusSource is what the status server reports on: the runtime, seen
// through the questions it asks.
type statusSource interface {
	live() (bool, string)
	ready() (bool, string)
	metadata() Metadata
}

// startStatus listens on status.host:status.port if the port is set.
func (rt *Runtime) startStatus() error {
	s, err := startStatusServer(rt.cfg.Status, rt.metrics.Registry(), rt.log, rt)
	rt.status = s
	return err
}

// statusWriteTimeout is how long the status server may take to write one
// answer.
var statusWriteTimeout = 30 * time.Second

// startStatusServer serves src's status on sc's address, or returns nil
// if sc turns the server off.
func startStatusServer(sc config.Status, reg *prometheus.Registry, log *slog.Logger, src statusSource) (*statusServer, error) {
	if sc.Port == 0 {
		return nil, nil
	}
	port := max(sc.Port, 0)
	ln, err := net.Listen("tcp", net.JoinHostPort(sc.Host, strconv.Itoa(port)))
	if err != nil {
		return nil, fmt.Errorf("loom: status server cannot listen on %s:%d: %w (set status.port, LOOM_STATUS_PORT, to a free port, or 0 to turn it off)", sc.Host, sc.Port, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /live", func(w http.ResponseWriter, _ *http.Request) {
		if ok, why := src.live(); !ok {
			http.Error(w, "not live: "+why, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "live")
	})
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		if ok, why := src.ready(); !ok {
			http.Error(w, "not ready: "+why, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /metadata", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(src.metadata())
	})
	s := &statusServer{srv: &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		// A scraper or probe that stops reading, or keeps a connection
		// open without asking anything, is let go.
		WriteTimeout: statusWriteTimeout,
		IdleTimeout:  2 * time.Minute,
	}, addr: ln.Addr().String(), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("status server stopped", "addr", s.addr, "err", err)
		}
	}()
	if sc.Port < 0 {
		// A port chosen by the system is found nowhere else.
		log.Info("status server listening on a free port", "addr", s.addr)
	} else {
		log.Debug("status server listening", "addr", s.addr)
	}
	return s, nil
}

// StatusAddr returns the status server's address, or "" if it is off.
func (rt *Runtime) StatusAddr() string {
	if rt.status == nil {
		return ""
	}
	return rt.status.addr
}

func (rt *Runtime) stopStatus() error {
	if rt.status == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := rt.status.srv.Shutdown(ctx); err != nil {
		// A client is still being answered (one that stopped reading
		// /metrics): cut it off rather than leave its goroutine behind.
		_ = rt.status.srv.Close()
	}
	<-rt.status.done
	return nil
}

// live reports whether the process can still do its work without a
// restart. A NATS connection that reconnects is live; one closed for good
// (nats.max_reconnects spent) never comes back, and the process would go
// on unable to publish, consume or serve on NATS.
func (rt *Runtime) live() (bool, string) {
	nc := rt.nc.Load()
	if nc == nil || !nc.IsClosed() || rt.isClosed() {
		return true, ""
	}
	why := "the NATS connection is closed for good (nats.max_reconnects reconnect attempts failed, or the program closed it)"
	if err := nc.LastError(); err != nil {
		why += ": " + err.Error()
	}
	return false, why + "; restart the process"
}

// ready reports whether the process should receive traffic: not shutting
// down, live, and every endpoint it serves registered in discovery and
// healthy. An endpoint shut down on its own (Endpoint or Component
// Shutdown or Close) is served no more and does not count.
func (rt *Runtime) ready() (bool, string) {
	all, stopping := rt.allServed()
	if stopping {
		return false, "shutting down"
	}
	if ok, why := rt.live(); !ok {
		return false, why
	}
	for _, s := range all {
		if s.draining.Load() {
			continue
		}
		if ok, why := s.ready(); !ok {
			return false, why
		}
	}
	return true, ""
}

// Metadata is what /metadata reports about a process.
type Metadata struct {
	Instance  string               `json:"instance"`
	Discovery string               `json:"discovery"`
	Served    []discovery.Instance `json:"served"`
	Ready     bool                 `json:"ready"`
	Uptime    string               `json:"uptime"`
}

func (rt *Runtime) metadata() Metadata {
	ready, _ := rt.ready()
	md := Metadata{Instance: fmt.Sprintf("%x", rt.id), Discovery: rt.cfg.Discovery.Backend, Ready: ready, Uptime: time.Since(rt.started).Round(time.Second).String()}
	all, _ := rt.allServed()
	for _, s := range all {
		if !s.draining.Load() { // an endpoint closed on its own is served no more
			md.Served = append(md.Served, s.inst)
		}
	}
	return md
}
