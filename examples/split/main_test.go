package main

import (
	"os/exec"
	"testing"
)

func TestSplitPrintsTheWordsAndExitsZero(t *testing.T) {
	cmd := exec.Command("go", "run", ".")
	cmd.Env = append(cmd.Environ(), "LOOM_LOG_LEVEL=warn")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go run ./examples/split: %v\n%s", err, out)
	}
	if got, want := string(out), "hello\nfrom\nloom\n"; got != want {
		t.Fatalf("printed %q, want %q", got, want)
	}
}
