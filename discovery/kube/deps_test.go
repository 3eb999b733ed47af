package kube_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The backend speaks to Leases alone, so it must not link client-go's
// scheme of every API group (and with it all of k8s.io/api): every program
// that imports discovery/all, cmd/loom among them, would build it.
func TestLinksOnlyTheCoordinationGroup(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/loomrt/loom/discovery/kube").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		if dep == "k8s.io/client-go/kubernetes/scheme" ||
			(strings.HasPrefix(dep, "k8s.io/api/") && dep != "k8s.io/api/coordination/v1") {
			t.Errorf("discovery/kube links %s; speak to the API through leaseClient (leases.go), not client-go's typed clients", dep)
		}
	}
}
