package loom_test

import (
	"os/exec"
	"strings"
	"testing"
)

// internal/ holds libraries that the packages above it build on: no
// programs (a program's private code lives under its own cmd/x/internal/
// or, for the multi-process tests, e2e/cmd/) and nothing that imports the
// root, which would turn the stack upside down.
func TestInternalHoldsLibrariesBelowTheRoot(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}} {{.Name}} {{join .Imports \" \"}}", "./internal/...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list ./internal/...: %v\n%s", err, out)
	}
	listed := 0
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		listed++
		if f[1] == "main" {
			t.Errorf("%s is a program; move it under the cmd/ of the program or test that runs it", f[0])
		}
		for _, imp := range f[2:] {
			if imp == "github.com/loomrt/loom" {
				t.Errorf("%s imports the root package; internal/ is below the root, so move it up or split what it needs out of the root", f[0])
			}
		}
	}
	if listed == 0 {
		t.Fatalf("go list ./internal/... listed no package:\n%s", out)
	}
}
