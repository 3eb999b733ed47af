package main

import (
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

// loom version and loom --version say what the Go toolchain stamped into
// the binary, as `go version -m` reads it.
func TestVersionSaysWhatTheToolchainStamped(t *testing.T) {
	out, err := exec.Command("go", "version", "-m", loomBin).Output()
	if err != nil {
		t.Fatalf("go version -m: %v", err)
	}
	mod := regexp.MustCompile(`(?m)^\s+mod\s+github\.com/loomrt/loom\s+(\S+)`).FindSubmatch(out)
	if mod == nil {
		t.Fatalf("go version -m names no main module:\n%s", out)
	}
	want := "loom " + string(mod[1])
	if rev := regexp.MustCompile(`(?m)^\s+build\s+vcs\.revision=(\S+)`).FindSubmatch(out); rev != nil {
		want += " (commit " + string(rev[1])
	}
	for _, args := range [][]string{{"version"}, {"--version"}} {
		got := runLoom(t, nil, args...)
		if !strings.HasPrefix(got, want) || !strings.HasSuffix(got, " "+runtime.Version()+" "+runtime.GOOS+"/"+runtime.GOARCH+"\n") {
			t.Errorf("loom %s printed %q; want %q..., the toolchain %s and the platform", args[0], got, want, runtime.Version())
		}
	}
}
