package discovery_test

import (
	"context"
	"strings"
	"testing"

	"github.com/loomrt/loom/discovery"
	_ "github.com/loomrt/loom/discovery/memory"
)

func TestOpenBackendSaysWhichImportLinksAMissingBackend(t *testing.T) {
	_, err := discovery.OpenBackend(context.Background(), "etcd", discovery.Env{})
	if err == nil {
		t.Fatal("opening etcd, which this test binary does not link, succeeded")
	}
	for _, want := range []string{`"etcd" is not linked`, "github.com/loomrt/loom/discovery/etcd", "linked: memory"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	_, err = discovery.OpenBackend(context.Background(), "zookeeper", discovery.Env{})
	if err == nil || !strings.Contains(err.Error(), `unknown backend "zookeeper"`) {
		t.Errorf("an unknown backend gave %v", err)
	}
}

func TestOpenBackendOpensARegisteredBackend(t *testing.T) {
	d, err := discovery.OpenBackend(context.Background(), "memory", discovery.Env{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if got := discovery.Backends(); len(got) != 1 || got[0] != "memory" {
		t.Errorf("Backends() = %v, want [memory]", got)
	}
}
