package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/internal/zapslog"
)

// Defaults for the zero fields of Config.
const (
	// DefaultLeaseTTL is the lease TTL when Config.LeaseTTL is zero.
	DefaultLeaseTTL = 10 * time.Second
	// DefaultDialTimeout is the dial timeout when Config.DialTimeout is zero.
	DefaultDialTimeout = 5 * time.Second
)

// Config configures a Discovery.
type Config struct {
	// Endpoints are the etcd client URLs (config key
	// discovery.etcd_endpoints, environment ETCD_ENDPOINTS).
	Endpoints []string
	// LeaseTTL is how long records outlive the last keep-alive, rounded
	// up to whole seconds; zero means DefaultLeaseTTL. etcd raises a TTL
	// below its minimum, 1.5 election timeouts (2s with its defaults);
	// New then logs both at info level.
	LeaseTTL time.Duration
	// DialTimeout bounds how long New waits for etcd, and each call made
	// in the background and in Close; zero means DefaultDialTimeout.
	DialTimeout time.Duration
	// Logger receives this package's log lines and the etcd client's
	// warnings and errors; nil means slog.Default().
	Logger *slog.Logger
	// FailOnLeaseLoss makes the Discovery give up when its lease is lost,
	// instead of registering its records again under a new lease: Done
	// is closed, Err returns an error that is ErrLeaseLost, and Register
	// fails with it. A program that would rather exit and be restarted,
	// as Dynamo's workers do, watches Done.
	FailOnLeaseLoss bool
	// Username and Password authenticate to an etcd with authentication
	// enabled (config keys discovery.etcd_username and etcd_password, set
	// by Dynamo's ETCD_AUTH_USERNAME and ETCD_AUTH_PASSWORD): both or
	// neither. They may be used with TLS and a client certificate.
	Username, Password string
	// TLSCAFile, TLSCertFile and TLSKeyFile set up TLS with etcd (config
	// keys discovery.etcd_tls_ca_file, etcd_tls_cert_file and
	// etcd_tls_key_file, set by Dynamo's ETCD_AUTH_CA,
	// ETCD_AUTH_CLIENT_CERT and ETCD_AUTH_CLIENT_KEY). Each holds the name
	// of a PEM file or the PEM text itself (a value beginning with
	// -----BEGIN). TLSCAFile holds the CAs etcd's certificate is verified
	// with, empty for the system's; TLSCertFile and TLSKeyFile a client
	// certificate and its key, for etcd's --client-cert-auth, both or
	// neither. Setting any needs https:// endpoints (or endpoints without
	// a scheme); https:// alone verifies etcd with the system's CAs.
	//
	// Files are read again when they change on disk (their identity, size
	// or modification time): each new connection to etcd uses them as
	// they are then, so a renewed certificate or CA is used without a
	// restart from the next reconnection. Files that do not load leave the
	// last ones that loaded in use, with a warning.
	TLSCAFile, TLSCertFile, TLSKeyFile string
	// Configure, if set, edits the etcd client's configuration last, for
	// anything the fields above do not cover. The TLS configuration it
	// sets is used unless the TLS fields are set.
	Configure func(*clientv3.Config)
}

// ErrLeaseLost reports that the lease expired or was revoked while the
// Discovery was configured to fail on lease loss.
var ErrLeaseLost = errors.New("discovery: etcd lease lost")

// UnreachableError reports that New could not reach etcd in time.
type UnreachableError struct {
	Endpoints []string
	After     time.Duration
	Err       error // the last error from the etcd client
	tls       bool  // the client used TLS
}

// tlsKeys names the settings of TLS with etcd, for errors.
const tlsKeys = "discovery.etcd_tls_ca_file (ETCD_AUTH_CA), the CAs etcd's certificate is verified with, " +
	"and discovery.etcd_tls_cert_file and etcd_tls_key_file (ETCD_AUTH_CLIENT_CERT, ETCD_AUTH_CLIENT_KEY), the client certificate etcd verifies"

// Error says what to check: the TLS settings if the last error tells of
// a TLS handshake that failed, else the endpoints. With TLS 1.3, etcd
// refuses a client certificate after the client has finished its
// handshake, so the client may see only the connection dropped: over
// TLS, a dropped connection names the TLS settings too.
func (e *UnreachableError) Error() string {
	eps := strings.Join(e.Endpoints, ",")
	switch {
	case e.Err != nil && isTLSFailure(e.Err):
		return fmt.Sprintf("discovery: etcd at %s unreachable after %v: the TLS handshake failed (%v) (check %s)", eps, e.After, e.Err, tlsKeys)
	case e.Err != nil && e.tls && isDropped(e.Err):
		return fmt.Sprintf("discovery: etcd at %s unreachable after %v: etcd dropped the connection (%v) (check ETCD_ENDPOINTS, and, as etcd drops a client whose certificate it refuses, %s)",
			eps, e.After, e.Err, tlsKeys)
	}
	return fmt.Sprintf("discovery: etcd at %s unreachable after %v (check ETCD_ENDPOINTS)", eps, e.After)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// Discovery is a discovery.Discovery on etcd. Create one with New.
type Discovery struct {
	cfg    Config
	log    *slog.Logger
	cli    *clientv3.Client
	leases pb.LeaseClient // for grants with a requested id
	id     uint64         // the instance id: the first lease's id

	// clientLevel is the least level of the client's own lines that are
	// logged: warnings, until Close.
	clientLevel *slog.LevelVar

	ctx    context.Context // ends when Close starts
	cancel context.CancelFunc
	wg     sync.WaitGroup // the keeper and the watches
	done   chan struct{}  // closed by Close or a lease loss that is final

	// regMu orders Register and Unregister (readers) against registering
	// every record again under a new lease (the writer), so that no
	// record is missed or brought back.
	regMu sync.RWMutex

	mu     sync.Mutex
	closed bool
	err    error                  // why done was closed
	lease  clientv3.LeaseID       // the current lease
	ready  chan struct{}          // closed while the lease is believed alive
	ttl    time.Duration          // the granted TTL
	owned  map[string]ownedRecord // by key
	// orphans are the records written under the lease whose Unregister
	// failed, by key, with their mod revision: the lease keeps them
	// alive, so the keeper removes them once etcd answers.
	orphans map[string]int64
	suspect chan struct{} // capacity 1: a call saw the lease missing

	warnMu sync.Mutex
	warned map[string]int64 // malformed key -> mod revision warned about

	connMu     sync.Mutex
	reconnects chan struct{} // closed, and replaced, when the connection to etcd is back
}

var _ discovery.Discovery = (*Discovery)(nil)

// ownedRecord is a record this Discovery registered: its value, written
// again under a new lease, and its mod revision, which tells it from a
// record another client wrote since.
type ownedRecord struct {
	value string
	rev   int64
}

// New connects to etcd, grants the lease and starts keeping it alive. If
// etcd does not answer within cfg.DialTimeout (or before ctx ends) it
// returns an *UnreachableError; it never waits longer.
func New(ctx context.Context, cfg Config) (*Discovery, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("discovery: no etcd endpoints configured (set ETCD_ENDPOINTS or discovery.etcd_endpoints)")
	}
	if cfg.LeaseTTL < 0 || cfg.DialTimeout < 0 {
		return nil, fmt.Errorf("discovery: etcd lease TTL %v and dial timeout %v must not be negative", cfg.LeaseTTL, cfg.DialTimeout)
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if err := checkAuth(cfg); err != nil {
		return nil, err
	}
	cfg.Endpoints = append([]string(nil), cfg.Endpoints...)
	base := cfg.Logger
	if base == nil {
		base = slog.Default()
	}
	log := base.With("component", "discovery/etcd")
	clientLevel := new(slog.LevelVar)
	clientLevel.Set(slog.LevelWarn)

	ccfg := clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: cfg.DialTimeout,
		// Notice a connection that went silent (no RST) within 15s, so
		// that watches do not hang on it.
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		Logger:               zapslog.New(base, clientLevel, "etcd-client"),
		DialOptions: []grpc.DialOption{
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff:           grpcbackoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: reconnectMaxDelay(cfg.LeaseTTL)},
				MinConnectTimeout: cfg.DialTimeout,
			}),
		},
	}
	ccfg.Username, ccfg.Password = cfg.Username, cfg.Password
	if cfg.Configure != nil {
		cfg.Configure(&ccfg)
	}
	// The client's own credentials would do for https:// without files,
	// but these also note why a connection failed; a TLS configuration
	// from Configure is left to the client.
	var creds *tlsFiles
	if cfg.TLSCAFile != "" || cfg.TLSCertFile != "" || cfg.TLSKeyFile != "" ||
		ccfg.TLS == nil && slices.ContainsFunc(cfg.Endpoints, func(ep string) bool { return hasScheme(ep, "https://") }) &&
			!slices.ContainsFunc(cfg.Endpoints, func(ep string) bool { return hasScheme(ep, "http://") }) {
		var err error
		if creds, err = newTLSFiles(log, cfg.TLSCAFile, cfg.TLSCertFile, cfg.TLSKeyFile); err != nil {
			return nil, fmt.Errorf("discovery: etcd TLS: %w", err)
		}
		// The client dials with its dial options after its own
		// credentials: the last credentials given are used.
		ccfg.DialOptions = append(slices.Clip(ccfg.DialOptions), grpc.WithTransportCredentials(tlsCreds{creds}))
	}
	// The time to connect runs from here: with a user, the client
	// authenticates before it returns.
	gctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	cli, err := clientv3.New(ccfg)
	if err != nil {
		return nil, connectError(ctx, gctx, cfg, creds, err)
	}
	d := &Discovery{
		cfg:     cfg,
		log:     log,
		cli:     cli,
		leases:  pb.NewLeaseClient(cli.ActiveConnection()),
		done:    make(chan struct{}),
		ready:   make(chan struct{}),
		owned:   make(map[string]ownedRecord),
		orphans: make(map[string]int64),
		suspect: make(chan struct{}, 1),
		warned:  make(map[string]int64),

		clientLevel: clientLevel,
		reconnects:  make(chan struct{}),
	}

	lease, ttl, err := d.grant(gctx, 0)
	if err != nil {
		cli.Close()
		return nil, connectError(ctx, gctx, cfg, creds, err)
	}
	// gRPC lets calls through a new connection a moment before it reports
	// the connection ready (it installs the picker first). followConn
	// would take that moment for a loss and, once the state catches up,
	// have every watch read its records again: wait for it here. If it
	// does not catch up, followConn treats the connection as down.
	conn := cli.ActiveConnection()
	for s := conn.GetState(); s != connectivity.Ready && conn.WaitForStateChange(gctx, s); s = conn.GetState() {
	}
	d.id = uint64(lease)
	d.lease, d.ttl = lease, ttl
	close(d.ready)
	d.ctx, d.cancel = context.WithCancel(context.Background())
	d.wg.Add(2)
	go d.keep(d.ctx)
	go d.followConn(d.ctx)
	log.Debug("discovery: etcd lease granted", "lease", hex(lease), "ttl", ttl, "endpoints", cfg.Endpoints)
	// etcd raises a TTL below its minimum (1.5 election timeouts, rounded
	// up to a second) without an error. The leases granted again later
	// are raised alike, so this is said once. The TTL asked is rounded up
	// to a second, as grant asks it.
	if ttl > (cfg.LeaseTTL + time.Second - 1).Truncate(time.Second) {
		log.Info("discovery: etcd granted a longer lease TTL than asked; records outlive a process that vanishes by the granted TTL",
			"asked", cfg.LeaseTTL, "granted", ttl, "lease", hex(lease))
	}
	return d, nil
}

// reconnectMaxDelay caps the client's reconnect backoff for a lease of
// leaseTTL. gRPC's default grows to 2 minutes; after an etcd outage,
// records should come back within seconds, so the cap is 2 s. A short
// lease needs less: etcd, when it starts again, gives each lease its TTL
// (plus an election timeout) from then, and a client still backing off
// for up to 2.4 s (2 s and 20 % jitter) loses a 1 s lease that etcd kept
// for it. Capped at a third of the TTL, the keep-alive interval, the
// client is back with about half the TTL to spare for a keep-alive.
func reconnectMaxDelay(leaseTTL time.Duration) time.Duration {
	ttl := (leaseTTL + time.Second - 1).Truncate(time.Second) // as grant asks for it
	return min(2*time.Second, ttl/3)
}

// checkAuth refuses settings the etcd client would ignore without a word.
func checkAuth(cfg Config) error {
	switch {
	case cfg.Password != "" && cfg.Username == "":
		return errors.New("discovery: etcd password set without a user; set discovery.etcd_username (ETCD_AUTH_USERNAME) too")
	case cfg.Username != "" && cfg.Password == "":
		return fmt.Errorf("discovery: etcd user %q set without a password; set discovery.etcd_password (ETCD_AUTH_PASSWORD) too, "+
			"or, for a user etcd authenticates by its client certificate, discovery.etcd_tls_cert_file instead", cfg.Username)
	}
	if cfg.TLSCAFile == "" && cfg.TLSCertFile == "" && cfg.TLSKeyFile == "" {
		return nil
	}
	var plain []string
	for _, ep := range cfg.Endpoints {
		if hasScheme(ep, "http://") {
			plain = append(plain, ep)
		}
	}
	if len(plain) > 0 {
		return fmt.Errorf("discovery: etcd TLS files set with http:// endpoints %s; write them https://", strings.Join(plain, ","))
	}
	return nil
}

func hasScheme(endpoint, scheme string) bool {
	return len(endpoint) >= len(scheme) && strings.EqualFold(endpoint[:len(scheme)], scheme)
}

// connectError is New's error for err, from connecting to etcd within
// gctx (from ctx) with creds (nil without TLS): what failed, and what to
// check.
func connectError(ctx, gctx context.Context, cfg Config, creds *tlsFiles, err error) error {
	eps := strings.Join(cfg.Endpoints, ",")
	// rpctypes.Error reads the status of an error it is given as is.
	etcdErr := err
	if se := (interface{ GRPCStatus() *status.Status })(nil); errors.As(err, &se) {
		etcdErr = se.GRPCStatus().Err()
	}
	switch rpctypes.Error(etcdErr) {
	case rpctypes.ErrAuthFailed:
		return fmt.Errorf("discovery: etcd at %s refused user %q: %w (check discovery.etcd_username and discovery.etcd_password, or ETCD_AUTH_USERNAME and ETCD_AUTH_PASSWORD)",
			eps, cfg.Username, err)
	case rpctypes.ErrUserEmpty, rpctypes.ErrInvalidAuthToken:
		return fmt.Errorf("discovery: etcd at %s requires authentication: %w (set discovery.etcd_username and discovery.etcd_password, or ETCD_AUTH_USERNAME and ETCD_AUTH_PASSWORD, "+
			"or a client certificate whose common name is an etcd user)", eps, err)
	}
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("discovery: connecting to etcd at %s: %w", eps, ctx.Err())
	case gctx.Err() != nil || isUnavailable(err):
		if creds != nil && !isTLSFailure(err) {
			if f := creds.lastFailure(); f != nil {
				err = fmt.Errorf("%w; the last connection: %v", err, f)
			}
		}
		return &UnreachableError{Endpoints: cfg.Endpoints, After: cfg.DialTimeout, Err: err, tls: creds != nil}
	}
	return fmt.Errorf("discovery: etcd at %s: %w", eps, err)
}

// followConn closes d.reconnects each time the connection to etcd is
// ready again after it was not, until ctx ends. The etcd client resumes
// watches on the new connection from the revision they had reached; if
// etcd came back without its data, revisions start again below that, and
// a resumed watch would miss every change until etcd caught up. Watchers
// read their records again instead.
func (d *Discovery) followConn(ctx context.Context) {
	defer d.wg.Done()
	conn := d.cli.ActiveConnection()
	state := conn.GetState()
	down := state != connectivity.Ready
	for conn.WaitForStateChange(ctx, state) {
		state = conn.GetState()
		switch {
		case state != connectivity.Ready:
			down = true
		case down:
			down = false
			d.connMu.Lock()
			close(d.reconnects)
			d.reconnects = make(chan struct{})
			d.connMu.Unlock()
		}
	}
}

// errUnreachable ends a call that waits for a connection to etcd which
// the client has just failed to establish.
var errUnreachable = errors.New("etcd unreachable: the client cannot connect to it")

// whileReachable returns a copy of ctx that also ends, with cause
// errUnreachable, while the client fails to connect to etcd (its
// connection is in TRANSIENT_FAILURE). A call waiting for the connection
// would otherwise wait out its whole timeout, and a process shutting down
// with etcd gone would wait that long for each call; the lease makes
// waiting pointless, as its records expire with it.
//
// Failing to connect may be stale: after etcd is back, the client waits
// out its reconnect backoff (up to 2.4 s; see reconnectMaxDelay) before
// it tries again. So the first time the copy finds the client failing, it
// has it try again at once, and ends only if the client is not connected
// reconnectGrace later.
func (d *Discovery) whileReachable(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	conn := d.cli.ActiveConnection()
	done := make(chan struct{})
	go func() {
		defer close(done)
		woken := false
		for state := conn.GetState(); ; state = conn.GetState() {
			switch {
			case state == connectivity.Shutdown, state == connectivity.TransientFailure && woken:
				cancel(errUnreachable)
				return
			case state == connectivity.TransientFailure:
				woken = true
				conn.ResetConnectBackoff()
				grace, stop := context.WithTimeout(ctx, reconnectGrace)
				changed := conn.WaitForStateChange(grace, state)
				stop()
				if !changed {
					cancel(errUnreachable) // unless ctx ended first
					return
				}
			case !conn.WaitForStateChange(ctx, state):
				return
			}
		}
	}()
	return ctx, func() {
		cancel(context.Canceled)
		<-done
	}
}

// reconnectGrace bounds how long whileReachable waits for the connection
// attempt it starts. On loopback a refused connection fails in well under
// a millisecond and an accepted one is ready in 1-5 ms (with the race
// detector, on a loaded machine); 100 ms leaves room for a TLS handshake
// across a network, and keeps a shutdown with etcd gone prompt.
const reconnectGrace = 100 * time.Millisecond

// unreachableErr returns errUnreachable, with err, if ctx from
// whileReachable ended because etcd is unreachable; err otherwise.
func unreachableErr(ctx context.Context, err error) error {
	if err == nil || !errors.Is(context.Cause(ctx), errUnreachable) {
		return err
	}
	if errors.Is(err, context.Canceled) {
		return errUnreachable
	}
	return fmt.Errorf("%w (%v)", errUnreachable, err)
}

// reconnected returns a channel that is closed when the connection to
// etcd is next ready again after a loss.
func (d *Discovery) reconnected() <-chan struct{} {
	d.connMu.Lock()
	defer d.connMu.Unlock()
	return d.reconnects
}

// ID returns the instance id: the id of the lease New was granted. It
// stays the same for the life of the Discovery, also when the lease is
// lost and granted again.
func (d *Discovery) ID() uint64 { return d.id }

// Done returns a channel that is closed when the Discovery can no longer
// be used: after Close, or once the lease is lost with FailOnLeaseLoss.
func (d *Discovery) Done() <-chan struct{} { return d.done }

// Err returns nil while Done is open, then why it closed:
// discovery.ErrClosed or an error that is ErrLeaseLost.
func (d *Discovery) Err() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.err
}

// Register writes inst under the lease, if its key is free.
func (d *Discovery) Register(ctx context.Context, inst discovery.Instance) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := inst.Validate(); err != nil {
		return err
	}
	val, err := json.Marshal(inst)
	if err != nil {
		return fmt.Errorf("discovery: encode %s: %w", inst.Key(), err)
	}
	key := inst.Key()
	for {
		lease, err := d.waitLease(ctx)
		if err != nil {
			return fmt.Errorf("discovery: register %s: %w", key, err)
		}
		d.regMu.RLock()
		if d.currentLease() != lease {
			d.regMu.RUnlock()
			continue
		}
		resp, err := d.create(ctx, key, string(val), lease)
		switch {
		case err == nil && resp.Succeeded:
			d.mu.Lock()
			d.owned[key] = ownedRecord{value: string(val), rev: resp.Header.Revision}
			d.mu.Unlock()
			d.regMu.RUnlock()
			return nil
		case err == nil:
			d.regMu.RUnlock()
			holder := "another client"
			if kv := existing(resp); kv != nil && clientv3.LeaseID(kv.Lease) == lease {
				holder = "this client"
			}
			return fmt.Errorf("%w: %s is held by %s (unregister it first or use another instance id)", discovery.ErrDuplicate, key, holder)
		case isLeaseNotFound(err):
			d.regMu.RUnlock()
			d.suspectLease(lease)
		case isTooLarge(err):
			d.regMu.RUnlock()
			return fmt.Errorf("discovery: register %s in etcd: the record is %d bytes, more than etcd takes "+
				"(its --max-request-bytes, 1.5 MiB by default); keep Instance.Metadata small: %w", key, len(val), err)
		default:
			d.regMu.RUnlock()
			return fmt.Errorf("discovery: register %s in etcd: %w", key, d.callErr(err))
		}
	}
}

// create writes key=val under lease if key is absent; otherwise it reads
// the key that is there.
func (d *Discovery) create(ctx context.Context, key, val string, lease clientv3.LeaseID) (*clientv3.TxnResponse, error) {
	return d.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, val, clientv3.WithLease(lease))).
		Else(clientv3.OpGet(key)).
		Commit()
}

// isTooLarge reports a request that etcd, or the client before sending
// it, refused for its size.
func isTooLarge(err error) bool {
	return errors.Is(rpctypes.Error(err), rpctypes.ErrRequestTooLarge) || status.Code(err) == codes.ResourceExhausted
}

// existing returns the key the Else branch of create read, if any.
func existing(resp *clientv3.TxnResponse) *mvccpb.KeyValue {
	if len(resp.Responses) == 0 {
		return nil
	}
	r := resp.Responses[0].GetResponseRange()
	if r == nil || len(r.Kvs) == 0 {
		return nil
	}
	return r.Kvs[0]
}

// Unregister deletes inst's record, whoever registered it. If the client
// fails to connect to etcd, Unregister has it try again at once, not after
// its reconnect backoff, so that an etcd just back is reached; if that
// attempt does not connect within 100 ms, etcd is unreachable and
// Unregister returns an error instead of waiting for ctx to end. A record
// d registered is then removed once etcd answers, or expires with the
// lease.
func (d *Discovery) Unregister(ctx context.Context, inst discovery.Instance) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := inst.Validate(); err != nil {
		return err
	}
	key := inst.Key()
	d.regMu.RLock()
	defer d.regMu.RUnlock()
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return discovery.ErrClosed
	}
	r, mine := d.owned[key]
	delete(d.owned, key)
	d.mu.Unlock()
	dctx, cancel := d.whileReachable(ctx)
	_, err := d.cli.Delete(dctx, key)
	err = unreachableErr(dctx, err)
	cancel()
	d.mu.Lock()
	if err == nil {
		delete(d.orphans, key)
	} else if mine && !d.closed {
		d.orphans[key] = r.rev
	}
	d.mu.Unlock()
	if err != nil {
		if mine {
			return fmt.Errorf("discovery: unregister %s in etcd: %w (the record is removed once etcd answers)", key, d.callErr(err))
		}
		return fmt.Errorf("discovery: unregister %s in etcd: %w", key, d.callErr(err))
	}
	return nil
}

// List reads the records under q's prefix.
func (d *Discovery) List(ctx context.Context, q discovery.Query) ([]discovery.Instance, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := q.Validate(); err != nil {
		return nil, err
	}
	if d.isClosed() {
		return nil, discovery.ErrClosed
	}
	recs, _, err := d.read(ctx, q.Prefix())
	if err != nil {
		return nil, fmt.Errorf("discovery: list %s in etcd: %w", q.Prefix(), d.callErr(err))
	}
	out := make([]discovery.Instance, 0, len(recs))
	for _, r := range recs {
		out = append(out, clone(r.inst))
	}
	return out, nil
}

// record is a parsed instance record and the value it was parsed from.
type record struct {
	key  string
	val  string
	inst discovery.Instance
}

// read returns the readable records under prefix, ordered by key, and the
// revision they were read at.
func (d *Discovery) read(ctx context.Context, prefix string) ([]*record, int64, error) {
	resp, err := d.cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, err
	}
	recs := make([]*record, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		if r := d.parse(kv); r != nil {
			recs = append(recs, r)
		}
	}
	return recs, resp.Header.Revision, nil
}

// parse reads an instance record, or logs why it cannot and returns nil.
func (d *Discovery) parse(kv *mvccpb.KeyValue) *record {
	key := string(kv.Key)
	r := &record{key: key, val: string(kv.Value)}
	var why string
	if _, _, _, _, err := discovery.ParseKey(key); err != nil {
		why = err.Error()
	} else if r.inst, err = discovery.DecodeValue(kv.Value); err != nil {
		why = err.Error()
	} else if err := r.inst.Validate(); err != nil {
		why = "value is not a valid instance: " + err.Error()
	} else if got := r.inst.Key(); got != key {
		why = "value is the instance " + got + ", not the one its key names"
	} else {
		return r
	}
	d.warnMalformed(key, kv.ModRevision, why)
	return nil
}

// warnMalformed logs a malformed record once per version.
func (d *Discovery) warnMalformed(key string, rev int64, why string) {
	d.warnMu.Lock()
	if d.warned[key] == rev {
		d.warnMu.Unlock()
		return
	}
	if len(d.warned) >= 4096 {
		clear(d.warned)
	}
	d.warned[key] = rev
	d.warnMu.Unlock()
	d.log.Warn("discovery: skipping a malformed record in etcd", "key", key, "mod_revision", rev, "reason", why)
}

// Close revokes the lease, so that every record registered through d
// disappears at once, stops the keep-alives and the watches, closes their
// channels and closes the etcd client. If the client fails to connect to
// etcd, Close has it try again at once, as Unregister does; if that
// attempt does not connect within 100 ms, etcd is unreachable and Close
// does not wait for it: it returns an error and the records expire with
// the lease, LeaseTTL after the last keep-alive. If etcd is reachable but
// does not answer, the revoke gives up after DialTimeout. Later calls do
// nothing and return nil.
func (d *Discovery) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.finish(discovery.ErrClosed)
	d.mu.Unlock()

	d.cancel()
	d.wg.Wait()
	// What Close could not do it returns; the client's own lines about
	// the calls that Close gives up on (the revoke, with etcd
	// unreachable) are noise at exit.
	d.clientLevel.Set(slog.LevelError + 1)

	var err error
	d.mu.Lock()
	lease := d.lease
	d.mu.Unlock()
	// The client's context ends only if someone closed the client under
	// us (tests simulating a crash); then there is nothing to revoke with.
	if lease != clientv3.NoLease && d.cli.Ctx().Err() == nil {
		ctx, cancel := context.WithTimeout(context.Background(), d.cfg.DialTimeout)
		rctx, stop := d.whileReachable(ctx)
		_, rerr := d.leases.LeaseRevoke(rctx, &pb.LeaseRevokeRequest{ID: int64(lease)}, grpc.WaitForReady(true))
		rerr = unreachableErr(rctx, rerr)
		stop()
		cancel()
		if rerr != nil && !isLeaseNotFound(rerr) {
			err = fmt.Errorf("discovery: revoke etcd lease %s: %w (its records expire within %v)", hex(lease), rerr, d.cfg.LeaseTTL)
		}
	}
	if cerr := d.cli.Close(); cerr != nil && err == nil && !errors.Is(cerr, context.Canceled) {
		err = fmt.Errorf("discovery: close etcd client: %w", cerr)
	}
	return err
}

// finish closes done with err, once. d.mu is held.
func (d *Discovery) finish(err error) {
	if d.err != nil {
		return
	}
	d.err = err
	close(d.done)
}

func (d *Discovery) isClosed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closed
}

func (d *Discovery) currentLease() clientv3.LeaseID {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.lease
}

// callErr returns ErrClosed for an error caused by Close, err otherwise.
func (d *Discovery) callErr(err error) error {
	if d.isClosed() {
		return fmt.Errorf("%w (%v)", discovery.ErrClosed, err)
	}
	return err
}

func clone(inst discovery.Instance) discovery.Instance {
	inst.Metadata = maps.Clone(inst.Metadata)
	return inst
}

func hex(id clientv3.LeaseID) string { return strconv.FormatInt(int64(id), 16) }
