package loom_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The root package must not link etcd's client (and with it gRPC and
// protobuf): programs opt into heavy discovery backends by importing them.
func TestRootPackageLinksNoEtcd(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/loomrt/loom").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.HasPrefix(dep, "go.etcd.io/") || strings.HasPrefix(dep, "google.golang.org/grpc") {
			t.Errorf("the root package depends on %s; import heavy backends from programs, not from package loom", dep)
		}
	}
}
