package kube

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/loomrt/loom/discovery"
)

// Labels and annotations of the Lease objects that hold Loom's records.
const (
	// LabelManagedBy marks every Lease Loom manages; its value is
	// ManagedBy. Watches and lists select on it, so Leases of other
	// programs in the namespace (leader elections, node heartbeats) are
	// never read.
	LabelManagedBy = "app.kubernetes.io/managed-by"
	// ManagedBy is the value of LabelManagedBy.
	ManagedBy = "loom"
	// LabelNamespace, LabelComponent and LabelEndpoint hold the record's
	// names, so that a query becomes a label selector the API server
	// applies. A name that is not a valid label value (longer than 63
	// characters, or starting or ending with '-' or '_') is written as
	// "h-" and the first 40 hex digits of its SHA-256 instead.
	LabelNamespace = "loomrt.github.io/namespace"
	LabelComponent = "loomrt.github.io/component"
	LabelEndpoint  = "loomrt.github.io/endpoint"
	// LabelInstance holds the instance id in hex.
	LabelInstance = "loomrt.github.io/instance"
	// AnnotationRecord holds the record: the JSON of discovery.Instance,
	// the value the etcd backend stores.
	AnnotationRecord = "loomrt.github.io/record"
	// AnnotationKey holds the record's discovery key,
	// v1/instances/{ns}/{component}/{endpoint}/{id:x}.
	AnnotationKey = "loomrt.github.io/key"
)

// namePrefix starts the name of every Lease Loom writes.
const namePrefix = "loom-"

// LeaseName returns the name of the Lease that holds the record under key:
// "loom-" and the first 40 hex digits of the key's SHA-256. Record names
// may hold '_' and '.', which Kubernetes names may not, and may be longer
// than a label; a hash maps every key to a valid name of fixed length.
func LeaseName(key string) string {
	sum := sha256.Sum256([]byte(key))
	return namePrefix + hex.EncodeToString(sum[:20])
}

// labelValueRE is the rule of a Kubernetes label value (at most 63
// characters, checked apart).
var labelValueRE = regexp.MustCompile(`^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$`)

// labelValue returns the label value that stands for a record name.
func labelValue(name string) string {
	if len(name) <= 63 && labelValueRE.MatchString(name) {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return "h-" + hex.EncodeToString(sum[:20])
}

// recordLabels returns the labels of inst's Lease.
func recordLabels(inst discovery.Instance) map[string]string {
	return map[string]string{
		LabelManagedBy: ManagedBy,
		LabelNamespace: labelValue(inst.Namespace),
		LabelComponent: labelValue(inst.Component),
		LabelEndpoint:  labelValue(inst.Endpoint),
		LabelInstance:  strconv.FormatUint(inst.ID, 16),
	}
}

// selector returns the label selector of the Leases q may select. It only
// narrows what the API server sends: records are matched exactly with
// q.Matches after decoding, so two names that share a label value never
// mix.
func selector(q discovery.Query) string {
	set := labels.Set{LabelManagedBy: ManagedBy}
	if q.Namespace != "" {
		set[LabelNamespace] = labelValue(q.Namespace)
	}
	if q.Component != "" {
		set[LabelComponent] = labelValue(q.Component)
	}
	if q.Endpoint != "" {
		set[LabelEndpoint] = labelValue(q.Endpoint)
	}
	return labels.SelectorFromSet(set).String()
}

// errMalformed marks a Lease that carries Loom's label but not a record
// Loom can read.
var errMalformed = errors.New("not a Loom record")

// decoded is what a Lease says about its record.
type decoded struct {
	inst discovery.Instance
	// renew is when the owner last renewed the Lease, by its clock.
	renew time.Time
	// ttl is the Lease's duration: the record is gone ttl after renew.
	ttl time.Duration
}

// decodeLease reads the record a Lease holds. It checks everything a
// reader relies on: the key parses, the record's names and id are the
// key's, the Lease's name is the key's, and the Lease has a duration, so
// that a hand-written or damaged Lease is skipped instead of misread.
func decodeLease(l *coordinationv1.Lease) (decoded, error) {
	key := l.Annotations[AnnotationKey]
	if _, _, _, _, err := discovery.ParseKey(key); err != nil {
		return decoded{}, fmt.Errorf("%w: annotation %s: %v", errMalformed, AnnotationKey, err)
	}
	if want := LeaseName(key); l.Name != want {
		return decoded{}, fmt.Errorf("%w: a Lease named %q holds key %s, whose Lease is %q", errMalformed, l.Name, key, want)
	}
	raw, ok := l.Annotations[AnnotationRecord]
	if !ok {
		return decoded{}, fmt.Errorf("%w: no annotation %s", errMalformed, AnnotationRecord)
	}
	var inst discovery.Instance
	if err := json.Unmarshal([]byte(raw), &inst); err != nil {
		return decoded{}, fmt.Errorf("%w: annotation %s is not an instance record in JSON: %v", errMalformed, AnnotationRecord, err)
	}
	if err := inst.Validate(); err != nil {
		return decoded{}, fmt.Errorf("%w: annotation %s: %v", errMalformed, AnnotationRecord, err)
	}
	if inst.Key() != key {
		return decoded{}, fmt.Errorf("%w: the record in annotation %s is %s, not the key %s", errMalformed, AnnotationRecord, inst.Key(), key)
	}
	if l.Spec.LeaseDurationSeconds == nil || *l.Spec.LeaseDurationSeconds <= 0 {
		return decoded{}, fmt.Errorf("%w: spec.leaseDurationSeconds is missing or not positive", errMalformed)
	}
	d := decoded{inst: inst, ttl: time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second}
	switch {
	case l.Spec.RenewTime != nil:
		d.renew = l.Spec.RenewTime.Time
	case l.Spec.AcquireTime != nil:
		d.renew = l.Spec.AcquireTime.Time
	default:
		d.renew = l.CreationTimestamp.Time
	}
	return d, nil
}

// errNotObject reports a watch event without object metadata.
var errNotObject = errors.New("kube: watch event without object metadata")
