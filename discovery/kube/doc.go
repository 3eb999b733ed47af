// Package kube is the discovery backend on a Kubernetes API server, chosen
// with discovery.backend = "kubernetes". It needs nothing installed in the
// cluster: each record is a coordination.k8s.io/v1 Lease, a built-in
// object, and it passes the same conformance suite (discovery/discoverytest)
// as the other backends, against a real kube-apiserver.
//
// # Objects
//
// The record under key v1/instances/{ns}/{component}/{endpoint}/{id:x} is
// the Lease named [LeaseName](key) ("loom-" and 40 hex digits of the key's
// SHA-256: record names may hold '_', which Kubernetes names may not) in
// one Kubernetes namespace ([Config.Namespace]). Its labels name the
// record ([LabelManagedBy], [LabelNamespace], [LabelComponent],
// [LabelEndpoint], [LabelInstance]), so a query is a label selector the API
// server applies; its annotations hold the key ([AnnotationKey]) and the
// record, the JSON of discovery.Instance ([AnnotationRecord]). A Lease that
// carries Loom's label but not a well-formed record is skipped with a
// warning. When [Config.PodName] and [Config.PodUID] are set (the downward
// API's POD_NAME and POD_UID), the Pod owns every Lease, so Kubernetes'
// garbage collector deletes the records with the Pod. A record whose Lease's
// annotations would pass the API server's limit (256 KiB per object) is
// refused by Register with an error giving its size and the limit.
//
// # Liveness
//
// The owner writes spec.renewTime every TTL/3 (spec.leaseDurationSeconds is
// the TTL, discovery.lease_ttl), and a second after a renewal that failed.
// Close deletes its Leases. The Lease of an Unregister that failed is no
// longer renewed, and its owner tries to delete it again every second. Nothing in Kubernetes deletes a Lease that
// stops being renewed, so watchers time each record themselves: a record is
// gone TTL after the last renewal the watcher saw, by the watcher's own
// clock (the owner's clock is read only for a Lease seen for the first
// time, so a dead process's Lease found at start-up is expired at once). A
// process that dies without Close (SIGKILL, lost node) is therefore gone
// from every watcher within TTL of its last renewal, in a cluster or not,
// and List leaves out Leases past their renewTime + duration. A watcher
// then deletes a Lease expired for longer than one more TTL, on condition
// that it is still the version it saw, so a late renewal wins.
//
// While a watcher cannot reach the API server, nothing expires: the owners
// cannot renew either, and removing every instance because the watcher's
// own connection failed is the false removal users of other discovery
// systems report. When the watch is back, each record that was live when it
// went away gets a full TTL from then to be renewed; one that had expired
// before stays expired. An owner whose Lease expired and was deleted while it
// could not reach the API server creates it again, and so does one whose
// Lease the API server lost: one missing while the store's resource version
// is below the version the owner's last write got (the store was lost, or
// restored from an older copy). A Lease another client deleted or replaced
// while its owner was renewing it is given up; so is one lost by a store
// that has since passed that version, which cannot be told from a deletion.
//
// # Watches
//
// A watch lists the Leases its query selects, sends an Added for each live
// record in key order and one Synced, then follows a Kubernetes watch from
// the list's resource version, with bookmarks. When the watch connection
// ends it resumes from the last resource version it saw, unless, after an
// outage, the API server's store is behind that version (it was lost, or
// restored from an older copy: a watch from there would wait for the store
// to catch up and miss every change until then); then, as when the API
// server answers that the version is too old (410 Gone), it lists again and
// sends the difference from what it had told its reader. Records are
// compared by content, not by key alone: a record registered again under
// the same key with a new address arrives as Removed then Added, never
// swallowed. A reader that falls behind never blocks anything: changes wait
// in a per-watch map, one entry per record, and the reader gets each
// record's net change.
//
// # Access
//
// [RESTConfig] reads discovery.kubeconfig (KUBECONFIG) as kubectl does, or
// uses the Pod's service account in a cluster. The process needs a Role in
// its namespace granting get, list, watch, create, update and delete on
// coordination.k8s.io leases, and nothing else; deploy/ has it.
package kube
