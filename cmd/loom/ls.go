package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/discovery"
)

func newLs() *cobra.Command {
	var asJSON, watch bool
	cmd := &cobra.Command{
		Use:   "ls [namespace[/component[/endpoint]]]",
		Short: "List the instances registered in discovery",
		Long: `List the instances registered in the discovery the configuration names
(see loom config): id, endpoint, transport, address, codec and age. With
--json, print a JSON array of instance records; with --watch, print each
instance as it is added or removed until Ctrl-C: those registered already
first, each as added, then the line "# synced: what follows are changes"
(with --json, which prints one object per line, {"event":"synced"}), then
the changes.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var q discovery.Query
			if len(args) == 1 {
				parts := strings.Split(args[0], "/")
				if len(parts) > 3 {
					return &usageError{cmd, fmt.Errorf("%q: want namespace[/component[/endpoint]]", args[0])}
				}
				for len(parts) < 3 {
					parts = append(parts, "")
				}
				q = discovery.Query{Namespace: parts[0], Component: parts[1], Endpoint: parts[2]}
				if err := q.Validate(); err != nil {
					return &usageError{cmd, err}
				}
			}
			ctx, stop := signalContext(context.Background(), cmd.ErrOrStderr())
			defer stop()
			rt, err := toolRuntime(ctx)
			if err != nil {
				return err
			}
			defer rt.Shutdown(context.Background())
			if memoryDiscovery(rt) {
				fmt.Fprintln(cmd.ErrOrStderr(), "loom ls: discovery.backend is memory, which sees only this process, so no instance of another; start loom up and set the lines it prints in this shell (LOOM_DISCOVERY, ETCD_ENDPOINTS, NATS_SERVER)")
			}
			if watch {
				return watchInstances(ctx, cmd.OutOrStdout(), rt.Discovery(), q, asJSON)
			}
			list, err := rt.Discovery().List(ctx, q)
			if err != nil {
				return err
			}
			return printInstances(cmd.OutOrStdout(), list, asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON: an array, or one object per line with --watch")
	cmd.Flags().BoolVar(&watch, "watch", false, "print instances as they are added and removed")
	return cmd
}

func printInstances(out io.Writer, list []discovery.Instance, asJSON bool) error {
	if asJSON {
		if list == nil {
			list = []discovery.Instance{}
		}
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(list)
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "INSTANCE\tENDPOINT\tTRANSPORT\tADDRESS\tCODEC\tAGE")
	for _, inst := range list {
		fmt.Fprintf(w, "%x\t%s\t%s\t%s\t%s\t%s\n", inst.ID, inst.Path(), transport(inst), inst.Address, inst.Codec, age(inst))
	}
	return w.Flush()
}

func watchInstances(ctx context.Context, out io.Writer, d discovery.Discovery, q discovery.Query, asJSON bool) error {
	events, err := d.Watch(ctx, q)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(out)
	for ev := range events {
		switch {
		case ev.Kind == discovery.Synced && !asJSON:
			fmt.Fprintln(out, "# synced: what follows are changes")
		case asJSON:
			if err := enc.Encode(struct {
				Event    string             `json:"event"`
				Instance discovery.Instance `json:"instance,omitzero"`
			}{ev.Kind.String(), ev.Instance}); err != nil {
				return err
			}
		default:
			fmt.Fprintf(out, "%s %x %s %s %s\n", ev.Kind, ev.Instance.ID, ev.Instance.Path(), transport(ev.Instance), ev.Instance.Address)
		}
	}
	return nil
}

func transport(inst discovery.Instance) string {
	if inst.TLS {
		return inst.Transport + "+tls"
	}
	return inst.Transport
}

// age reads the registration time the runtime puts in the record's
// metadata.
func age(inst discovery.Instance) string {
	t, err := time.Parse(time.RFC3339Nano, inst.Metadata[loom.MetadataRegisteredAt])
	if err != nil {
		return "-"
	}
	return time.Since(t).Round(time.Second).String()
}
