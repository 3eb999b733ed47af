// Package dashboard is the web page `loom dashboard` serves: a live view
// of a Loom system's topology, load, events, work queues and NATS server,
// with its assets embedded in the binary.
//
// A Dashboard watches the system its runtime is connected to:
//
//   - topology: the instance records in discovery, watched, so a record
//     that appears or leaves is on the page at once;
//   - load: each instance record names its process's status server
//     (metadata status_addr, set when status.port turns one on); the
//     dashboard reads its /metrics and /health every Interval and turns
//     the counters into requests/s, in flight, errors/s and p50 / p99,
//     and its loom_build_info into the build the process runs;
//   - events: its own subscription to every event follows each
//     publisher's sequence (rate, gaps, lost), beside the loom_events_*
//     counters of the scraped processes;
//   - queues: workqueue.Admin on the NATS connection;
//   - NATS: the server's monitoring endpoint (/varz) if it answers, and
//     the JetStream account info;
//   - serving: the metric families named by ServingPrefixes.
//
// Nothing is pushed by the processes: a system without a dashboard pays
// nothing. The page reads /api/stream (server-sent events); /api/state is
// the same State as one JSON document. The dashboard only reads.
package dashboard
