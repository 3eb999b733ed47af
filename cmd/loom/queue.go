package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/natsconn"
	"github.com/loomrt/loom/workqueue"
)

func newQueue() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "queue",
		Short: "Inspect and repair work queues: ls, info, add, peek, dlq",
		Long: `Inspect and repair the durable work queues (package workqueue) on the NATS
server the configuration names (see loom config; NATS_SERVER). Jobs are
shown and taken as JSON, converted to and from each queue's codec.`,
	}
	cmd.AddCommand(newQueueLs(), newQueueInfo(), newQueueAdd(), newQueuePeek(), newQueueDLQ())
	return cmd
}

// withAdmin connects with the loaded configuration and runs f.
func withAdmin(cmd *cobra.Command, f func(ctx context.Context, a *workqueue.Admin) error) error {
	ctx, stop := signalContext(cmd.Context(), cmd.ErrOrStderr())
	defer stop()
	loaded, err := config.Load()
	if err != nil {
		return err
	}
	nc, err := natsconn.Connect(ctx, loaded.Config.NATS, natsconn.WithLogger(loom.NewLogger(loaded.Config.Log)),
		natsconn.WithURLSource(loaded.Source("nats.url")))
	if err != nil {
		return err
	}
	defer closeNATS(nc)
	a, err := workqueue.NewAdmin(nc)
	if err != nil {
		return err
	}
	return f(ctx, a)
}

// closeNATS closes nc, which the command opened, without logging the
// close as a failure: closed while nats.go reconnects to a server that is
// gone (the command stopped while NATS is down), the connection's closed
// handler logged "NATS connection closed" as an error, with nats.go's
// "no servers available". The loss itself was logged when it happened.
func closeNATS(nc *nats.Conn) {
	nc.SetClosedHandler(nil)
	nc.SetDisconnectErrHandler(nil)
	nc.Close()
}

func newQueueLs() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List the work queues: jobs waiting, in flight, dead letters",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withAdmin(cmd, func(ctx context.Context, a *workqueue.Admin) error {
				list, err := a.List(ctx)
				if err != nil {
					return err
				}
				out := cmd.OutOrStdout()
				if asJSON {
					if list == nil {
						list = []workqueue.Info{}
					}
					return printJSON(out, list)
				}
				w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "QUEUE\tJOBS\tPENDING\tIN-FLIGHT\tREDELIVERED\tDEAD\tCODEC\tSTORAGE\tREPLICAS")
				for _, q := range list {
					fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%d\n", q.Name, q.Jobs, q.Pending, q.InFlight,
						q.Redelivered, q.DeadLetters, q.Codec, q.Storage, q.Replicas)
				}
				return w.Flush()
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array")
	return cmd
}

func newQueueInfo() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "info QUEUE",
		Short: "Show a work queue's state and settings",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withAdmin(cmd, func(ctx context.Context, a *workqueue.Admin) error {
				info, err := a.Info(ctx, args[0])
				if err != nil {
					return err
				}
				out := cmd.OutOrStdout()
				if asJSON {
					return printJSON(out, info)
				}
				w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				for _, row := range [][2]string{
					{"queue", info.Name},
					{"subject", info.Subject},
					{"group", info.Group},
					{"codec", info.Codec},
					{"jobs", fmt.Sprintf("%d (%d bytes)", info.Jobs, info.Bytes)},
					{"pending", strconv.FormatUint(info.Pending, 10)},
					{"in flight", strconv.FormatUint(info.InFlight, 10)},
					{"redelivered", strconv.FormatUint(info.Redelivered, 10)},
					{"waiting pulls", strconv.Itoa(info.Waiting)},
					{"dead letters", strconv.FormatUint(info.DeadLetters, 10)},
					{"max deliver", strconv.Itoa(info.MaxDeliver)},
					{"storage", fmt.Sprintf("%s, %d replicas", info.Storage, info.Replicas)},
					{"created", info.Created.Format(time.RFC3339)},
				} {
					fmt.Fprintf(w, "%s\t%s\n", row[0], row[1])
				}
				return w.Flush()
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newQueueAdd() *cobra.Command {
	var key string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "add QUEUE ['<json job>' ...]",
		Short: "Add jobs to a work queue, given as JSON (or one per line on stdin)",
		Long: `Add jobs to a work queue. Each argument after the queue is one job as JSON;
without any, each line of standard input is one. Jobs are encoded with the
queue's codec (MessagePack or JSON; a queue of bytes takes a JSON string as
its text). --key sets an idempotency key: adding the same job with the same
key twice within the duplicate window stores it once. Each added job is
printed with its sequence number; with --json, as a line of JSON
({"queue": ..., "seq": ...}).`,
		Example: `  loom queue add prefill_queue '{"request_id": "r1", "prompt_token_ids": [1, 2, 3]}'
  jq -c '.[]' jobs.json | loom queue add prefill_queue`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			jobs := args[1:]
			if len(jobs) == 0 {
				s := bufio.NewScanner(cmd.InOrStdin())
				s.Buffer(make([]byte, 64<<10), 64<<20)
				for s.Scan() {
					if line := strings.TrimSpace(s.Text()); line != "" {
						jobs = append(jobs, line)
					}
				}
				if err := s.Err(); err != nil {
					return fmt.Errorf("reading jobs from stdin: %w", err)
				}
			}
			return withAdmin(cmd, func(ctx context.Context, a *workqueue.Admin) error {
				for i, j := range jobs {
					if !json.Valid([]byte(j)) {
						return fmt.Errorf("job %d is not valid JSON: %.80q", i+1, j)
					}
					seq, err := a.Add(ctx, args[0], json.RawMessage(j), key)
					if err != nil {
						return err
					}
					if asJSON {
						err = printJSONLine(cmd.OutOrStdout(), addedJob{Queue: args[0], Seq: seq})
					} else {
						_, err = fmt.Fprintf(cmd.OutOrStdout(), "added job %d to %s\n", seq, args[0])
					}
					if err != nil {
						return err
					}
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&key, "key", "", "idempotency key of the jobs")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print each added job as a line of JSON")
	return cmd
}

// addedJob is a line of loom queue add --json.
type addedJob struct {
	Queue string `json:"queue"`
	Seq   uint64 `json:"seq"`
}

func newQueuePeek() *cobra.Command {
	var n int
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "peek QUEUE",
		Short: "Show the oldest jobs of a work queue without taking them",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if n < 1 {
				return &usageError{cmd, fmt.Errorf("-n %d: want 1 or more", n)}
			}
			return withAdmin(cmd, func(ctx context.Context, a *workqueue.Admin) error {
				msgs, err := a.Peek(ctx, args[0], n)
				if err != nil {
					return err
				}
				out := cmd.OutOrStdout()
				if asJSON {
					rows := make([]map[string]any, 0, len(msgs))
					for _, m := range msgs {
						rows = append(rows, map[string]any{"seq": m.Seq, "time": m.Time, "size": len(m.Data), "job": jobJSON(m)})
					}
					return printJSON(out, rows)
				}
				w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "SEQ\tAGE\tSIZE\tJOB")
				for _, m := range msgs {
					fmt.Fprintf(w, "%d\t%s\t%d\t%s\n", m.Seq, since(m.Time), len(m.Data), jobJSON(m))
				}
				return w.Flush()
			})
		},
	}
	cmd.Flags().IntVarP(&n, "n", "n", 10, "how many jobs to show")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array")
	return cmd
}

func newQueueDLQ() *cobra.Command {
	var (
		n              int
		asJSON         bool
		requeue, purge bool
	)
	cmd := &cobra.Command{
		Use:   "dlq QUEUE [--requeue [SEQ ...] | --purge]",
		Short: "Show a work queue's dead letters, requeue or purge them",
		Long: `Show the jobs of a work queue that were moved to its dead-letter stream: why
(failed: its handler failed max_deliver times; permanent; decode: it does not
decode as the queue's type; payload: its offloaded payload is gone; expired:
delivered max_deliver times without an answer), after how many deliveries,
and the last error. --requeue moves them back into the queue as new jobs
(those whose dead-letter sequence numbers are given, or all); --purge
deletes them.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if requeue && purge {
				return &usageError{cmd, errors.New("--requeue and --purge are exclusive")}
			}
			if n < 1 {
				return &usageError{cmd, fmt.Errorf("-n %d: want 1 or more", n)}
			}
			var seqs []uint64
			for _, s := range args[1:] {
				seq, err := strconv.ParseUint(s, 10, 64)
				if err != nil || !requeue {
					return &usageError{cmd, fmt.Errorf("%q: sequence numbers follow --requeue, as loom queue dlq prints them", s)}
				}
				seqs = append(seqs, seq)
			}
			return withAdmin(cmd, func(ctx context.Context, a *workqueue.Admin) error {
				out := cmd.OutOrStdout()
				switch {
				case requeue:
					moved, err := a.Requeue(ctx, args[0], seqs...)
					if err == nil || moved > 0 {
						fmt.Fprintf(out, "requeued %d dead letters into %s\n", moved, args[0])
					}
					return err
				case purge:
					gone, err := a.PurgeDeadLetters(ctx, args[0])
					if err != nil {
						return err
					}
					fmt.Fprintf(out, "deleted %d dead letters of %s\n", gone, args[0])
					return nil
				}
				dead, err := a.DeadLetters(ctx, args[0], n)
				if err != nil {
					return err
				}
				if asJSON {
					rows := make([]map[string]any, 0, len(dead))
					for _, d := range dead {
						rows = append(rows, map[string]any{
							"seq": d.Seq, "original_seq": d.OriginalSeq, "reason": d.Reason, "deliveries": d.Deliveries,
							"error": d.Error, "dead_at": d.DeadAt, "group": d.Group, "job": jobJSON(d.Message),
						})
					}
					return printJSON(out, rows)
				}
				w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "SEQ\tJOB-SEQ\tREASON\tDELIVERIES\tAGE\tERROR\tJOB")
				for _, d := range dead {
					fmt.Fprintf(w, "%d\t%d\t%s\t%d\t%s\t%s\t%s\n", d.Seq, d.OriginalSeq, d.Reason, d.Deliveries,
						since(d.DeadAt), clip(d.Error, 80), clip(string(jobJSON(d.Message)), 60))
				}
				return w.Flush()
			})
		},
	}
	cmd.Flags().IntVarP(&n, "n", "n", 10, "how many dead letters to show")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array")
	cmd.Flags().BoolVar(&requeue, "requeue", false, "move dead letters back into the queue")
	cmd.Flags().BoolVar(&purge, "purge", false, "delete every dead letter")
	return cmd
}

// jobJSON renders a stored job for display; undecodable bytes are shown
// as a note, not an error.
func jobJSON(m workqueue.Message) json.RawMessage {
	j, err := m.JSON()
	if err != nil {
		b, _ := json.Marshal(fmt.Sprintf("<%d bytes: %v>", len(m.Data), err))
		return b
	}
	return j
}

func since(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return time.Since(t).Round(time.Second).String()
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}
