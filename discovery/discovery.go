// Package discovery is how Loom components find each other.
//
// A serving endpoint registers an [Instance] record; a client watches the
// records of the endpoint it calls and keeps a live set of instances. Every
// backend (discovery/memory, discovery/etcd, discovery/natskv,
// discovery/kube) implements [Discovery] and passes the shared conformance
// suite in discovery/discoverytest, so a program can switch backends by
// configuration alone. Backends register themselves ([RegisterBackend]) when their package
// is imported; discovery/all imports every one.
//
// Records use Dynamo's key layout so tools can read both:
//
//	v1/instances/{namespace}/{component}/{endpoint}/{instance_id in hex}
//
// with the JSON encoding of [Instance] as the value.
package discovery

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"strconv"
	"strings"
)

// Discovery registers, lists and watches instances.
//
// Records registered through one Discovery value live as long as it does: a
// backend removes them when the value is closed or its owner dies (the
// process for memory, the lease for etcd, the key TTL for NATS KV).
type Discovery interface {
	// Register publishes inst. It fails with ErrDuplicate if a record with
	// the same key already exists.
	Register(ctx context.Context, inst Instance) error
	// Unregister removes inst. Removing a record that is not there is not
	// an error.
	Unregister(ctx context.Context, inst Instance) error
	// List returns the records that match q, ordered by key.
	List(ctx context.Context, q Query) ([]Instance, error)
	// Watch streams the records that match q: first an Added event for
	// each existing record, then one Synced event, then Added and Removed
	// as records come and go. After a reconnect the backend emits the
	// difference between what the watcher was told and what is there now.
	// The channel is closed when ctx ends or the Discovery is closed.
	Watch(ctx context.Context, q Query) (<-chan Event, error)
	// Close removes the records registered through this value and
	// releases its resources. Watch channels opened on it are closed.
	Close() error
}

// ErrDuplicate reports a Register of a key that is already registered.
var ErrDuplicate = errors.New("discovery: instance already registered")

// ErrClosed reports a call on a closed Discovery.
var ErrClosed = errors.New("discovery: closed")

// KeyPrefix is the prefix of every instance record key.
const KeyPrefix = "v1/instances/"

// Instance is one serving copy of an endpoint.
type Instance struct {
	Namespace string `json:"namespace"`
	Component string `json:"component"`
	Endpoint  string `json:"endpoint"`
	// ID identifies the serving process: the lease id on etcd, random
	// otherwise (RandomID), at most MaxID so that JSON clients keep it exact.
	// It is the runtime's id (loom.Runtime.ID). A type that is an instance
	// calls it ID; one that refers to an instance calls it InstanceID
	// (events.Event, loom.Call, loom.HandlerError); JSON says instance_id.
	ID uint64 `json:"instance_id"`
	// Transport names the request plane that reaches the instance
	// ("tcp", "nats", or "local" for an instance only reachable in its
	// own process).
	Transport string `json:"transport"`
	// Address is where that transport reaches the instance: host:port
	// for tcp, a subject for nats.
	Address string `json:"address"`
	// TLS reports that the instance's transport requires TLS.
	TLS bool `json:"tls,omitempty"`
	// Codec is the encoding the instance expects ("msgpack" or "json").
	Codec string `json:"codec"`
	// Metadata is free-form, for routing hints and operators.
	Metadata map[string]string `json:"metadata,omitempty"`
}

// MaxID is the largest instance id: 2^53-1, the largest integer a JSON
// number keeps exact in clients that read numbers as float64 (JavaScript,
// Python's json with floats, jq). Random ids (instance ids off etcd, etcd
// lease ids Loom asks for, event publisher ids) are drawn at or below it.
const MaxID = 1<<53 - 1

// RandomID returns a random id between 1 and MaxID.
func RandomID() uint64 { return 1 + rand.Uint64N(MaxID) }

// Path returns "namespace/component/endpoint".
func (i Instance) Path() string {
	return i.Namespace + "/" + i.Component + "/" + i.Endpoint
}

// Key returns the record's key: v1/instances/{ns}/{component}/{endpoint}/{id:x}.
func (i Instance) Key() string {
	return KeyPrefix + i.Path() + "/" + strconv.FormatUint(i.ID, 16)
}

// Validate checks the names and the id of the record.
func (i Instance) Validate() error {
	if err := ValidateNamespace(i.Namespace); err != nil {
		return err
	}
	if err := ValidateName("component", i.Component); err != nil {
		return err
	}
	if err := ValidateName("endpoint", i.Endpoint); err != nil {
		return err
	}
	if i.ID == 0 {
		return fmt.Errorf("discovery: instance %s has id 0; ids start at 1", i.Path())
	}
	return nil
}

// ParseKey splits an instance record key into its parts. It is the inverse
// of Instance.Key and rejects anything else, so that foreign keys under the
// prefix are skipped rather than misread.
func ParseKey(key string) (ns, component, endpoint string, id uint64, err error) {
	rest, ok := strings.CutPrefix(key, KeyPrefix)
	if !ok {
		return "", "", "", 0, fmt.Errorf("discovery: key %q does not start with %q", key, KeyPrefix)
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 4 {
		return "", "", "", 0, fmt.Errorf("discovery: key %q is not %s{ns}/{component}/{endpoint}/{id}", key, KeyPrefix)
	}
	id, err = strconv.ParseUint(parts[3], 16, 64)
	// Only the canonical form Key writes (lowercase, no leading zeros) is
	// accepted, so that a parsed key always round-trips.
	if err != nil || id == 0 || strconv.FormatUint(id, 16) != parts[3] {
		return "", "", "", 0, fmt.Errorf("discovery: key %q has instance id %q; want a non-zero lowercase hex number without leading zeros", key, parts[3])
	}
	inst := Instance{Namespace: parts[0], Component: parts[1], Endpoint: parts[2], ID: id}
	if err := inst.Validate(); err != nil {
		return "", "", "", 0, fmt.Errorf("discovery: key %q: %w", key, err)
	}
	return parts[0], parts[1], parts[2], id, nil
}

// Query selects records by prefix: an empty field matches everything below
// the fields before it. A field may only be set if the ones before it are.
type Query struct {
	Namespace string
	Component string
	Endpoint  string
}

// Prefix returns the key prefix the query covers. It ends with "/" so that
// namespace "a" never matches namespace "ab".
func (q Query) Prefix() string {
	p := KeyPrefix
	for _, s := range []string{q.Namespace, q.Component, q.Endpoint} {
		if s == "" {
			break
		}
		p += s + "/"
	}
	return p
}

// Validate checks that the query's fields are valid names, set in order.
func (q Query) Validate() error {
	if q.Namespace == "" && (q.Component != "" || q.Endpoint != "") {
		return fmt.Errorf("discovery: query %+v sets a component or endpoint without a namespace", q)
	}
	if q.Component == "" && q.Endpoint != "" {
		return fmt.Errorf("discovery: query %+v sets an endpoint without a component", q)
	}
	if q.Namespace != "" {
		if err := ValidateNamespace(q.Namespace); err != nil {
			return err
		}
	}
	if q.Component != "" {
		if err := ValidateName("component", q.Component); err != nil {
			return err
		}
	}
	if q.Endpoint != "" {
		if err := ValidateName("endpoint", q.Endpoint); err != nil {
			return err
		}
	}
	return nil
}

// Matches reports whether inst falls under the query.
func (q Query) Matches(inst Instance) bool {
	return (q.Namespace == "" || q.Namespace == inst.Namespace) &&
		(q.Component == "" || q.Component == inst.Component) &&
		(q.Endpoint == "" || q.Endpoint == inst.Endpoint)
}

// EventKind says what happened to a record.
type EventKind uint8

// The kinds of Event.
const (
	Added   EventKind = iota + 1 // a record appeared
	Removed                      // a record disappeared
	Synced                       // the initial snapshot is complete
)

func (k EventKind) String() string {
	switch k {
	case Added:
		return "added"
	case Removed:
		return "removed"
	case Synced:
		return "synced"
	}
	return "EventKind(" + strconv.Itoa(int(k)) + ")"
}

// Event is one change seen by a watcher. Instance is zero for Synced.
type Event struct {
	Kind     EventKind
	Instance Instance
}

// NameRule is the rule every component and endpoint name follows.
const NameRule = "^[a-z0-9_-]+$"

// NamespaceRule is the rule namespaces follow: names joined by dots.
const NamespaceRule = `^[a-z0-9_-]+(\.[a-z0-9_-]+)*$`

var (
	nameRE      = regexp.MustCompile(NameRule)
	namespaceRE = regexp.MustCompile(NamespaceRule)
)

// NameError reports a name that breaks the naming rule.
type NameError struct {
	Kind string // "namespace", "component", "endpoint"
	Name string
	Rule string
}

func (e *NameError) Error() string {
	if e.Name == "" {
		return fmt.Sprintf("invalid %s name: empty; a %s name must match %s", e.Kind, e.Kind, e.Rule)
	}
	return fmt.Sprintf("invalid %s name %q: must match %s", e.Kind, e.Name, e.Rule)
}

// ValidateName checks a component or endpoint name (kind says which).
func ValidateName(kind, name string) error {
	if len(name) > 0 && len(name) <= 128 && nameRE.MatchString(name) {
		return nil
	}
	return &NameError{Kind: kind, Name: name, Rule: NameRule + " (at most 128 characters)"}
}

// ValidateNamespace checks a namespace name; namespaces may nest with ".".
func ValidateNamespace(name string) error {
	if len(name) > 0 && len(name) <= 128 && namespaceRE.MatchString(name) {
		return nil
	}
	return &NameError{Kind: "namespace", Name: name, Rule: NamespaceRule + " (at most 128 characters)"}
}

// DynamoTransportPrefix starts the Transport of an instance read from a
// Dynamo record: "dynamo/tcp", "dynamo/nats_tcp" or "dynamo/http". Loom
// cannot speak Dynamo's request planes, so such instances are listed and
// watched, never called: a Client leaves every instance whose transport
// its runtime does not speak out of its routing set.
const DynamoTransportPrefix = "dynamo/"

// DecodeValue decodes a record's value: Loom's JSON of an Instance, or
// Dynamo's Endpoint record (told apart by its "type" key), which becomes
// an Instance whose Transport starts with DynamoTransportPrefix and whose
// Metadata["origin"] is "dynamo". Dynamo's other record types are an
// error saying so.
func DecodeValue(value []byte) (Instance, error) {
	// One pass for both shapes: Loom's fields, Dynamo's tag, and the
	// transport kept raw (a string in Loom's, an object in Dynamo's).
	var r struct {
		Instance
		Type      *string         `json:"type"`
		Transport json.RawMessage `json:"transport"`
	}
	if err := json.Unmarshal(value, &r); err != nil {
		return Instance{}, fmt.Errorf("value is not an instance record in JSON: %w", err)
	}
	inst := r.Instance
	if r.Type == nil {
		if len(r.Transport) > 0 {
			if err := json.Unmarshal(r.Transport, &inst.Transport); err != nil {
				return Instance{}, fmt.Errorf("value's transport is not a string: %w", err)
			}
		}
		return inst, nil
	}
	if *r.Type != "Endpoint" {
		return Instance{}, fmt.Errorf("a Dynamo %q record; Loom reads Dynamo's Endpoint records only", *r.Type)
	}
	var transport map[string]string
	if err := json.Unmarshal(r.Transport, &transport); err != nil || len(transport) != 1 || !bytes.Contains(value, []byte(`"instance_id"`)) {
		return Instance{}, fmt.Errorf("a Dynamo Endpoint record without instance_id or without one transport of the form {\"tcp\": \"host:port\"}")
	}
	inst.Metadata = map[string]string{"origin": "dynamo"}
	inst.TLS, inst.Codec, inst.Address = false, "", ""
	for kind, addr := range transport {
		inst.Transport, inst.Address = DynamoTransportPrefix+kind, addr
	}
	return inst, nil
}
