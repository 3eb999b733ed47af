package loom_test

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// The root reaches the request planes only through internal/planes, so
// that a plane is added or changed in one place; and no plane imports
// another for its vocabulary, which lives in internal/plane.
func TestTheRootReachesThePlanesThroughOnePackage(t *testing.T) {
	imports := func(pkg string) []string {
		t.Helper()
		out, err := exec.Command("go", "list", "-f", `{{join .Imports " "}}`, pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list %s: %v\n%s", pkg, err, out)
		}
		return strings.Fields(string(out))
	}
	const (
		mux       = "github.com/loomrt/loom/internal/mux"
		natsplane = "github.com/loomrt/loom/internal/natsplane"
		planes    = "github.com/loomrt/loom/internal/planes"
	)
	root := imports("github.com/loomrt/loom")
	if !slices.Contains(root, planes) {
		t.Errorf("the root does not import %s; the test needs updating", planes)
	}
	for _, p := range []string{mux, natsplane} {
		if slices.Contains(root, p) {
			t.Errorf("the root imports %s; reach the planes through %s", p, planes)
		}
	}
	if slices.Contains(imports(mux), natsplane) || slices.Contains(imports(natsplane), mux) {
		t.Error("one request plane imports the other; what both need belongs in internal/plane")
	}
}
