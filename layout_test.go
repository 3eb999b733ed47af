package loom_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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

// TestTheREADMELayoutNamesEveryPackage keeps the README's Layout
// paragraph, a newcomer's map of the repository, complete: every package
// of the module is named in it in backquotes, with or without a trailing
// slash, or lies under one of the directories it names as a whole.
func TestTheREADMELayoutNamesEveryPackage(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, layout, ok := strings.Cut(string(readme), "\nLayout: ")
	if !ok {
		t.Fatal(`README.md has no paragraph starting "Layout: "`)
	}
	layout, _, _ = strings.Cut(layout, "\n\n")
	// Directories the paragraph names as a whole, each with what it holds.
	wholes := []string{
		"examples/",          // programs a newcomer runs
		"e2e/cmd/",           // the programs the multi-process tests run
		"cmd/loom/internal/", // the loom command's private code
	}
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}}", "./...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list ./...: %v\n%s", err, out)
	}
	listed := 0
	for line := range strings.Lines(string(out)) {
		path := strings.TrimSpace(line)
		rel, ok := strings.CutPrefix(path, "github.com/loomrt/loom")
		if !ok || strings.HasPrefix(path, "go: ") {
			continue
		}
		listed++
		rel = strings.TrimPrefix(rel, "/")
		if rel == "" {
			rel = "loom"
		}
		if strings.Contains(layout, "`"+rel+"`") || strings.Contains(layout, "`"+rel+"/`") ||
			slices.ContainsFunc(wholes, func(w string) bool { return strings.HasPrefix(rel+"/", w) }) {
			continue
		}
		t.Errorf("README.md's Layout paragraph does not name package %s; add `%s` with what it holds", rel, rel)
	}
	if listed == 0 {
		t.Fatalf("go list ./... listed no package of the module:\n%s", out)
	}
}

// TestTheDesignNotesNameEveryFileOfTheRootsStack keeps the stack of the
// root package's files in docs/design.md complete: each file of the root
// package (but doc.go) is named in it.
func TestTheDesignNotesNameEveryFileOfTheRootsStack(t *testing.T) {
	design, err := os.ReadFile("docs/design.md")
	if err != nil {
		t.Fatal(err)
	}
	_, stack, ok := strings.Cut(string(design), "```\nloom (root)\n")
	if !ok {
		t.Fatal("docs/design.md has no block starting \"loom (root)\": the stack of the root package's files")
	}
	stack, _, _ = strings.Cut(stack, "```")
	named := map[string]bool{}
	for _, f := range strings.FieldsFunc(stack, func(r rune) bool { return r == ' ' || r == ',' || r == '\n' || r == ';' }) {
		if strings.HasSuffix(f, ".go") {
			named[f] = true
		}
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") || f == "doc.go" {
			continue
		}
		if !named[f] {
			t.Errorf("docs/design.md's stack of the root package does not name %s; add it where it sits, with what it holds", f)
		}
		delete(named, f)
	}
	for f := range named {
		t.Errorf("docs/design.md's stack of the root package names %s, which the root package does not have", f)
	}
}
