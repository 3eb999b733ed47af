package natsplane_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The NATS plane shares the request plane's core with the TCP plane
// through internal/plane; it does not reach into the TCP multiplexer,
// nor do its tests.
func TestNATSPlaneDoesNotImportTheTCPPlane(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-test", "github.com/loomrt/loom/internal/natsplane").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		if dep == "github.com/loomrt/loom/internal/mux" {
			t.Fatalf("internal/natsplane depends on %s; use internal/plane's names", dep)
		}
	}
}
