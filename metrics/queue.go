package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Queue is the metrics of one work queue (package workqueue) or one
// EventBus consumer group (package eventbus), bound once so that the job
// path does no label lookups. Every field is safe for concurrent use.
type Queue struct {
	// Enqueued counts jobs the server acknowledged storing.
	Enqueued prometheus.Counter
	// Acked counts jobs whose handler succeeded and that were acknowledged.
	Acked prometheus.Counter
	// Nakked counts failed attempts handed back for a later retry.
	Nakked prometheus.Counter
	// Redelivered counts deliveries after the first one of a job.
	Redelivered prometheus.Counter
	// DeadLettered counts jobs moved to the dead-letter stream.
	DeadLettered prometheus.Counter
	// Pending is the number of jobs not yet delivered, as the server last
	// reported it.
	Pending prometheus.Gauge
	// HandlerDuration observes how long each handler call took, in seconds.
	HandlerDuration prometheus.Observer
}

// queueVecs are the vectors of the queue metrics of one Metrics, registered
// on its registry the first time a queue asks for them.
type queueVecs struct {
	enqueued, acked, nakked, redelivered, deadLettered *prometheus.CounterVec
	pending                                            *prometheus.GaugeVec
	duration                                           *prometheus.HistogramVec

	mu     sync.Mutex
	queues map[string]*Queue
}

// queueSet is a Metrics' queue vectors, registered on first use.
type queueSet struct {
	once sync.Once
	v    *queueVecs
}

func newQueueVecs(reg *prometheus.Registry) *queueVecs {
	counter := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{"queue"})
	}
	v := &queueVecs{
		enqueued:     counter("loom_queue_enqueued_total", "Jobs the server acknowledged storing, by queue."),
		acked:        counter("loom_queue_acked_total", "Jobs handled successfully and acknowledged, by queue."),
		nakked:       counter("loom_queue_nakked_total", "Failed attempts handed back for a retry after a backoff, by queue."),
		redelivered:  counter("loom_queue_redelivered_total", "Deliveries after the first of a job (retries, AckWait expiries, crashed consumers), by queue."),
		deadLettered: counter("loom_queue_dead_lettered_total", "Jobs moved to the dead-letter stream, by queue."),
		pending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "loom_queue_pending",
			Help: "Jobs not yet delivered to a consumer, as the server last reported, by queue.",
		}, []string{"queue"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "loom_queue_handler_duration_seconds",
			Help:    "Time each job handler call took, by queue.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 12),
		}, []string{"queue"}),
		queues: make(map[string]*Queue),
	}
	reg.MustRegister(v.enqueued, v.acked, v.nakked, v.redelivered, v.deadLettered, v.pending, v.duration)
	return v
}

// Queue returns the bound metrics of the queue called name (for the
// EventBus, "topic/group"). Calls with the same name return the same value.
func (m *Metrics) Queue(name string) *Queue {
	set := &m.queues
	set.once.Do(func() { set.v = newQueueVecs(m.reg) })
	v := set.v
	v.mu.Lock()
	defer v.mu.Unlock()
	if q, ok := v.queues[name]; ok {
		return q
	}
	q := &Queue{
		Enqueued:        v.enqueued.WithLabelValues(name),
		Acked:           v.acked.WithLabelValues(name),
		Nakked:          v.nakked.WithLabelValues(name),
		Redelivered:     v.redelivered.WithLabelValues(name),
		DeadLettered:    v.deadLettered.WithLabelValues(name),
		Pending:         v.pending.WithLabelValues(name),
		HandlerDuration: v.duration.WithLabelValues(name),
	}
	v.queues[name] = q
	return q
}

// NopQueue returns queue metrics registered on a registry of their own,
// for code that was given no Metrics. Every caller shares them.
func NopQueue() *Queue { return nopQueue() }

var nopQueue = sync.OnceValue(func() *Queue { return New().Queue("unregistered") })
