// Package buildinfo says which build of Loom a process runs, from what the
// Go toolchain stamped into its binary: Loom's module version, and when
// Loom is the main module built from a git checkout (the loom command),
// the commit.
package buildinfo

import (
	"runtime"
	"runtime/debug"
	"sync"
)

// ModulePath is Loom's module.
const ModulePath = "github.com/loomrt/loom"

// Info describes the running build.
type Info struct {
	// Version is Loom's module version: a release tag, a pseudo-version
	// that names the commit (v0.0.0-20261207121800-abcdef123456, with
	// +dirty for a checkout with changes), "(devel)" for a build the
	// toolchain could not version, or "unknown" for a binary without
	// build information.
	Version string
	// Revision, Time and Modified are the commit, its time (RFC 3339)
	// and whether the checkout had uncommitted changes, when the binary
	// was built from a checkout of Loom itself; empty otherwise.
	Revision string
	Time     string
	Modified bool
	// Go is the toolchain that built the binary, as runtime.Version.
	Go string
}

// Read returns the running build's Info.
var Read = sync.OnceValue(func() Info {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return Info{Version: "unknown", Go: runtime.Version()}
	}
	return fromBuildInfo(bi)
})

func fromBuildInfo(bi *debug.BuildInfo) Info {
	info := Info{Version: "unknown", Go: bi.GoVersion}
	if bi.Main.Path == ModulePath {
		info.Version = bi.Main.Version
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				info.Revision = s.Value
			case "vcs.time":
				info.Time = s.Value
			case "vcs.modified":
				info.Modified = s.Value == "true"
			}
		}
		return info
	}
	for _, m := range bi.Deps {
		if m.Path != ModulePath {
			continue
		}
		info.Version = m.Version
		if m.Replace != nil {
			// Replaced by a directory (a local checkout), the module
			// has no version of its own: (devel).
			info.Version = m.Replace.Version
			if info.Version == "" {
				info.Version = "(devel)"
			}
		}
		break
	}
	return info
}
