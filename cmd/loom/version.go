package main

import (
	"fmt"
	"io"
	"runtime"

	"github.com/spf13/cobra"

	"github.com/loomrt/loom/internal/buildinfo"
)

func newVersion() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the build of Loom this binary is",
		Long: `Print Loom's version, the commit the binary was built from (for a build from
a git checkout), the Go toolchain and the platform, as the loom_build_info
metric reports them. loom --version prints the same.`,
		Args: cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			printVersion(cmd.OutOrStdout())
		},
	}
}

// versionLine is the build in one line:
//
//	loom v0.0.0-20261207120000-abcdef123456 (commit abcdef1234567890..., 2026-12-07T12:00:00Z) go1.26.8 linux/amd64
func versionLine() string {
	b := buildinfo.Read()
	s := "loom " + b.Version
	if b.Revision != "" {
		s += " (commit " + b.Revision
		if b.Time != "" {
			s += ", " + b.Time
		}
		if b.Modified {
			s += ", with uncommitted changes"
		}
		s += ")"
	}
	return s + " " + b.Go + " " + runtime.GOOS + "/" + runtime.GOARCH
}

func printVersion(w io.Writer) { fmt.Fprintln(w, versionLine()) }
