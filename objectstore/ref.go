package objectstore

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
)

// RefHeader is the message header that carries a [Ref] when the payload
// itself was offloaded; the message's body is then empty.
const RefHeader = "Loom-Payload-Ref"

// refVersion is the version of the reference encoding.
const refVersion = "1"

// maxRefLen bounds a reference header: bucket and object names are short.
const maxRefLen = 2048

// maxNameLen bounds an object name in a reference.
const maxNameLen = 1024

// bucketRE matches a bucket name: its stream, "OBJ_" and the name, may
// take at most 255 bytes.
var bucketRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,251}$`)

// ErrBadRef is wrapped by the errors of ParseRef.
var ErrBadRef = errors.New("objectstore: bad payload reference")

// Ref points at an offloaded payload: the object Name in Bucket, of Size
// bytes, whose SHA-256 digest is Digest ("SHA-256=" and URL-safe base64,
// as the object store writes it).
type Ref struct {
	Bucket string
	Name   string
	Size   int64
	Digest string
}

// String encodes r as the value of RefHeader: a URL query such as
// "v=1&bucket=loom_payloads&name=q%2Fx&size=9&digest=SHA-256%3D...".
func (r Ref) String() string {
	v := url.Values{}
	v.Set("v", refVersion)
	v.Set("bucket", r.Bucket)
	v.Set("name", r.Name)
	v.Set("size", strconv.FormatInt(r.Size, 10))
	if r.Digest != "" {
		v.Set("digest", r.Digest)
	}
	return v.Encode()
}

// ParseRef decodes a RefHeader value. It accepts only what String writes:
// version 1, a valid bucket name, a non-empty object name of at most 1024
// bytes, a size from 0 to 2^63-1 and, if present, a SHA-256 digest. Errors
// wrap ErrBadRef.
func ParseRef(s string) (Ref, error) {
	if len(s) > maxRefLen {
		return Ref{}, fmt.Errorf("%w: %d bytes, more than %d", ErrBadRef, len(s), maxRefLen)
	}
	v, err := url.ParseQuery(s)
	if err != nil {
		return Ref{}, fmt.Errorf("%w: %v", ErrBadRef, err)
	}
	one := func(key string, required bool) (string, error) {
		vals := v[key]
		switch {
		case len(vals) > 1:
			return "", fmt.Errorf("%w: %s given %d times", ErrBadRef, key, len(vals))
		case len(vals) == 0 && required:
			return "", fmt.Errorf("%w: no %s", ErrBadRef, key)
		case len(vals) == 0:
			return "", nil
		}
		return vals[0], nil
	}
	ver, err := one("v", true)
	if err != nil {
		return Ref{}, err
	}
	if ver != refVersion {
		return Ref{}, fmt.Errorf("%w: version %q; this Loom reads version %s (upgrade the consumer)", ErrBadRef, ver, refVersion)
	}
	var r Ref
	if r.Bucket, err = one("bucket", true); err != nil {
		return Ref{}, err
	}
	if !bucketRE.MatchString(r.Bucket) {
		return Ref{}, fmt.Errorf("%w: bucket %q is not a valid bucket name", ErrBadRef, r.Bucket)
	}
	if r.Name, err = one("name", true); err != nil {
		return Ref{}, err
	}
	if r.Name == "" || len(r.Name) > maxNameLen {
		return Ref{}, fmt.Errorf("%w: object name of %d bytes; want 1 to %d", ErrBadRef, len(r.Name), maxNameLen)
	}
	size, err := one("size", true)
	if err != nil {
		return Ref{}, err
	}
	if r.Size, err = strconv.ParseInt(size, 10, 64); err != nil || r.Size < 0 {
		return Ref{}, fmt.Errorf("%w: size %q is not a byte count", ErrBadRef, size)
	}
	if r.Digest, err = one("digest", false); err != nil {
		return Ref{}, err
	}
	if r.Digest != "" {
		b64, ok := strings.CutPrefix(r.Digest, digestPrefix)
		if !ok {
			return Ref{}, fmt.Errorf("%w: digest %q does not start with %q", ErrBadRef, r.Digest, digestPrefix)
		}
		sum, err := base64.URLEncoding.DecodeString(b64)
		if err != nil || len(sum) != 32 {
			return Ref{}, fmt.Errorf("%w: digest %q is not a SHA-256 sum", ErrBadRef, r.Digest)
		}
	}
	for k := range v {
		switch k {
		case "v", "bucket", "name", "size", "digest":
		default:
			return Ref{}, fmt.Errorf("%w: unknown field %q", ErrBadRef, k)
		}
	}
	return r, nil
}

// digestPrefix starts the object store's digest strings.
const digestPrefix = "SHA-256="
