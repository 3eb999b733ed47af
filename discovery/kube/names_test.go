package kube

import (
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/utils/ptr"

	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/discovery/internal/watchview"
)

// Every record name Loom accepts maps to a valid Lease name and valid label
// values, and distinct keys to distinct names.
func TestNamesAndLabelsAreValidKubernetesNames(t *testing.T) {
	long := strings.Repeat("a", 128)
	insts := []discovery.Instance{
		{Namespace: "ns", Component: "c", Endpoint: "e", ID: 1},
		{Namespace: "prod.eu-west_1", Component: "_worker", Endpoint: "generate-", ID: 1<<53 - 1},
		{Namespace: "a.b.c", Component: long, Endpoint: "-", ID: 0xabc},
		{Namespace: long, Component: "c", Endpoint: "e", ID: 1},
		{Namespace: "ns", Component: "c", Endpoint: "e", ID: 2},
	}
	names := map[string]string{}
	for _, inst := range insts {
		if err := inst.Validate(); err != nil {
			t.Fatalf("test instance %+v: %v", inst, err)
		}
		name := LeaseName(inst.Key())
		if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
			t.Errorf("LeaseName(%s) = %q: %v", inst.Key(), name, errs)
		}
		if other, dup := names[name]; dup {
			t.Errorf("keys %s and %s share Lease name %s", other, inst.Key(), name)
		}
		names[name] = inst.Key()
		for k, v := range recordLabels(inst) {
			if errs := validation.IsQualifiedName(k); len(errs) > 0 {
				t.Errorf("label key %q: %v", k, errs)
			}
			if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
				t.Errorf("label %s=%q of %s: %v", k, v, inst.Key(), errs)
			}
		}
		// The selector of every query the record falls under selects it.
		set := labels.Set(recordLabels(inst))
		for _, q := range []discovery.Query{{}, {Namespace: inst.Namespace}, {Namespace: inst.Namespace, Component: inst.Component},
			{Namespace: inst.Namespace, Component: inst.Component, Endpoint: inst.Endpoint}} {
			sel, err := labels.Parse(selector(q))
			if err != nil {
				t.Fatalf("selector(%+v) = %q: %v", q, selector(q), err)
			}
			if !sel.Matches(set) {
				t.Errorf("selector %q does not select %s", sel, inst.Key())
			}
		}
	}
	if got := labelValue("worker"); got != "worker" {
		t.Errorf("labelValue(worker) = %q; a valid label value is kept as it is", got)
	}
	if got := labelValue("_worker"); !regexp.MustCompile(`^h-[0-9a-f]{40}$`).MatchString(got) {
		t.Errorf("labelValue(_worker) = %q; want h- and 40 hex digits", got)
	}
}

// lease builds the Lease Register writes for inst.
func lease(inst discovery.Instance, renew time.Time, ttl int32) *coordinationv1.Lease {
	value, _ := json.Marshal(inst)
	d := &Discovery{namespace: "ns", ttl: time.Duration(ttl) * time.Second, holder: "me"}
	l := d.newLease(inst, value, renew)
	return l
}

func TestDecodeLease(t *testing.T) {
	inst := discovery.Instance{Namespace: "ns", Component: "c", Endpoint: "e", ID: 7, Transport: "tcp", Address: "10.0.0.1:5", Codec: "json",
		Metadata: map[string]string{"zone": "a"}}
	renew := time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
	good := lease(inst, renew, 10)
	dec, err := decodeLease(good)
	if err != nil {
		t.Fatalf("decodeLease of a Lease Register writes: %v", err)
	}
	if !watchview.Same(dec.inst, inst) || !dec.renew.Equal(renew) || dec.ttl != 10*time.Second {
		t.Fatalf("decodeLease = %+v; want %+v renewed at %v for 10s", dec, inst, renew)
	}
	other := inst
	other.ID = 8
	otherValue, _ := json.Marshal(other)
	for _, tc := range []struct {
		name string
		edit func(l *coordinationv1.Lease)
	}{
		{"no key", func(l *coordinationv1.Lease) { delete(l.Annotations, AnnotationKey) }},
		{"a key that does not parse", func(l *coordinationv1.Lease) { l.Annotations[AnnotationKey] = "v1/instances/ns/c/e/07" }},
		{"another key's name", func(l *coordinationv1.Lease) { l.Name = LeaseName(other.Key()) }},
		{"no record", func(l *coordinationv1.Lease) { delete(l.Annotations, AnnotationRecord) }},
		{"a record that is not JSON", func(l *coordinationv1.Lease) { l.Annotations[AnnotationRecord] = "{" }},
		{"another key's record", func(l *coordinationv1.Lease) { l.Annotations[AnnotationRecord] = string(otherValue) }},
		{"an invalid record", func(l *coordinationv1.Lease) {
			l.Annotations[AnnotationRecord] = `{"namespace":"NS","component":"c","endpoint":"e","instance_id":7}`
		}},
		{"no duration", func(l *coordinationv1.Lease) { l.Spec.LeaseDurationSeconds = nil }},
		{"a zero duration", func(l *coordinationv1.Lease) { l.Spec.LeaseDurationSeconds = ptr.To[int32](0) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := good.DeepCopy()
			tc.edit(l)
			if _, err := decodeLease(l); !errors.Is(err, errMalformed) {
				t.Fatalf("decodeLease = %v; want an error that is errMalformed", err)
			}
		})
	}
	t.Run("without renewTime the acquire time counts", func(t *testing.T) {
		l := good.DeepCopy()
		l.Spec.RenewTime = nil
		l.Spec.AcquireTime = ptr.To(metav1.NewMicroTime(renew.Add(-time.Second)))
		if dec, err := decodeLease(l); err != nil || !dec.renew.Equal(renew.Add(-time.Second)) {
			t.Fatalf("decodeLease = %+v, %v; want renew %v", dec, err, renew.Add(-time.Second))
		}
	})
}

// A Lease comes from the API server, where anyone with write access to
// Leases may have put anything: decoding never panics, and what it accepts
// is a valid record that belongs under the Lease's name.
func FuzzDecodeLease(f *testing.F) {
	inst := discovery.Instance{Namespace: "ns", Component: "c", Endpoint: "e", ID: 7, Transport: "tcp", Address: "a:1", Codec: "json"}
	good := lease(inst, time.Unix(1, 0), 10)
	f.Add(good.Name, good.Annotations[AnnotationKey], good.Annotations[AnnotationRecord], int32(10))
	f.Add("loom-x", "v1/instances/ns/c/e/7", `{"type":"Endpoint"}`, int32(-1))
	f.Add(good.Name, good.Annotations[AnnotationKey], `{"namespace":"ns","component":"c","endpoint":"e","instance_id":7,"metadata":{"a":"\u0000"}}`, int32(1))
	f.Fuzz(func(t *testing.T, name, key, record string, ttl int32) {
		l := good.DeepCopy()
		l.Name = name
		l.Annotations[AnnotationKey] = key
		l.Annotations[AnnotationRecord] = record
		l.Spec.LeaseDurationSeconds = &ttl
		dec, err := decodeLease(l)
		if err != nil {
			if !errors.Is(err, errMalformed) {
				t.Fatalf("decodeLease error %v is not errMalformed", err)
			}
			return
		}
		if err := dec.inst.Validate(); err != nil {
			t.Fatalf("decodeLease accepted an invalid record: %v", err)
		}
		if LeaseName(dec.inst.Key()) != name || dec.inst.Key() != key || dec.ttl <= 0 {
			t.Fatalf("decodeLease accepted %+v under name %q key %q ttl %v", dec.inst, name, key, dec.ttl)
		}
	})
}
