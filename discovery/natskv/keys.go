package natskv

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/loomrt/loom/discovery"
)

// keyPrefix is the KV form of discovery.KeyPrefix.
const keyPrefix = "v1.instances."

// nsDot stands for "." inside a namespace token. Names never contain it
// (they match ^[a-z0-9_-]+$) and KV keys allow it, so the encoding is
// bijective and a nested namespace stays one subject token.
const nsDot = "="

// kvKey returns the KV key of inst's record:
// v1.instances.{ns with "." as "="}.{component}.{endpoint}.{id:x}.
func kvKey(inst discovery.Instance) string {
	return keyPrefix + strings.ReplaceAll(inst.Namespace, ".", nsDot) + "." +
		inst.Component + "." + inst.Endpoint + "." + strconv.FormatUint(inst.ID, 16)
}

// filter returns the subject filter that selects exactly the keys of the
// records q matches. q must be valid.
func filter(q discovery.Query) string {
	switch {
	case q.Namespace == "":
		return keyPrefix + ">"
	case q.Component == "":
		return keyPrefix + strings.ReplaceAll(q.Namespace, ".", nsDot) + ".>"
	case q.Endpoint == "":
		return keyPrefix + strings.ReplaceAll(q.Namespace, ".", nsDot) + "." + q.Component + ".>"
	}
	return keyPrefix + strings.ReplaceAll(q.Namespace, ".", nsDot) + "." + q.Component + "." + q.Endpoint + ".*"
}

// parseKey is the inverse of kvKey. It accepts only what kvKey writes, so
// that a key it accepts always names one record and round-trips.
func parseKey(key string) (discovery.Instance, error) {
	rest, ok := strings.CutPrefix(key, keyPrefix)
	if !ok {
		return discovery.Instance{}, fmt.Errorf("natskv: key %q does not start with %q", key, keyPrefix)
	}
	parts := strings.Split(rest, ".")
	if len(parts) != 4 {
		return discovery.Instance{}, fmt.Errorf("natskv: key %q is not %s{ns}.{component}.{endpoint}.{id:x}", key, keyPrefix)
	}
	for _, p := range parts {
		// "/" would let the discovery key split differently.
		if strings.Contains(p, "/") {
			return discovery.Instance{}, fmt.Errorf("natskv: key %q has a %q", key, "/")
		}
	}
	dkey := discovery.KeyPrefix + strings.ReplaceAll(parts[0], nsDot, ".") + "/" + parts[1] + "/" + parts[2] + "/" + parts[3]
	ns, c, e, id, err := discovery.ParseKey(dkey)
	if err != nil {
		return discovery.Instance{}, fmt.Errorf("natskv: key %q: %w", key, err)
	}
	return discovery.Instance{Namespace: ns, Component: c, Endpoint: e, ID: id}, nil
}

// decode turns a record into an instance, checking that the value is the
// JSON of an instance whose names and id are those of its key.
func decode(key string, value []byte) (discovery.Instance, error) {
	want, err := parseKey(key)
	if err != nil {
		return discovery.Instance{}, err
	}
	inst, err := discovery.DecodeValue(value)
	if err != nil {
		return discovery.Instance{}, fmt.Errorf("natskv: record %s: %w", key, err)
	}
	if inst.Namespace != want.Namespace || inst.Component != want.Component ||
		inst.Endpoint != want.Endpoint || inst.ID != want.ID {
		return discovery.Instance{}, fmt.Errorf("natskv: record %s holds instance %s; want the instance its key names", key, inst.Key())
	}
	return inst, nil
}

// sortByKey orders instances by discovery key, as List promises.
func sortByKey(insts []discovery.Instance) {
	slices.SortFunc(insts, func(a, b discovery.Instance) int { return cmp.Compare(a.Key(), b.Key()) })
}
