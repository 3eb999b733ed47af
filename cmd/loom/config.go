package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/loomrt/loom/config"
)

func newConfig() *cobra.Command {
	var markdown, asJSON bool
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Print every configuration key's effective value and where it came from",
		Long: `Print every configuration key's effective value and its source: default,
a TOML file (/opt/loom/defaults/*.toml, /opt/loom/etc/*.toml, $LOOM_CONFIG),
or an environment variable. Secrets are masked. With --json, print a JSON
array of {"key", "value", "source"} objects; with --markdown, print the
documentation table of every key instead.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if markdown {
				fmt.Fprint(cmd.OutOrStdout(), config.Markdown())
				return nil
			}
			loaded, err := config.Load()
			if err != nil {
				return err
			}
			if asJSON {
				if err := printJSON(cmd.OutOrStdout(), loaded.Settings()); err != nil {
					return err
				}
			} else {
				fmt.Fprint(cmd.OutOrStdout(), loaded.Table())
			}
			for _, w := range loaded.Warnings {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning:", w)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&markdown, "markdown", false, "print the documentation table of every key as Markdown")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array of every key's value and source")
	return cmd
}
