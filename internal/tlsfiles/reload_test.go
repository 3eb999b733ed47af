package tlsfiles

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
)

// Current reads the TLS files only when they changed on disk: renewed
// by rename (a new file of the same size) or rewritten in place. Files
// that do not load are not read again until they change.
func TestTLSFilesAreReadOnlyWhenTheyChange(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "x.pem")
	write := func(name, s string) {
		t.Helper()
		if err := os.WriteFile(name, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(file, "one")
	var loads atomic.Int32
	w, err := Watch(slog.New(slog.DiscardHandler), "test", "x.file", func() (string, error) {
		loads.Add(1)
		b, err := os.ReadFile(file)
		if err != nil || string(b) == "bad" {
			return "", errors.Join(err, errors.New("does not load"))
		}
		return string(b), nil
	}, file)
	if err != nil {
		t.Fatal(err)
	}
	expect := func(step, want string, wantLoads int32) {
		t.Helper()
		// Concurrent callers agree on one value and one read.
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for range 50 {
					if got := w.Current(); got != want {
						t.Errorf("%s: Current() = %q, want %q", step, got, want)
						return
					}
				}
			})
		}
		wg.Wait()
		if n := loads.Load(); n != wantLoads {
			t.Fatalf("%s: the files were read %d times in all, want %d", step, n, wantLoads)
		}
	}
	expect("unchanged since start", "one", 1)

	write(file+".new", "two")
	if err := os.Rename(file+".new", file); err != nil {
		t.Fatal(err)
	}
	expect("renewed by rename, same size", "two", 2)

	write(file, "three")
	expect("rewritten in place", "three", 3)

	write(file, "bad")
	expect("rewritten with what does not load", "three", 4)

	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	expect("removed", "three", 5)

	write(file, "four")
	expect("back", "four", 6)
}
