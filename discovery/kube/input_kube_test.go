//go:build kube

package kube

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	"github.com/loomrt/loom/discovery"
)

// A record whose Lease's annotations would pass the API server's limit is
// an error naming the key, the sizes, the limit and what to do; one that
// just fits is one the API server takes, so the two agree on the limit.
func TestAnOversizedRecordIsAClearError(t *testing.T) {
	srv, cs := startAPIServer(t)
	ns := newNamespace(t, cs)
	d := open(t, srv, Config{Namespace: ns})
	// sized returns a record whose Lease's annotations take n bytes.
	sized := func(id uint64, n int) discovery.Instance {
		inst := testInst(id, "10.0.0.1:1")
		inst.Metadata = map[string]string{"blob": ""}
		value, err := json.Marshal(inst)
		if err != nil {
			t.Fatal(err)
		}
		inst.Metadata["blob"] = strings.Repeat("a", n-annotationsSize(inst.Key(), value))
		return inst
	}
	fits := sized(1, maxAnnotations)
	register(t, d, fits)
	big := sized(2, maxAnnotations+1)
	err := d.Register(t.Context(), big)
	if err == nil {
		t.Fatalf("Register of a record whose annotations take %d bytes succeeded", maxAnnotations+1)
	}
	value, _ := json.Marshal(big)
	for _, want := range []string{big.Key(), strconv.Itoa(len(value)) + " bytes", strconv.Itoa(maxAnnotations), "keep Instance.Metadata small"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Register of an oversized record = %v; want it to say %q", err, want)
		}
	}
	if got := list(t, d); len(got) != 1 || !same(got[0], fits) {
		t.Fatalf("List = %d records; want only the one that fits", len(got))
	}
}
