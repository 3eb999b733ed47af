package dashboard_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/loomrt/loom/dashboard"
	"github.com/loomrt/loom/internal/testutil"
)

// countingTransport is a real HTTP transport that records what the
// dashboard asks of it: the URLs, how many requests are open at once, and
// how long each open request lasted and how it ended.
type countingTransport struct {
	next *http.Transport

	mu      sync.Mutex
	urls    []string
	open    int
	maxOpen int
	ended   []trip
}

type trip struct {
	took time.Duration
	err  error
}

func newCountingTransport(t *testing.T) *countingTransport {
	tr := &countingTransport{next: http.DefaultTransport.(*http.Transport).Clone()}
	t.Cleanup(tr.next.CloseIdleConnections)
	return tr
}

func (c *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	c.mu.Lock()
	c.urls = append(c.urls, req.URL.String())
	if req.Context().Err() != nil {
		// A read whose round was over before it began: it sends nothing.
		c.mu.Unlock()
		return c.next.RoundTrip(req)
	}
	c.open++
	c.maxOpen = max(c.maxOpen, c.open)
	c.mu.Unlock()
	start := time.Now()
	resp, err := c.next.RoundTrip(req)
	c.mu.Lock()
	c.open--
	c.ended = append(c.ended, trip{time.Since(start), err})
	c.mu.Unlock()
	return resp, err
}

func (c *countingTransport) snapshot() (urls []string, maxOpen int, ended []trip) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.urls...), c.maxOpen, append([]trip(nil), c.ended...)
}

// TestAnIntervalReadsSixteenProcessesAtATimeEachForAtMostTwoSeconds holds
// docs/dashboard.md's Limits: every interval reads each process once, 16
// at a time, each read bounded by the interval or 2 s, whichever is
// longer. Twenty processes that never answer show both: the first sixteen
// reads are open together, the others wait for a free slot, and the open
// ones end at the 2 s bound, not at the 100 ms interval.
func TestAnIntervalReadsSixteenProcessesAtATimeEachForAtMostTwoSeconds(t *testing.T) {
	s := newSystem(t)
	stop := make(chan struct{})
	hung := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-stop:
		}
	}))
	t.Cleanup(hung.Close)
	t.Cleanup(func() { close(stop) })
	var urls []string
	for i := range 20 {
		urls = append(urls, fmt.Sprintf("%s/process/%d/metrics", hung.URL, i))
	}
	tr := newCountingTransport(t)
	// A client without a timeout of its own: the round's bound is the
	// dashboard's.
	s.dashboard(dashboard.Config{Interval: 100 * time.Millisecond, Scrape: urls, NoEvents: true,
		NATSMonitorURL: "off", HTTPClient: &http.Client{Transport: tr}})
	testutil.Eventually(t, 20*time.Second, "the first round's sixteen reads to end", func() bool {
		_, _, ended := tr.snapshot()
		return len(ended) >= 16
	})
	_, maxOpen, ended := tr.snapshot()
	if maxOpen != 16 {
		t.Errorf("%d reads were open at once, want 16", maxOpen)
	}
	for _, e := range ended[:16] {
		if !errors.Is(e.err, context.DeadlineExceeded) {
			t.Errorf("a read of a process that never answers ended with %v, want the round's deadline", e.err)
		}
		// The round's deadline is set just before its reads begin: a read
		// lasts a little less than the 2 s bound, and far more than the
		// 100 ms interval.
		if e.took < time.Second || e.took > 4*time.Second {
			t.Errorf("a read of a process that never answers lasted %v, want about 2s", e.took)
		}
	}
}

// TestTheDefaultNATSMonitorIsTheServersHostOnPort8222 holds the --nats-monitor
// row of docs/dashboard.md: without a monitoring URL the dashboard reads
// port 8222 (where loom up serves it) on the host of the NATS server it is
// connected to.
func TestTheDefaultNATSMonitorIsTheServersHostOnPort8222(t *testing.T) {
	s := newSystem(t)
	// localhost rather than the 127.0.0.1 the embedded server gives: the
	// host must come from the connection.
	s.cfg.NATS.URL = strings.Replace(s.nats.ClientURL(), "127.0.0.1", "localhost", 1)
	rt := s.runtime()
	tr := newCountingTransport(t)
	d, err := dashboard.New(context.Background(), rt, dashboard.Config{Interval: 100 * time.Millisecond, NoEvents: true, HTTPClient: &http.Client{Transport: tr}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	testutil.Eventually(t, 10*time.Second, "the dashboard to read the NATS monitoring endpoint", func() bool {
		urls, _, _ := tr.snapshot()
		return len(urls) > 0
	})
	if urls, _, _ := tr.snapshot(); urls[0] != "http://localhost:8222/varz" {
		t.Errorf("the dashboard read %s, want http://localhost:8222/varz", urls[0])
	}
}
