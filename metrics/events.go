package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// The event plane's metrics (package events). Publishers and subscriptions
// keep their own counters (they need them for Stats anyway) and register
// a function that reads them; a collector on the runtime's registry sums
// them by label when the registry is scraped, so publishing and receiving
// an event costs no metric update. A closed publisher or subscription
// leaves its last counts in the totals, so the counters never go down.
// The collector is registered the first time a publisher or subscription
// is made, so a process that uses no events exports none.
//
// Publishers are labelled by transport and subject; subscriptions by
// transport and subject pattern (which may hold wildcards).
//
// Loss accounting: loom_events_lost_total counts sequence numbers a
// subscription saw skipped when a later one arrived; one that arrives
// after all is delivered and counted in loom_events_reordered_total, so
// the events that never arrived are lost minus reordered.
// loom_events_dropped_total counts events that did arrive but were dropped
// by a full subscription buffer; loom_events_send_dropped_total counts
// events a ZeroMQ publisher dropped for a subscriber whose queue was full
// (that subscriber counts them as lost).

var (
	pubLabels = []string{"transport", "subject"}
	subLabels = []string{"transport", "pattern"}

	eventDescs = struct {
		published, publishErrors, sendDropped, peersRefused                  *prometheus.Desc
		received, delivered, lost, reordered, duplicates, dropped, malformed *prometheus.Desc
	}{
		published:     prometheus.NewDesc("loom_events_published_total", "Events published, by transport and subject.", pubLabels, nil),
		publishErrors: prometheus.NewDesc("loom_events_publish_errors_total", "Publish calls that failed, by transport and subject.", pubLabels, nil),
		sendDropped:   prometheus.NewDesc("loom_events_send_dropped_total", "Events a ZeroMQ publisher dropped for a subscriber whose send queue was full.", pubLabels, nil),
		peersRefused:  prometheus.NewDesc("loom_events_peers_refused_total", "Connections a ZeroMQ publisher closed at accept because it held events.zmq.max_peers.", pubLabels, nil),
		received:      prometheus.NewDesc("loom_events_received_total", "Events a subscription accepted (not duplicates, not malformed).", subLabels, nil),
		delivered:     prometheus.NewDesc("loom_events_delivered_total", "Events a subscription handed to its reader.", subLabels, nil),
		lost:          prometheus.NewDesc("loom_events_lost_total", "Sequence numbers a subscription saw a publisher skip (events that never arrived, unless reordered says they did later).", subLabels, nil),
		reordered:     prometheus.NewDesc("loom_events_reordered_total", "Events that arrived after a later event of the same publisher (counted as lost, then delivered).", subLabels, nil),
		duplicates:    prometheus.NewDesc("loom_events_duplicates_total", "Events that arrived again and were not delivered twice.", subLabels, nil),
		dropped:       prometheus.NewDesc("loom_events_dropped_total", "Events dropped by a full subscription buffer (events.overflow).", subLabels, nil),
		malformed:     prometheus.NewDesc("loom_events_malformed_total", "Messages that could not be decoded as events; skipped.", subLabels, nil),
	}
)

// EventPublisherCounts are one publisher's counters.
type EventPublisherCounts struct {
	Published, Errors, SendDropped, PeersRefused uint64
}

// EventSubscriptionCounts are one subscription's counters.
type EventSubscriptionCounts struct {
	Received, Delivered, Lost, Reordered, Duplicates, Dropped, Malformed uint64
}

type eventMetrics struct {
	once sync.Once

	mu         sync.Mutex
	pubs       map[*EventSource]struct{}
	subs       map[*EventSource]struct{}
	retiredPub map[[2]string]EventPublisherCounts
	retiredSub map[[2]string]EventSubscriptionCounts
}

// EventSource is a registered publisher or subscription.
type EventSource struct {
	m       *Metrics
	labels  [2]string
	readPub func() EventPublisherCounts
	readSub func() EventSubscriptionCounts
}

func (m *Metrics) eventsRegistered() *eventMetrics {
	e := &m.events
	e.once.Do(func() {
		e.pubs = make(map[*EventSource]struct{})
		e.subs = make(map[*EventSource]struct{})
		e.retiredPub = make(map[[2]string]EventPublisherCounts)
		e.retiredSub = make(map[[2]string]EventSubscriptionCounts)
		m.reg.MustRegister(eventCollector{e})
	})
	return e
}

// EventPublisher registers a publisher on transport publishing to subject,
// whose counters read returns. Unregister it when the publisher stops.
func (m *Metrics) EventPublisher(transport, subject string, read func() EventPublisherCounts) *EventSource {
	e := m.eventsRegistered()
	s := &EventSource{m: m, labels: [2]string{transport, subject}, readPub: read}
	e.mu.Lock()
	e.pubs[s] = struct{}{}
	e.mu.Unlock()
	return s
}

// EventSubscription registers a subscription on transport to pattern,
// whose counters read returns. Unregister it when the subscription ends.
func (m *Metrics) EventSubscription(transport, pattern string, read func() EventSubscriptionCounts) *EventSource {
	e := m.eventsRegistered()
	s := &EventSource{m: m, labels: [2]string{transport, pattern}, readSub: read}
	e.mu.Lock()
	e.subs[s] = struct{}{}
	e.mu.Unlock()
	return s
}

// Unregister reads the source's counts a last time into the totals and
// stops reading it. Calling it again does nothing.
func (s *EventSource) Unregister() {
	e := &s.m.events
	e.mu.Lock()
	defer e.mu.Unlock()
	if s.readPub != nil {
		if _, ok := e.pubs[s]; ok {
			delete(e.pubs, s)
			e.retiredPub[s.labels] = addPub(e.retiredPub[s.labels], s.readPub())
		}
		return
	}
	if _, ok := e.subs[s]; ok {
		delete(e.subs, s)
		e.retiredSub[s.labels] = addSub(e.retiredSub[s.labels], s.readSub())
	}
}

func addPub(a, b EventPublisherCounts) EventPublisherCounts {
	return EventPublisherCounts{a.Published + b.Published, a.Errors + b.Errors, a.SendDropped + b.SendDropped, a.PeersRefused + b.PeersRefused}
}

func addSub(a, b EventSubscriptionCounts) EventSubscriptionCounts {
	return EventSubscriptionCounts{a.Received + b.Received, a.Delivered + b.Delivered, a.Lost + b.Lost,
		a.Reordered + b.Reordered, a.Duplicates + b.Duplicates, a.Dropped + b.Dropped, a.Malformed + b.Malformed}
}

// eventCollector sums the live and retired sources by label.
type eventCollector struct{ e *eventMetrics }

// Describe sends the descriptions of the event metrics.
func (c eventCollector) Describe(ch chan<- *prometheus.Desc) {
	d := eventDescs
	for _, x := range []*prometheus.Desc{d.published, d.publishErrors, d.sendDropped, d.peersRefused,
		d.received, d.delivered, d.lost, d.reordered, d.duplicates, d.dropped, d.malformed} {
		ch <- x
	}
}

// Collect sums the live and retired sources by label.
func (c eventCollector) Collect(ch chan<- prometheus.Metric) {
	e := c.e
	e.mu.Lock()
	pubs := make(map[[2]string]EventPublisherCounts, len(e.retiredPub)+len(e.pubs))
	for l, v := range e.retiredPub {
		pubs[l] = v
	}
	for s := range e.pubs {
		pubs[s.labels] = addPub(pubs[s.labels], s.readPub())
	}
	subs := make(map[[2]string]EventSubscriptionCounts, len(e.retiredSub)+len(e.subs))
	for l, v := range e.retiredSub {
		subs[l] = v
	}
	for s := range e.subs {
		subs[s.labels] = addSub(subs[s.labels], s.readSub())
	}
	e.mu.Unlock()
	d := eventDescs
	counter := func(desc *prometheus.Desc, v uint64, l [2]string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(v), l[0], l[1])
	}
	for l, v := range pubs {
		counter(d.published, v.Published, l)
		counter(d.publishErrors, v.Errors, l)
		counter(d.sendDropped, v.SendDropped, l)
		counter(d.peersRefused, v.PeersRefused, l)
	}
	for l, v := range subs {
		counter(d.received, v.Received, l)
		counter(d.delivered, v.Delivered, l)
		counter(d.lost, v.Lost, l)
		counter(d.reordered, v.Reordered, l)
		counter(d.duplicates, v.Duplicates, l)
		counter(d.dropped, v.Dropped, l)
		counter(d.malformed, v.Malformed, l)
	}
}
