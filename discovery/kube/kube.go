package kube

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/resourceversion"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/discovery/internal/owned"
	"github.com/loomrt/loom/internal/supervise"
)

// Defaults for [Config].
const (
	// DefaultTTL is the record TTL New uses when Config.TTL is zero, the
	// etcd backend's lease TTL.
	DefaultTTL = 10 * time.Second
	// DefaultNamespace is the Kubernetes namespace New uses when
	// Config.Namespace is empty.
	DefaultNamespace = "default"
)

// apiTimeout bounds one API request made in the background.
const apiTimeout = 5 * time.Second

// closeTimeout bounds how long Close spends removing records; what it
// cannot remove expires within the TTL anyway.
const closeTimeout = 2 * time.Second

// retryWait is how soon a failed renewal is tried again.
const retryWait = time.Second

// Config configures [New]. The zero value uses the defaults.
type Config struct {
	// Namespace is the Kubernetes namespace of the Lease objects that
	// hold the records; "" means DefaultNamespace. Processes that should
	// see each other use the same one.
	Namespace string
	// TTL is how long a record outlives its owner's last renewal, so a
	// process that dies without Close leaves discovery within TTL. The
	// owner renews its records every TTL/3. Zero means DefaultTTL. It is
	// rounded up to whole seconds, the unit of a Lease's duration.
	TTL time.Duration
	// PodName and PodUID name the Pod this process runs in (the downward
	// API's metadata.name and metadata.uid). When both are set, every
	// Lease is owned by the Pod, so Kubernetes deletes the records with
	// the Pod even if nothing else does.
	PodName string
	PodUID  string
	// Identity is written as each Lease's holderIdentity; "" means the
	// Pod name or host name followed by a random suffix. It is how an
	// owner recognises its own Leases.
	Identity string
	// Logger receives warnings about malformed records, failed renewals
	// and re-syncs; nil means slog.Default().
	Logger *slog.Logger
}

// Discovery is a discovery.Discovery on coordination.k8s.io Leases. Create
// one with [New] or [Open]; it is safe for concurrent use.
type Discovery struct {
	leases    leaseClient
	namespace string
	ttl       time.Duration
	holder    string
	owners    []metav1.OwnerReference
	log       *slog.Logger
	tasks     *supervise.Group // the renewal loop, the watches, the reaper
	server    string           // for messages

	// relists counts the watches' lists after the first (410 Gone), and
	// reaps the expired Leases a watch deleted.
	relists, reaps atomic.Int64

	mu     sync.Mutex
	closed bool
	owned  map[string]*record // by Lease name
	reaped map[string]bool    // Lease UIDs+versions being reaped now
	// unremoved holds the records whose Unregister failed, by Lease name:
	// the renewal loop deletes them once the API server answers, trying
	// within a second of a failure (retry).
	unremoved map[string]*record
	retry     chan struct{}
}

var _ discovery.Discovery = (*Discovery)(nil)

// record is one record this Discovery registered and keeps renewing. A new
// Register makes a new record, so pointer identity tells two registrations
// of a key apart.
type record struct {
	name string
	key  string
	// lease is the Lease as last written; renewed is when, by the local
	// clock. Both are guarded by Discovery.mu.
	lease   *coordinationv1.Lease
	renewed time.Time
}

// Open connects to the API server rc describes and returns a Discovery
// there, as [New] does.
func Open(ctx context.Context, rc *rest.Config, cfg Config) (*Discovery, error) {
	if rc == nil {
		return nil, errors.New("kube: Open needs a rest.Config; got nil")
	}
	rc = rest.CopyConfig(rc)
	// A whole-request timeout would cut every watch short; each call
	// here has its own deadline instead.
	rc.Timeout = 0
	// Each record costs a write every TTL/3, and client-go's default of
	// 5 requests a second would hold renewals back behind a few dozen.
	if rc.QPS == 0 {
		rc.QPS = 200
	}
	if rc.Burst == 0 {
		rc.Burst = 400
	}
	// A client of the coordination.k8s.io group alone (leases.go says why).
	c, err := rest.RESTClientFor(restConfig(rc))
	if err != nil {
		return nil, fmt.Errorf("kube: client for the API server at %s: %w", rc.Host, err)
	}
	d, err := newDiscovery(ctx, c, cfg, rc.Host)
	if err != nil {
		return nil, err
	}
	// Processes in different namespaces never see each other; say where
	// this one looks.
	d.log.Info("kube: discovery records are Leases in this namespace", "server", rc.Host, "ttl", d.ttl)
	return d, nil
}

// New returns a Discovery whose records are Leases in cfg.Namespace, read
// and written through c, a REST client of the coordination.k8s.io/v1 API
// group (Open makes one; a clientset's CoordinationV1().RESTClient() serves
// too). It lists the Leases once to check that the API
// server answers and that this process may read them, and fails with an
// error saying what is missing (the Role in deploy/ grants it) if not.
func New(ctx context.Context, c rest.Interface, cfg Config) (*Discovery, error) {
	return newDiscovery(ctx, c, cfg, "the API server")
}

// newDiscovery is New for the API server named server in messages.
func newDiscovery(ctx context.Context, c rest.Interface, cfg Config, server string) (*Discovery, error) {
	if c == nil {
		return nil, errors.New("kube: New needs a Kubernetes client; got nil")
	}
	ttl := cmp.Or(cfg.TTL, DefaultTTL)
	if ttl < time.Second {
		return nil, fmt.Errorf("kube: Config.TTL %v is below 1s, the shortest Lease duration", cfg.TTL)
	}
	if r := ttl % time.Second; r != 0 {
		ttl += time.Second - r
	}
	ns := cmp.Or(cfg.Namespace, DefaultNamespace)
	if (cfg.PodName == "") != (cfg.PodUID == "") {
		return nil, fmt.Errorf("kube: Config.PodName %q and Config.PodUID %q must be set together (from the downward API's metadata.name and metadata.uid) or not at all", cfg.PodName, cfg.PodUID)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "discovery/kube", "namespace", ns)
	d := &Discovery{
		leases:    leaseClient{c: c, ns: ns},
		namespace: ns,
		ttl:       ttl,
		holder:    cmp.Or(cfg.Identity, identity(cfg.PodName)),
		log:       log,
		server:    server,
		owned:     make(map[string]*record),
		unremoved: make(map[string]*record),
		retry:     make(chan struct{}, 1),
		reaped:    make(map[string]bool),
	}
	if cfg.PodName != "" {
		d.owners = []metav1.OwnerReference{{
			APIVersion: "v1",
			Kind:       "Pod",
			Name:       cfg.PodName,
			UID:        types.UID(cfg.PodUID),
		}}
	}
	cctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	if _, err := d.leases.List(cctx, metav1.ListOptions{LabelSelector: selector(discovery.Query{}), Limit: 1}); err != nil {
		return nil, d.apiError("list Leases", err)
	}
	d.tasks = supervise.New(context.Background(), log, nil)
	if err := d.tasks.Go("kube renew", d.renewLoop, supervise.Restart(time.Second, ttl)); err != nil {
		return nil, err
	}
	return d, nil
}

// identity returns a holder identity: the Pod or host name and a random
// suffix, unique to this Discovery value.
func identity(pod string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := pod
	if name == "" {
		name, _ = os.Hostname()
	}
	if name == "" {
		name = "loom"
	}
	return name + "-" + hex.EncodeToString(b[:])
}

// apiError says what failed and what to do about it.
func (d *Discovery) apiError(what string, err error) error {
	switch {
	case apierrors.IsForbidden(err):
		return fmt.Errorf("kube: %s in namespace %q at %s: %w (the process's service account or user needs a Role "+
			"granting get, list, watch, create, update and delete on coordination.k8s.io leases there; deploy/ has one)",
			what, d.namespace, d.server, err)
	case apierrors.IsUnauthorized(err):
		return fmt.Errorf("kube: %s at %s: %w (check the credentials of the kubeconfig or the service account token)", what, d.server, err)
	}
	return fmt.Errorf("kube: %s in namespace %q at %s: %w", what, d.namespace, d.server, err)
}

// newLease builds the Lease that holds inst.
func (d *Discovery) newLease(inst discovery.Instance, value []byte, now time.Time) *coordinationv1.Lease {
	key := inst.Key()
	t := metav1.NewMicroTime(now)
	return &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{
			Name:            LeaseName(key),
			Namespace:       d.namespace,
			Labels:          recordLabels(inst),
			Annotations:     map[string]string{AnnotationKey: key, AnnotationRecord: string(value)},
			OwnerReferences: slices.Clone(d.owners),
		},
		Spec: coordinationv1.LeaseSpec{
			HolderIdentity:       ptr.To(d.holder),
			LeaseDurationSeconds: ptr.To(int32(d.ttl / time.Second)),
			AcquireTime:          &t,
			RenewTime:            &t,
		},
	}
}

// expired reports whether a Lease's record is past its TTL by the local
// clock.
func expired(dec decoded, now time.Time) bool {
	return !now.Before(dec.renew.Add(dec.ttl))
}

// Register writes inst as a Lease and keeps renewing it until Close, an
// Unregister of its key, or another client's removal of the record. It
// fails with ErrDuplicate while a live record with the same key exists; a
// Lease whose TTL has run out (its owner died) is replaced.
func (d *Discovery) Register(ctx context.Context, inst discovery.Instance) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := inst.Validate(); err != nil {
		return err
	}
	if d.isClosed() {
		return discovery.ErrClosed
	}
	value, err := json.Marshal(inst)
	if err != nil {
		return fmt.Errorf("kube: encode %s: %w", inst.Key(), err)
	}
	if n := annotationsSize(inst.Key(), value); n > maxAnnotations {
		return fmt.Errorf("kube: register %s: the record is %d bytes and its Lease's annotations %d, more than the API server takes "+
			"(%d bytes of annotations per object); keep Instance.Metadata small", inst.Key(), len(value), n, maxAnnotations)
	}
	l, renewed, err := d.create(ctx, inst, value)
	if err != nil {
		return err
	}
	r := &record{name: l.Name, key: inst.Key(), lease: l, renewed: renewed}
	d.mu.Lock()
	if d.closed {
		// Close has already removed what it knew of.
		d.mu.Unlock()
		d.remove(r)
		return discovery.ErrClosed
	}
	d.owned[r.name] = r
	d.mu.Unlock()
	return nil
}

// create writes a new Lease for inst, over an expired one if it finds one,
// and returns it with the local time it was written.
func (d *Discovery) create(ctx context.Context, inst discovery.Instance, value []byte) (*coordinationv1.Lease, time.Time, error) {
	key := inst.Key()
	for range 3 {
		now := time.Now()
		l, err := d.leases.Create(ctx, d.newLease(inst, value, now), metav1.CreateOptions{})
		if err == nil {
			return l, now, nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return nil, time.Time{}, d.apiError("register "+key, err)
		}
		old, err := d.leases.Get(ctx, LeaseName(key), metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue // removed in between
		}
		if err != nil {
			return nil, time.Time{}, d.apiError("register "+key, err)
		}
		dec, derr := decodeLease(old)
		if derr == nil && !expired(dec, time.Now()) {
			return nil, time.Time{}, fmt.Errorf("%w: %s has a live record in Lease %s/%s (held by %q); "+
				"unregister it first, use another instance id, or wait up to %v if its owner died",
				discovery.ErrDuplicate, key, d.namespace, old.Name, ptr.Deref(old.Spec.HolderIdentity, ""), dec.ttl)
		}
		// A dead owner's Lease (or a damaged one): replace it, unless it
		// changed meanwhile.
		err = d.leases.Delete(ctx, old.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{
			UID: &old.UID, ResourceVersion: &old.ResourceVersion,
		}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return nil, time.Time{}, d.apiError("register "+key+" over an expired Lease", err)
		}
	}
	return nil, time.Time{}, fmt.Errorf("kube: register %s in namespace %q: the Lease kept changing under three attempts; try again", key, d.namespace)
}

// maxAnnotations is the most the API server takes in one object's
// annotations, counting each key and value (TotalAnnotationSizeLimitB of
// k8s.io/apimachinery/pkg/api/validation).
const maxAnnotations = 256 << 10

// annotationsSize is the size the API server counts for the annotations
// of the Lease that holds value under key.
func annotationsSize(key string, value []byte) int {
	return len(AnnotationKey) + len(key) + len(AnnotationRecord) + len(value)
}

// Unregister removes the record under inst's key, whoever registered it.
func (d *Discovery) Unregister(ctx context.Context, inst discovery.Instance) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := inst.Validate(); err != nil {
		return err
	}
	if d.isClosed() {
		return discovery.ErrClosed
	}
	name := LeaseName(inst.Key())
	// Stop renewing first: if the removal fails, the record still
	// expires.
	d.mu.Lock()
	r := d.owned[name]
	delete(d.owned, name)
	d.mu.Unlock()
	err := d.leases.Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		if r != nil {
			// Ours: the renewal loop deletes it once the API server
			// answers, rather than leave it to expire.
			d.mu.Lock()
			if !d.closed {
				d.unremoved[name] = r
			}
			d.mu.Unlock()
			select {
			case d.retry <- struct{}{}:
			default:
			}
		}
		return d.apiError("unregister "+inst.Key(), err)
	}
	return nil
}

// unremovedRecord returns the record under the Lease name whose
// Unregister failed, or nil.
func (d *Discovery) unremovedRecord(name string) *record {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.unremoved[name]
}

// removeUnremoved deletes the Lease of r, whose Unregister failed, and
// forgets r once it is gone.
func (d *Discovery) removeUnremoved(ctx context.Context, r *record) error {
	if err := d.removeCtx(ctx, r); err != nil {
		return err
	}
	d.mu.Lock()
	if d.unremoved[r.name] == r {
		delete(d.unremoved, r.name)
	}
	d.mu.Unlock()
	return nil
}

// List returns the live records q selects, ordered by key. The API server
// filters by label; a record whose TTL has run out by the local clock (its
// owner died and nothing has deleted it yet) is left out.
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
	items, _, err := d.list(ctx, q)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	var out []discovery.Instance
	for i := range items {
		dec, ok := d.decode(&items[i])
		if ok && q.Matches(dec.inst) && !expired(dec, now) {
			out = append(out, dec.inst)
		}
	}
	slices.SortFunc(out, func(a, b discovery.Instance) int { return cmp.Compare(a.Key(), b.Key()) })
	return out, nil
}

// listPage is how many Leases one List request reads.
const listPage = 500

// list reads every Lease q's selector matches, page by page, and returns
// them with the resource version of the snapshot.
func (d *Discovery) list(ctx context.Context, q discovery.Query) ([]coordinationv1.Lease, string, error) {
	opts := metav1.ListOptions{LabelSelector: selector(q), Limit: listPage}
	var items []coordinationv1.Lease
	for {
		l, err := d.leases.List(ctx, opts)
		if err != nil {
			return nil, "", d.apiError("list Leases "+opts.LabelSelector, err)
		}
		items = append(items, l.Items...)
		if l.Continue == "" {
			return items, l.ResourceVersion, nil
		}
		opts.Continue = l.Continue
	}
}

// decode returns the record a Lease holds, if it is well formed; it logs a
// malformed one.
func (d *Discovery) decode(l *coordinationv1.Lease) (decoded, bool) {
	dec, err := decodeLease(l)
	if err != nil {
		d.log.Warn("kube: skipping a malformed Lease", "lease", l.Name, "err", err)
		return decoded{}, false
	}
	return dec, true
}

// Close removes the records registered through d (those another client
// has not replaced meanwhile), stops their renewal, closes d's watch
// channels and waits for every goroutine d started. It spends at most a
// couple of seconds removing records; those it could not remove expire
// within the TTL, and the error says so. Later calls return nil.
func (d *Discovery) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	recs := slices.Collect(maps.Values(d.owned))
	recs = slices.AppendSeq(recs, maps.Values(d.unremoved))
	d.owned, d.unremoved = nil, nil
	d.mu.Unlock()

	// No renewal may run once the removals start.
	_ = d.tasks.Stop(context.Background())

	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	// Every record is tried; past the deadline each fails at once and
	// counts.
	if n, err := owned.RemoveAll(ctx, recs, d.removeCtx); err != nil {
		return fmt.Errorf("kube: close: %d of %d records not removed from namespace %q; they expire within %v: %w",
			n, len(recs), d.namespace, d.ttl, err)
	}
	return nil
}

// removeCtx deletes r's Lease if it is still the object d created: a
// record another client has registered since is not d's to remove.
func (d *Discovery) removeCtx(ctx context.Context, r *record) error {
	d.mu.Lock()
	uid := r.lease.UID
	d.mu.Unlock()
	err := d.leases.Delete(ctx, r.name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
	if err == nil || apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil
	}
	return fmt.Errorf("remove %s (Lease %s): %w", r.key, r.name, err)
}

// remove removes a record that a Register racing with Close wrote.
func (d *Discovery) remove(r *record) {
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	if err := d.removeCtx(ctx, r); err != nil {
		d.log.Warn("kube: could not remove a record registered during Close; it expires with its TTL",
			"key", r.key, "ttl", d.ttl, "err", err)
	}
}

func (d *Discovery) isClosed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closed
}

// renewLoop renews the owned records every TTL/3, and a second after a
// round in which a renewal or deletion failed or an Unregister failed.
func (d *Discovery) renewLoop(ctx context.Context) error {
	due := time.Now().Add(d.ttl / 3)
	t := time.NewTimer(time.Until(due))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-d.retry:
			if soon := time.Now().Add(retryWait); soon.Before(due) {
				due = soon
				t.Reset(retryWait)
			}
			continue
		case <-t.C:
		}
		next := d.ttl / 3
		if !d.renew(ctx) {
			next = min(next, retryWait)
		}
		due = time.Now().Add(next)
		t.Reset(next)
	}
}

// renew renews each owned record, and deletes those whose Unregister
// failed, within one renewal period, and reports whether every renewal
// and deletion succeeded.
func (d *Discovery) renew(ctx context.Context) bool {
	d.mu.Lock()
	recs := slices.Collect(maps.Values(d.owned))
	// Oldest renewal first, so that a round cut short by its deadline
	// leaves the freshest records for the next.
	slices.SortFunc(recs, func(a, b *record) int { return a.renewed.Compare(b.renewed) })
	gone := slices.Collect(maps.Values(d.unremoved))
	d.mu.Unlock()
	if len(recs) == 0 && len(gone) == 0 {
		return true
	}
	ctx, cancel := context.WithTimeout(ctx, d.ttl/3)
	defer cancel()
	var mu sync.Mutex
	ok := true
	// The records to delete go beside the renewals, so that an API server
	// that does not answer holds up neither.
	owned.ForEach(ctx, append(gone, recs...), func(r *record) {
		var done bool
		if d.unremovedRecord(r.name) == r {
			done = d.removeUnremoved(ctx, r) == nil
		} else {
			done = d.renewRecord(ctx, r) // true if no longer owned
		}
		if !done {
			mu.Lock()
			ok = false
			mu.Unlock()
		}
	})
	return ok && ctx.Err() == nil
}

// renewRecord writes a new renewTime into r's Lease, if the Lease is still
// the one d last wrote; if not, it finds out what happened. It reports
// false for a failure worth retrying soon.
func (d *Discovery) renewRecord(ctx context.Context, r *record) bool {
	d.mu.Lock()
	if d.owned[r.name] != r {
		d.mu.Unlock()
		return true // unregistered meanwhile
	}
	l := r.lease.DeepCopy()
	lastOK := r.renewed
	d.mu.Unlock()
	now := time.Now()
	l.Spec.RenewTime = ptr.To(metav1.NewMicroTime(now))
	nl, err := d.leases.Update(ctx, l, metav1.UpdateOptions{})
	switch {
	case err == nil:
		d.setLease(r, nl, now)
		return true
	case apierrors.IsConflict(err):
		return d.reclaim(ctx, r, lastOK)
	case apierrors.IsNotFound(err):
		return d.recreate(ctx, r, lastOK)
	default:
		d.log.Warn("kube: renewing a record failed; trying again", "key", r.key, "lease", r.name, "ttl", d.ttl, "err", err)
		return false
	}
}

// reclaim handles a Lease that changed since d wrote it: d's own renewal
// applied but not acknowledged is taken up again; another writer's Lease
// (the key was unregistered and registered again) is respected.
func (d *Discovery) reclaim(ctx context.Context, r *record, lastOK time.Time) bool {
	cur, err := d.leases.Get(ctx, r.name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return d.recreate(ctx, r, lastOK)
	case err != nil:
		d.log.Warn("kube: renewing a record failed; trying again", "key", r.key, "lease", r.name, "err", err)
		return false
	}
	d.mu.Lock()
	mine := d.owned[r.name] == r && cur.UID == r.lease.UID && ptr.Deref(cur.Spec.HolderIdentity, "") == d.holder &&
		cur.Annotations[AnnotationRecord] == r.lease.Annotations[AnnotationRecord]
	d.mu.Unlock()
	if mine {
		d.setLease(r, cur, lastOK) // the next round renews it
		return false
	}
	d.disown(r)
	d.log.Warn("kube: a record this client registered was replaced by another client's; no longer renewing it", "key", r.key, "lease", r.name)
	return true
}

// recreate handles a Lease that is gone. If d's last renewal is older than
// the TTL, the record had expired (this process could not reach the API
// server for that long) and a reaper deleted it: d registers it again. So
// it does if the API server's store no longer has d's last write (it was
// lost, or restored from an older copy). Otherwise another client
// unregistered it, and d respects that.
func (d *Discovery) recreate(ctx context.Context, r *record, lastOK time.Time) bool {
	why := "a record expired while its owner was alive (API server unreachable for longer than the TTL?); registered it again"
	if time.Since(lastOK) < d.ttl {
		lost, err := d.storeLost(ctx, r)
		if err != nil {
			d.log.Warn("kube: renewing a record failed; trying again", "key", r.key, "lease", r.name, "err", err)
			return false
		}
		if !lost {
			d.disown(r)
			d.log.Info("kube: a record this client registered was unregistered by another; no longer renewing it", "key", r.key, "lease", r.name)
			return true
		}
		why = "the API server lost a record (its store was lost or restored from an older copy); registered it again"
	}
	d.mu.Lock()
	var inst discovery.Instance
	err := json.Unmarshal([]byte(r.lease.Annotations[AnnotationRecord]), &inst)
	value := []byte(r.lease.Annotations[AnnotationRecord])
	d.mu.Unlock()
	if err != nil {
		d.disown(r) // cannot happen: d wrote it
		return true
	}
	l, now, err := d.create(ctx, inst, value)
	switch {
	case errors.Is(err, discovery.ErrDuplicate):
		d.disown(r)
		d.log.Warn("kube: a record this client registered expired and another client registered the key; no longer renewing it", "key", r.key)
		return true
	case err != nil:
		d.log.Warn("kube: registering an expired record again failed; trying again", "key", r.key, "err", err)
		return false
	}
	d.mu.Lock()
	if d.owned[r.name] == r {
		r.lease, r.renewed = l, now
		d.mu.Unlock()
		d.log.Warn("kube: "+why, "key", r.key, "ttl", d.ttl)
		return true
	}
	d.mu.Unlock()
	// Unregistered or closed meanwhile.
	d.remove(&record{name: r.name, key: r.key, lease: l})
	return true
}

// storeLost reports whether the API server's store is behind the version
// of r's Lease that d last wrote: it lost that write (it was lost, or
// restored from an older copy), and the Lease with it. A store that lost
// the Lease but has since passed that version cannot be told from a
// deletion.
func (d *Discovery) storeLost(ctx context.Context, r *record) (bool, error) {
	d.mu.Lock()
	written := r.lease.ResourceVersion
	d.mu.Unlock()
	return d.storeBehind(ctx, written)
}

// storeBehind reports whether the resource version of the API server's
// store is below version, which this process saw before: resource versions
// only grow, so the store has gone back in time.
func (d *Discovery) storeBehind(ctx context.Context, version string) (bool, error) {
	if version == "" {
		return false, nil
	}
	ctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	// A list from no version is a consistent read: its version is the
	// store's current one.
	l, err := d.leases.List(ctx, metav1.ListOptions{LabelSelector: selector(discovery.Query{}), Limit: 1})
	if err != nil {
		return false, d.apiError("list Leases", err)
	}
	c, err := resourceversion.CompareResourceVersion(l.ResourceVersion, version)
	return err == nil && c < 0, nil
}

func (d *Discovery) setLease(r *record, l *coordinationv1.Lease, renewed time.Time) {
	d.mu.Lock()
	if d.owned[r.name] == r {
		r.lease, r.renewed = l, renewed
	}
	d.mu.Unlock()
}

func (d *Discovery) disown(r *record) {
	d.mu.Lock()
	if d.owned[r.name] == r {
		delete(d.owned, r.name)
	}
	d.mu.Unlock()
}
