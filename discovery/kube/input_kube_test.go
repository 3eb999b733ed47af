//go:build kube

package kube

import (
	"context"
	"encoding/json"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/discovery/internal/watchview"
	"github.com/loomrt/loom/internal/kubetest"
	"github.com/loomrt/loom/internal/testutil"
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
	if got := list(t, d); len(got) != 1 || !watchview.Same(got[0], fits) {
		t.Fatalf("List = %d records; want only the one that fits", len(got))
	}
}

// A process that may read Leases but not write them is told, at its first
// Register, which verb it lacks and which Role grants it.
func TestAReadOnlyRoleSaysWhatRegisterLacks(t *testing.T) {
	srv, cs := startAPIServer(t)
	ns := newNamespace(t, cs)
	readOnly(t, cs, ns)
	// The authorizer learns of the RoleBinding a moment after it is made.
	var d *Discovery
	testutil.EventuallyNoError(t, wait, "Open with a read-only Role", func() error {
		ctx, cancel := context.WithTimeout(t.Context(), wait)
		defer cancel()
		var err error
		d, err = Open(ctx, srv.UserConfig(), Config{Namespace: ns, Logger: quiet})
		return err
	})
	t.Cleanup(func() { _ = d.Close() })
	inst := testInst(1, "10.0.0.1:1")
	err := d.Register(t.Context(), inst)
	if err == nil {
		t.Fatal("Register with a read-only Role succeeded")
	}
	for _, want := range []string{inst.Key(), ns, srv.URL(), `cannot create resource "leases"`, "create, update and delete on coordination.k8s.io leases", "Role"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Register with a read-only Role = %v; want it to say %q", err, want)
		}
	}
}

// Close with the API server gone (stopped, or frozen so that nothing it
// is sent is answered) returns within a few seconds, says which records it
// could not remove, closes the watch channels and stops every goroutine
// (TestMain checks for leaks).
func TestCloseWithTheAPIServerGoneReturnsInTime(t *testing.T) {
	for _, tc := range []struct {
		name string
		gone func(srv *kubetest.Server, freezer *testutil.Freezer)
	}{
		{"stopped", func(srv *kubetest.Server, _ *testutil.Freezer) { srv.Stop() }},
		{"frozen", func(_ *kubetest.Server, freezer *testutil.Freezer) { freezer.Freeze() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, cs := startAPIServer(t)
			ns := newNamespace(t, cs)
			freezer := testutil.NewFreezer(t, strings.TrimPrefix(srv.URL(), "https://"))
			t.Cleanup(freezer.Thaw) // before the freezer's own cleanup
			rc := srv.AdminConfig()
			rc.Host = "https://" + freezer.Addr()
			ctx, cancel := context.WithTimeout(t.Context(), wait)
			defer cancel()
			d, err := Open(ctx, rc, Config{Namespace: ns, TTL: 3 * time.Second, Logger: quiet})
			if err != nil {
				t.Fatal(err)
			}
			register(t, d, testInst(1, "10.0.0.1:1"))
			register(t, d, testInst(2, "10.0.0.1:2"))
			ch, _ := watchFrom(t, d)
			tc.gone(srv, freezer)
			start := time.Now()
			err = d.Close()
			took := time.Since(start)
			t.Logf("Close: %v after %v", err, took.Round(time.Millisecond))
			if took > closeTimeout+2*time.Second {
				t.Fatalf("Close took %v with the API server gone; want at most about %v", took, closeTimeout)
			}
			if err == nil || !strings.Contains(err.Error(), "2 of 2 records not removed") || !strings.Contains(err.Error(), ns) {
				t.Fatalf("Close = %v; want it to say that 2 of 2 records in namespace %s were not removed", err, ns)
			}
			select {
			case _, ok := <-ch:
				for ok {
					_, ok = <-ch
				}
			case <-time.After(time.Second):
				t.Fatal("the watch channel is still open after Close")
			}
		})
	}
}

// A Lease that carries Loom's label but not a record Loom can read (a hand
// edit, another program) is skipped by List and Watch with a warning naming
// it, and the records around it are served; a Lease without the label is
// never read.
func TestAMalformedLeaseIsSkippedWithAWarning(t *testing.T) {
	srv, cs := startAPIServer(t)
	ns := newNamespace(t, cs)
	var logs testutil.SyncBuffer
	d := open(t, srv, Config{Namespace: ns, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	good := testInst(1, "10.0.0.1:1")
	register(t, d, good)
	unrelatedWrite(t, cs, ns, "not-loom")
	bad := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{
			Name:        "loom-by-hand",
			Labels:      map[string]string{LabelManagedBy: ManagedBy},
			Annotations: map[string]string{AnnotationKey: "v1/instances/ns/worker/generate/2", AnnotationRecord: "{"},
		},
		Spec: coordinationv1.LeaseSpec{LeaseDurationSeconds: ptr.To[int32](10), RenewTime: ptr.To(metav1.NewMicroTime(time.Now()))},
	}
	if _, err := cs.CoordinationV1().Leases(ns).Create(t.Context(), bad, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := list(t, d); len(got) != 1 || !watchview.Same(got[0], good) {
		t.Fatalf("List = %+v; want only %s", got, good.Key())
	}
	_, set := watchFrom(t, d)
	if len(set) != 1 || !watchview.Same(set[good.Key()], good) {
		t.Fatalf("watch snapshot = %+v; want only %s", set, good.Key())
	}
	out := logs.String()
	if !strings.Contains(out, "skipping a malformed Lease") || !strings.Contains(out, "lease="+bad.Name) {
		t.Fatalf("log %q; want a warning naming Lease %s", out, bad.Name)
	}
	if strings.Contains(out, "not-loom") {
		t.Fatalf("log %q names a Lease without Loom's label; want it never read", out)
	}
}
