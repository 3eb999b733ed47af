package dashboard

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/codec"
	"github.com/loomrt/loom/events"
	"github.com/loomrt/loom/llm"
)

// Publishers not heard from for this long leave the table; past
// maxTrackedPublishers the one heard from least recently does.
const (
	publisherIdle        = 5 * time.Minute
	maxTrackedPublishers = 4096
	resubscribeEvery     = 5 * time.Second
)

// eventWatch is the dashboard's own subscription to every event, which
// follows each publisher's sequence numbers.
type eventWatch struct {
	disabled bool
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup

	mu        sync.Mutex
	sub       *events.Subscription[[]byte]
	err       string
	lastTry   time.Time
	pubs      map[uint64]*pubTrack
	lastTick  time.Time
	lastRecv  uint64
	rate      Num
	transport string
	pattern   string
}

type pubTrack struct {
	Publisher
	atTick uint64 // Events at the last tick
	// load is the publisher's latest load_metrics, if it publishes them
	// (llm.LoadMetrics, Dynamo's ForwardPassMetrics), and when it came.
	load   *llm.LoadMetrics
	loadAt time.Time
}

// loadFresh is how long a worker's latest load_metrics counts in the
// serving summary.
const loadFresh = 10 * time.Second

func newEventWatch(ctx context.Context, disabled bool) *eventWatch {
	w := &eventWatch{disabled: disabled, pubs: map[uint64]*pubTrack{}, rate: unknown}
	w.ctx, w.cancel = context.WithCancel(ctx)
	return w
}

// ensure subscribes if there is no subscription yet, at most every
// resubscribeEvery; a failure is shown, not fatal.
func (w *eventWatch) ensure(_ context.Context, rt *loom.Runtime, log *slog.Logger) {
	if w.disabled {
		return
	}
	w.mu.Lock()
	if w.sub != nil || time.Since(w.lastTry) < resubscribeEvery || w.ctx.Err() != nil {
		w.mu.Unlock()
		return
	}
	w.lastTry = time.Now()
	w.mu.Unlock()
	sub, err := events.SubscribeRaw(w.ctx, rt, events.Scope{Namespace: events.Any}, events.All, events.WithLossErrors())
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		w.err = err.Error()
		log.Debug("dashboard: cannot subscribe to events; will retry", "err", err)
		return
	}
	w.sub, w.err = sub, ""
	w.transport, w.pattern = sub.Transport(), sub.Pattern()
	w.lastRecv = 0
	w.wg.Go(func() { w.read(sub) })
}

// read follows the subscription until it ends or the watch's context
// does, then closes it.
func (w *eventWatch) read(sub *events.Subscription[[]byte]) {
	defer sub.Close()
	for ev, err := range sub.Events(w.ctx) {
		w.mu.Lock()
		if err != nil {
			var le *events.LossError
			if errors.As(err, &le) {
				if p := w.pubs[le.PublisherID]; p != nil && le.Lost > 0 {
					p.Gaps++
					p.Lost += le.Lost
				}
				w.mu.Unlock()
				continue
			}
			w.err = "event subscription ended: " + err.Error()
			w.sub = nil
			w.mu.Unlock()
			return
		}
		p := w.pubs[ev.PublisherID]
		if p == nil {
			if len(w.pubs) >= maxTrackedPublishers {
				w.evictLocked()
			}
			p = &pubTrack{Publisher: Publisher{ID: strconv.FormatUint(ev.PublisherID, 16), RatePerSec: unknown}}
			w.pubs[ev.PublisherID] = p
		}
		p.Subject, p.Topic, p.Codec = ev.Subject, ev.Topic, ev.Codec
		if ev.InstanceID != 0 {
			p.InstanceID = strconv.FormatUint(ev.InstanceID, 16)
		}
		p.Events++
		p.Sequence = ev.Sequence
		p.LastSeen = time.Now()
		if ev.Topic == llm.TopicLoadMetrics {
			var lm llm.LoadMetrics
			if decodePayload(ev.Codec, ev.Value, &lm) == nil {
				p.load, p.loadAt = &lm, p.LastSeen
			}
		}
		w.mu.Unlock()
	}
	w.mu.Lock()
	if w.sub == sub {
		w.sub = nil
	}
	w.mu.Unlock()
}

func (w *eventWatch) evictLocked() {
	var oldest uint64
	var at time.Time
	for id, p := range w.pubs {
		if at.IsZero() || p.LastSeen.Before(at) {
			oldest, at = id, p.LastSeen
		}
	}
	delete(w.pubs, oldest)
}

// decodePayload decodes an event's payload in its codec; a payload that
// is not a load report is an error and is ignored by the caller.
func decodePayload(name string, payload []byte, v any) error {
	if name == codec.JSONName {
		return codec.JSON.Unmarshal(payload, v)
	}
	return codec.MsgPack.Unmarshal(payload, v)
}

// loadSummary is the mean prefix-cache hit rate and KV cache usage, and
// the sum of waiting requests, over the publishers whose load_metrics
// are fresh; unknown without any.
func (w *eventWatch) loadSummary(now time.Time) (hitRate, usage, waiting Num, workers int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	hitRate, usage, waiting = unknown, unknown, unknown
	var h, u, wt float64
	for _, p := range w.pubs {
		if p.load == nil || now.Sub(p.loadAt) > loadFresh {
			continue
		}
		workers++
		h += p.load.PrefixHitRate
		u += p.load.CacheUsage
		wt += float64(p.load.Waiting)
	}
	if workers > 0 {
		hitRate, usage, waiting = Num(h/float64(workers)), Num(u/float64(workers)), Num(wt)
	}
	return hitRate, usage, waiting, workers
}

// tick computes the rates over the interval that ends now.
func (w *eventWatch) tick(now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	dt := now.Sub(w.lastTick).Seconds()
	first := w.lastTick.IsZero()
	w.lastTick = now
	for id, p := range w.pubs {
		if now.Sub(p.LastSeen) > publisherIdle {
			delete(w.pubs, id)
			continue
		}
		if !first && dt > 0 {
			p.RatePerSec = Num(float64(p.Events-p.atTick) / dt)
		}
		p.atTick = p.Events
	}
	if w.sub == nil {
		w.rate = unknown
		return
	}
	recv := w.sub.Stats().Received
	if !first && dt > 0 && recv >= w.lastRecv {
		w.rate = Num(float64(recv-w.lastRecv) / dt)
	}
	w.lastRecv = recv
}

// state returns the event view: the subscription's and the processes'.
func (w *eventWatch) state(samples map[string][]*sample) Events {
	w.mu.Lock()
	ev := Events{Transport: w.transport, Pattern: w.pattern, Error: w.err, RatePerSec: w.rate, Publishers: []Publisher{}}
	if w.disabled {
		ev.Error = "the dashboard's own event subscription is off"
	}
	if w.sub != nil {
		s := w.sub.Stats()
		ev.Received, ev.Lost, ev.Dropped = s.Received, s.Lost, s.Dropped
	}
	for _, p := range w.pubs {
		ev.Publishers = append(ev.Publishers, p.Publisher)
	}
	w.mu.Unlock()
	slices.SortFunc(ev.Publishers, func(a, b Publisher) int {
		return cmp.Or(cmp.Compare(a.Subject, b.Subject), cmp.Compare(a.ID, b.ID))
	})

	pubs := map[string]*PublishedSubject{}
	subs := map[string]*SubscribedStream{}
	for _, target := range slices.Sorted(maps.Keys(samples)) {
		ring := samples[target]
		last := ring[len(ring)-1]
		if last.err != "" {
			continue
		}
		var prev *sample
		if len(ring) >= 2 && ring[len(ring)-2].err == "" {
			prev = ring[len(ring)-2]
		}
		dt := 0.0
		if prev != nil {
			dt = last.at.Sub(prev.at).Seconds()
		}
		for key, c := range last.events.pubs {
			p := pubs[key]
			if p == nil {
				p = &PublishedSubject{Transport: c.transport, Subject: c.subject, RatePerSec: unknown}
				pubs[key] = p
			}
			p.Processes++
			p.Published += Num(c.published)
			p.Errors += Num(c.errors)
			p.SendDropped += Num(c.sendDropped)
			if prev != nil && dt > 0 {
				before := 0.0
				if pc := prev.events.pubs[key]; pc != nil {
					before = pc.published
				}
				if !p.RatePerSec.Known() {
					p.RatePerSec = 0
				}
				p.RatePerSec += Num(max(0, c.published-before) / dt)
			}
		}
		for key, c := range last.events.subs {
			s := subs[key]
			if s == nil {
				s = &SubscribedStream{Transport: c.transport, Pattern: c.pattern, RatePerSec: unknown}
				subs[key] = s
			}
			s.Processes++
			s.Received += Num(c.received)
			s.Lost += Num(max(0, c.lost-c.reordered))
			s.Dropped += Num(c.dropped)
			s.Malformed += Num(c.malfd)
			if prev != nil && dt > 0 {
				before := 0.0
				if pc := prev.events.subs[key]; pc != nil {
					before = pc.received
				}
				if !s.RatePerSec.Known() {
					s.RatePerSec = 0
				}
				s.RatePerSec += Num(max(0, c.received-before) / dt)
			}
		}
	}
	ev.Published = []PublishedSubject{}
	for _, k := range slices.Sorted(maps.Keys(pubs)) {
		ev.Published = append(ev.Published, *pubs[k])
	}
	ev.Subscriptions = []SubscribedStream{}
	for _, k := range slices.Sorted(maps.Keys(subs)) {
		ev.Subscriptions = append(ev.Subscriptions, *subs[k])
	}
	return ev
}

// close ends the subscription and waits for its reader.
func (w *eventWatch) close() {
	w.cancel()
	w.mu.Lock()
	sub := w.sub
	w.mu.Unlock()
	if sub != nil {
		_ = sub.Close()
	}
	w.wg.Wait()
}
