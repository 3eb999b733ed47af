// Package natskv is the discovery backend on a JetStream KV bucket, for
// deployments that run on NATS alone, without etcd. It needs nats-server
// 2.11 or newer with JetStream (per-message TTL), and passes the same
// conformance suite (discovery/discoverytest) as the other backends.
//
// # Keys and values
//
// KV keys are NATS subjects, and wildcards match whole "."-separated
// tokens, so a record's key has one token per part of its address:
//
//	v1.instances.{namespace}.{component}.{endpoint}.{instance id in hex}
//
// with every "." of a (nested) namespace written as "=": namespace
// "prod.eu" is the single token "prod=eu". Names match ^[a-z0-9_-]+$, so
// "=" never occurs in one and the encoding is bijective; each key maps to
// one discovery key, v1/instances/{ns}/{component}/{endpoint}/{id:x}
// (discovery.Instance.Key), and back. A query becomes a subject filter the
// server applies (namespace "prod.eu": v1.instances.prod=eu.>; an
// endpoint: v1.instances.prod=eu.backend.generate.*), so List and Watch
// never read records they do not need, and namespace "a" never matches
// "ab" or "a.b". The value is the JSON of discovery.Instance. Records that
// another writer left malformed (a key that does not parse, a value that
// is not an instance, or one whose names or id differ from its key's) are
// skipped with a warning.
//
// # Liveness
//
// Every write of a record carries a per-message TTL (the Nats-TTL header,
// Config.TTL, 10s by default), and the owner rewrites each of its records
// every TTL/3 (16 at a time, oldest first). A rewrite is a compare-and-set
// on the revision the owner last wrote, so it never brings back a record
// that another client has unregistered or replaced. The bucket has limit
// markers on (LimitMarkerTTL), so when a record's TTL runs out the server
// leaves a marker and every watcher sees Removed. A process that dies
// without Close (SIGKILL, lost host) is therefore gone from discovery
// between 2/3 TTL and TTL after it died, the TTL counting from its last
// rewrite. One that lives on but cannot reach NATS for longer than the TTL
// loses its records and registers them again when it is back (watchers see
// Removed, then Added). Two lost rewrites in a row are harmless. A
// nats-server that comes back without its JetStream data has no bucket:
// the first rewrite or Register that finds it gone creates it again, and
// the owners register their records again in it.
//
// Per-message TTL was chosen over a bucket MaxAge that owners refresh
// within: both need nats-server 2.11 for the expiry to reach watchers
// (limit markers), but per-message TTL expires on time (measured on an
// embedded server, 1s and 2s TTLs, 32 records: watchers saw the removal
// within 3ms of the TTL, once 0.2s late; with MaxAge, 45-315ms late), it
// lets processes with different TTLs share one bucket, and it needs no
// bucket-wide MaxAge that would also reap keys others put there.
//
// A rewrite sends the same record again, which watchers compare with what
// they hold: it sends no event. Register writes only if the key has no
// live record (an expected last revision of 0, or of a marker), so the
// record of a dead owner whose TTL has not run out is still a duplicate:
// ids are random, so a collision is a real duplicate. Each write names its
// writer (the Loom-Owner header), so an owner whose rewrite was applied but
// not acknowledged keeps its record, and Close removes a record only if it
// is still the revision its owner wrote last.
//
// Unregister and Close write a delete marker, not a purge: the bucket
// keeps two revisions per key, so a watcher whose consumer lags behind a
// quick register-then-unregister still sees the record come and go. The
// marker expires after the TTL of the record it hides, so it outlives it,
// and then nothing of the key is left. While the NATS connection is down
// (disconnected, reconnecting or closed) Unregister and Close do not wait
// for it: they fail at once and the records expire with their TTL, so that
// a process stopping with NATS gone stops at once.
//
// # Watches
//
// A watch reads the latest revision of every key its filter selects (a
// JetStream ordered consumer), sends them as Added in key order, then
// Synced, then changes. nats.go's end-of-snapshot signal counts messages
// and comes early while records are being rewritten, so a snapshot ends
// instead when the consumer has delivered the latest revision that
// matches the filter, read from the stream after that delivery. List works
// the same way. When the NATS connection comes back after a disconnect or
// a server restart, a watch reads the records again and sends the
// difference from what it had told its reader; so does it when the bucket
// is created again after it was deleted or lost (it listens for
// JetStream's advisory of that), as its consumer went with the old
// stream. A reader that falls behind never blocks anything: changes wait
// in a per-watch map with one entry per record, and the reader gets each
// record's net change.
package natskv
