package etcd

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/internal/testutil"
)

// dynamoEndpoint is Dynamo's DiscoveryInstance::Endpoint as serde writes
// it: tagged by "type", the request plane an enum of one key.
const dynamoEndpoint = `{"type":"Endpoint","component":"backend","endpoint":"generate","namespace":"mixed","instance_id":%d,"transport":{"tcp":"10.0.0.7:9001"}}`

// TestDynamoAndLoomRecordsInOneEtcd puts a record as Dynamo writes it and
// one of Loom's under the same prefix of one real etcd: Loom lists and
// watches both, the Dynamo one as a read-only instance of transport
// dynamo/tcp, without a malformed-record warning; and Loom's value is not
// one Dynamo's decoder takes (no "type"), so Dynamo never routes to it.
func TestDynamoAndLoomRecordsInOneEtcd(t *testing.T) {
	srv := startEtcd(t, fast)
	var logs testutil.SyncBuffer
	d := connect(t, srv.ClientURL(), 5*time.Second, func(c *Config) { c.Logger = slog.New(slog.NewTextHandler(&logs, nil)) })
	cli := raw(t, srv.ClientURL())
	const dynID = 0x694d9a3e2b
	if _, err := cli.Put(t.Context(), "v1/instances/mixed/backend/generate/"+strconv.FormatUint(dynID, 16), fmt.Sprintf(dynamoEndpoint, dynID)); err != nil {
		t.Fatal(err)
	}
	// A Dynamo model record where an instance would be: skipped.
	if _, err := cli.Put(t.Context(), "v1/instances/mixed/backend/generate/1", `{"type":"Model","namespace":"mixed","component":"backend","endpoint":"generate","instance_id":1,"card_json":{}}`); err != nil {
		t.Fatal(err)
	}
	loom := discovery.Instance{Namespace: "mixed", Component: "backend", Endpoint: "generate", ID: d.ID(), Transport: "tcp", Address: "127.0.0.1:1", Codec: "msgpack"}
	if err := d.Register(t.Context(), loom); err != nil {
		t.Fatal(err)
	}
	got, err := d.List(t.Context(), discovery.Query{Namespace: "mixed"})
	if err != nil {
		t.Fatal(err)
	}
	var dyn *discovery.Instance
	var loomSeen bool
	for i, inst := range got {
		switch inst.Transport {
		case "dynamo/tcp":
			dyn = &got[i]
		case "tcp":
			loomSeen = true
		}
	}
	if len(got) != 2 || dyn == nil || !loomSeen {
		t.Fatalf("listed %+v; want Loom's record and Dynamo's Endpoint", got)
	}
	if dyn.ID != dynID || dyn.Address != "10.0.0.7:9001" || dyn.Metadata["origin"] != "dynamo" || dyn.Path() != "mixed/backend/generate" {
		t.Fatalf("Dynamo's record read as %+v", *dyn)
	}
	w := watch(t, d, discovery.Query{Namespace: "mixed", Component: "backend", Endpoint: "generate"})
	w.has(5*time.Second, "both records", *dyn, got[indexOf(got, "tcp")])
	if strings.Contains(logs.String(), "dynamo") || strings.Contains(logs.String(), "694d9a3e2b") {
		t.Fatalf("Dynamo's Endpoint record was warned about:\n%s", logs.String())
	}
	// Dynamo's decoder needs the tag Loom's records do not carry.
	resp, err := cli.Get(t.Context(), got[indexOf(got, "tcp")].Key())
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatal(err)
	}
	var tagged struct {
		Type *string `json:"type"`
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, &tagged); err != nil || tagged.Type != nil {
		t.Fatalf("Loom's record %s carries a type tag (%v): Dynamo would read it", resp.Kvs[0].Value, err)
	}
}

func indexOf(insts []discovery.Instance, transport string) int {
	for i, inst := range insts {
		if inst.Transport == transport {
			return i
		}
	}
	return -1
}
