package dashboard_test

import (
	"context"
	"testing"
	"time"

	"github.com/loomrt/loom/dashboard"
)

// TestPercentilesForgetRequestsOlderThanTheWindow holds docs/dashboard.md's
// "p50 and p99 come from the change of the duration histogram over the
// last 10 s", with Config.Window at 1 s so that the test need not wait 10:
// a batch of requests counts in its instance's p50 / p99 until every scrape
// taken before it is older than the window (the window plus half an
// interval, the ticker's slack), and not a scrape longer. With nothing
// served since, the percentiles are then unknown.
func TestPercentilesForgetRequestsOlderThanTheWindow(t *testing.T) {
	const interval, window = 100 * time.Millisecond, time.Second
	// The most the scrapes behind one percentile may span: the window and
	// the half interval the trimming allows (and a float's rounding).
	const span = window + interval/2 + time.Millisecond
	s := newSystem(t)
	server := s.serveHello(nil)
	srv := s.dashboard(dashboard.Config{Interval: interval, Window: window, NoEvents: true})
	client := s.greeter(1)

	load := func(st dashboard.State) *dashboard.Load {
		if i := instance(st, server.ID()); i != nil {
			return i.Load
		}
		return nil
	}
	scraped := func(st dashboard.State) time.Time {
		for _, p := range st.Processes {
			if p.Target == server.StatusAddr() {
				return p.Scraped
			}
		}
		t.Fatalf("no process %s in the state: %+v", server.StatusAddr(), st.Processes)
		return time.Time{}
	}

	// A scrape of the idle server: every request below starts after it,
	// so they leave the percentiles only once it is trimmed.
	idle := waitState(t, srv, 10*time.Second, "a scrape of the idle server", func(st dashboard.State) bool {
		l := load(st)
		return l != nil && l.Requests == 0 && !l.P50.Known()
	})
	before := scraped(idle)

	const requests = 10
	for range requests {
		for _, err := range client.Generate(context.Background(), Greeting{Name: "you"}) {
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	done := time.Now()
	waitState(t, srv, 10*time.Second, "the requests in the percentiles", func(st dashboard.State) bool {
		l := load(st)
		return l != nil && l.Requests == requests && l.P50.Known() && l.P99.Known()
	})

	// Nothing more is served. Every state until the percentiles go unknown
	// spans at most the window, and a state that still counts the requests
	// has its newest scrape at most the window after they ended (the scrape
	// it counts them from was taken before they ended).
	gone := waitState(t, srv, window+10*time.Second, "the requests to leave the percentiles", func(st dashboard.State) bool {
		l := load(st)
		if l == nil {
			t.Fatalf("the instance lost its load: %+v", st.Instances)
		}
		if got := time.Duration(float64(l.Window) * float64(time.Second)); got > span {
			t.Fatalf("p50 / p99 over %v of scrapes, more than the window %v and half an interval", got, window)
		}
		if l.P50.Known() {
			if late := scraped(st).Sub(done); late > span+100*time.Millisecond {
				t.Fatalf("a scrape %v after the requests ended still counts them in p50 %v ms; the window is %v", late, l.P50, window)
			}
			return false
		}
		return true
	})
	if l := load(gone); l.P99.Known() || l.Requests != requests {
		t.Errorf("with p50 unknown: p99 %v, requests %v; want p99 unknown and %d requests", l.P99, l.Requests, requests)
	}
	// They may leave only once the idle scrape is older than the window
	// and half an interval.
	if early := gone.Time.Sub(before); early <= window+interval/2 {
		t.Errorf("the requests left the percentiles %v after the last scrape before them; the window is %v", early, window)
	}
}
