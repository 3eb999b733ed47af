package buildinfo

import (
	"runtime"
	"runtime/debug"
	"testing"
)

func TestFromBuildInfo(t *testing.T) {
	vcs := []debug.BuildSetting{
		{Key: "vcs", Value: "git"},
		{Key: "vcs.revision", Value: "abcdef1234567890"},
		{Key: "vcs.time", Value: "2026-12-07T12:00:00Z"},
		{Key: "vcs.modified", Value: "true"},
	}
	tests := []struct {
		name string
		bi   debug.BuildInfo
		want Info
	}{
		{"the loom command built from a checkout", debug.BuildInfo{
			GoVersion: "go1.26.8",
			Main:      debug.Module{Path: ModulePath, Version: "v0.0.0-20261207120000-abcdef123456+dirty"},
			Settings:  vcs,
		}, Info{Version: "v0.0.0-20261207120000-abcdef123456+dirty", Revision: "abcdef1234567890", Time: "2026-12-07T12:00:00Z", Modified: true, Go: "go1.26.8"}},
		{"a program that requires a release", debug.BuildInfo{
			GoVersion: "go1.26.8",
			Main:      debug.Module{Path: "example.com/app", Version: "v1.2.3"},
			Deps:      []*debug.Module{{Path: "github.com/nats-io/nats.go", Version: "v1.56.0"}, {Path: ModulePath, Version: "v0.4.0"}},
			Settings:  vcs, // the program's commit, not Loom's
		}, Info{Version: "v0.4.0", Go: "go1.26.8"}},
		{"a program that replaces Loom by a directory", debug.BuildInfo{
			GoVersion: "go1.26.8",
			Main:      debug.Module{Path: "example.com/app"},
			Deps:      []*debug.Module{{Path: ModulePath, Version: "v0.4.0", Replace: &debug.Module{Path: "../loom"}}},
		}, Info{Version: "(devel)", Go: "go1.26.8"}},
		{"a program that replaces Loom by a fork's version", debug.BuildInfo{
			GoVersion: "go1.26.8",
			Main:      debug.Module{Path: "example.com/app"},
			Deps:      []*debug.Module{{Path: ModulePath, Version: "v0.4.0", Replace: &debug.Module{Path: "example.com/fork", Version: "v0.4.1"}}},
		}, Info{Version: "v0.4.1", Go: "go1.26.8"}},
		{"a binary without Loom", debug.BuildInfo{
			GoVersion: "go1.26.8",
			Main:      debug.Module{Path: "example.com/app"},
		}, Info{Version: "unknown", Go: "go1.26.8"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := fromBuildInfo(&tt.bi); got != tt.want {
				t.Fatalf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestReadNamesThisBinarysToolchain(t *testing.T) {
	if got := Read(); got.Go != runtime.Version() || got.Version == "" || got.Version == "unknown" {
		t.Fatalf("Read() = %+v; want Loom's version and Go %s", got, runtime.Version())
	}
}
