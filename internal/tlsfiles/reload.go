package tlsfiles

import (
	"log/slog"
	"os"
	"sync"
)

// Reloaded is a value read from PEM files (a certificate and its key, a
// CA pool, a TLS configuration), read again when one of the files changes
// on disk. A process outlives its certificates, which cert-manager, Vault
// or a SPIFFE agent renew in place: read once, a server would serve its
// old certificate until it expired, and a client would keep its old
// client certificate and CA bundle.
//
// Current only stats the files (identity, size, modification time); they
// are read when that changes. Files that do not load (caught half written,
// a certificate renewed before its key, expired) leave the last value that
// loaded in use, with one warning naming the key and the files per state
// of the files on disk.
type Reloaded[T any] struct {
	what  string // the part of Loom, for logs: "request plane"
	key   string // the configuration key of the first file, for logs
	files []string
	load  func() (T, error)
	log   *slog.Logger

	mu   sync.Mutex
	seen []os.FileInfo // the files when last read, nil for one that could not be stat'ed
	val  T             // the last value that loaded
}

// Watch loads a value with load from files, which must load (a start-up
// error otherwise), and returns it kept current. what names the part of
// Loom the files are for, and key the configuration key of the first
// file, in the log lines.
func Watch[T any](log *slog.Logger, what, key string, load func() (T, error), files ...string) (*Reloaded[T], error) {
	w := &Reloaded[T]{what: what, key: key, files: files, load: load, log: log}
	w.seen = w.stat()
	v, err := load()
	if err != nil {
		return nil, err
	}
	w.val = v
	return w, nil
}

// Current returns the value the files hold now, or the last one that
// loaded if they do not load.
func (w *Reloaded[T]) Current() T {
	w.mu.Lock()
	defer w.mu.Unlock()
	// Stat before reading: a change after the stat is seen next time.
	st := w.stat()
	if sameFiles(st, w.seen) {
		return w.val
	}
	w.seen = st
	v, err := w.load()
	if err != nil {
		w.log.Warn(w.what+": a TLS file changed and does not load; still using the one loaded before (it is read again when it changes)",
			"key", w.key, "files", w.files, "err", err)
		return w.val
	}
	w.val = v
	w.log.Info(w.what+": loaded renewed TLS file", "key", w.key, "files", w.files)
	return v
}

func (w *Reloaded[T]) stat() []os.FileInfo {
	st := make([]os.FileInfo, len(w.files))
	for i, f := range w.files {
		st[i], _ = os.Stat(f) // a missing file fails the load, which says why
	}
	return st
}

// sameFiles reports whether a and b are the same files, unchanged: a file
// replaced by rename (as Kubernetes updates a mounted Secret) is another
// file, one rewritten in place has another size or modification time.
func sameFiles(a, b []os.FileInfo) bool {
	for i := range a {
		x, y := a[i], b[i]
		if x == nil || y == nil {
			if x != y {
				return false
			}
			continue
		}
		if !os.SameFile(x, y) || x.Size() != y.Size() || !x.ModTime().Equal(y.ModTime()) {
			return false
		}
	}
	return true
}
