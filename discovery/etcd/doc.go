// Package etcd is the discovery backend for production: instance records
// live in an etcd cluster, bound to a lease, as in NVIDIA Dynamo.
//
//	d, err := etcd.New(ctx, etcd.Config{Endpoints: []string{"http://127.0.0.1:2379"}})
//	if err != nil {
//		return err // names the endpoints and ETCD_ENDPOINTS if etcd is unreachable
//	}
//	defer d.Close()
//	inst.ID = d.ID()
//	err = d.Register(ctx, inst)
//
// # Authentication and TLS
//
// [Config.Username] and [Config.Password] authenticate to an etcd with
// authentication enabled; [Config.TLSCAFile], [Config.TLSCertFile] and
// [Config.TLSKeyFile] verify etcd's certificate and present a client
// certificate to an etcd that requires one (--client-cert-auth). Both may
// be used at once, as etcd allows; with both, etcd takes the user from
// the password, not from the certificate. Each TLS setting is the name of
// a PEM file or the PEM text itself. In the configuration they are
// discovery.etcd_username, etcd_password and etcd_tls_*, set by the
// variables Dynamo's etcd client reads: ETCD_AUTH_USERNAME,
// ETCD_AUTH_PASSWORD, ETCD_AUTH_CA, ETCD_AUTH_CLIENT_CERT and
// ETCD_AUTH_CLIENT_KEY. (Dynamo uses user/password or TLS, the first if
// both are set; Loom uses both.)
//
// The TLS files are read again when they change on disk: each new
// connection to etcd uses the CA and client certificate on disk then.
// A refused password, an etcd that requires authentication, and a TLS
// handshake that fails are errors of New that name the settings to check.
//
// # Leases and instance ids
//
// A [Discovery] holds one lease, kept alive in the background, and writes
// every record under it, each in one transaction that creates the key only
// if it is absent (a taken key is [discovery.ErrDuplicate]). The lease id
// is the process's instance id, returned by [Discovery.ID]: New asks etcd
// for a random id at most [discovery.MaxID] (2^53-1), so that JSON clients
// keep it exact.
//
// Close revokes the lease, so the records vanish at once; if the process
// dies instead, they vanish when the lease expires, [Config.LeaseTTL] after
// the last keep-alive. A Close or an Unregister that finds etcd unreachable
// (the client fails to connect to it) does not wait for it: it has the
// client try again at once, rather than after its reconnect backoff, so
// that an etcd that has just come back is reached; if that attempt does
// not connect within 100 ms it returns an error, and the records expire
// with the lease, so that a process stopping while etcd is down stops
// promptly. The context given to New bounds only connecting; to
// revoke the lease when a context ends, as Dynamo binds its lease to its
// cancellation token, use context.AfterFunc(ctx, func() { d.Close() }).
//
// # Losing the lease
//
// If etcd is unreachable for longer than the TTL, or someone revokes the
// lease, the records are gone from etcd. The Discovery keeps serving: once
// etcd answers again it asks for a lease with the same id (so the instance
// id stays the same), registers every record again, and logs each step.
// Attempts back off exponentially with jitter so that a fleet coming back
// does not hit etcd at once. Register waits meanwhile (bounded by its
// context). With [Config.FailOnLeaseLoss] the Discovery gives up instead,
// as Dynamo does: [Discovery.Done] is closed and [Discovery.Err] says why.
//
// etcd itself never expires leases while it is down: a restarted etcd gives
// every lease a fresh TTL, so a restart, however long, only pauses
// keep-alives, and the records stay. An etcd that comes back without its
// data has no lease: the records are registered again as above.
//
// A record that another client removes with Unregister is registered again
// by its owner if the owner's lease is later lost; owners should remove
// their own records. An owner's Unregister that fails (etcd unreachable)
// returns the error and leaves the record under the lease, which it keeps
// alive: the Discovery removes the record at its first keep-alive that
// reaches etcd, unless the key has been registered again since.
//
// # Watches
//
// Watch reads the records under the query's key prefix and then watches
// from the next revision, so no change is missed or seen twice. A watch
// that etcd ends (compaction, lost leader) is restarted by reading the
// prefix again and sending the difference as Added and Removed events, and
// so is every watch when the connection to etcd is back after a loss: an
// etcd that came back without its data numbers its revisions from 1 again,
// and a watch resumed where it was would miss every change. A
// record overwritten with different content is Removed then Added. A
// watcher that does not read holds at most one pending change per record:
// changes are coalesced, and changes to different records may then arrive
// in an order other than the one they happened in.
//
// Dynamo's Endpoint records under v1/instances/ are read as instances of
// transport dynamo/... (see discovery.DecodeValue), listed and watched but
// never called. Records this package cannot read (bad JSON, a key that is
// not an instance key, a value for another key, Dynamo's other record
// types) are skipped with a warning in the log.
package etcd
