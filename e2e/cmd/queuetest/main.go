// Command queuetest is the worker, producer and server of the work queue
// fault tests (e2e/queue_test.go), run as separate processes so that they
// can be killed:
//
//	queuetest nats -port 4222 -store DIR [-name n1 -cluster-port 6222 -routes nats://127.0.0.1:6223,...]
//	queuetest etcd -name e1 -dir DIR -client-port 2379 -peer-port 2380 -initial-cluster e1=http://127.0.0.1:2380,...
//	queuetest produce -queue q -jobs 100000 [-start 0] [-batch 1000]
//	queuetest consume -queue q [-concurrency 16] [-ack-wait 2s]
//
// produce and consume connect with Loom's configuration (NATS_SERVER,
// LOOM_*). consume prints "done <id>" for every job it handled, before
// acknowledging it, so that a job whose consumer is killed between the two
// shows up twice: the duplicates the tests count. Both exit 0 on SIGTERM.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/loomrt/loom/config"
	_ "github.com/loomrt/loom/discovery/all" // every discovery backend, chosen by discovery.backend
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/embedded/etcdserver"
	"github.com/loomrt/loom/natsconn"
	"github.com/loomrt/loom/workqueue"
)

// Job is a test job: an id and some padding, about 100 bytes encoded.
type Job struct {
	ID  int    `json:"id"`
	Pad []byte `json:"pad"`
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: queuetest nats|etcd|produce|consume [flags]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var err error
	switch os.Args[1] {
	case "nats":
		err = runNATS(ctx, os.Args[2:])
	case "etcd":
		err = runEtcd(ctx, os.Args[2:])
	case "produce":
		err = produce(ctx, os.Args[2:])
	case "consume":
		err = consume(ctx, os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "queuetest:", err)
		os.Exit(1)
	}
}

func runNATS(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("nats", flag.ExitOnError)
	port := fs.Int("port", 4222, "client port")
	store := fs.String("store", "", "JetStream store directory")
	name := fs.String("name", "", "server name (required in a cluster)")
	clusterPort := fs.Int("cluster-port", 0, "cluster port; 0 for a single server")
	routes := fs.String("routes", "", "comma-separated routes to the other servers")
	_ = fs.Parse(args)
	ns, err := embedded.StartNATS(embedded.NATSOptions{
		Port: *port, JetStream: true, StoreDir: *store, ReadyTimeout: 30 * time.Second,
		Configure: func(o *server.Options) {
			o.ServerName = *name
			if *clusterPort == 0 {
				return
			}
			o.Cluster = server.ClusterOpts{Name: "loomtest", Host: "127.0.0.1", Port: *clusterPort}
			for r := range strings.SplitSeq(*routes, ",") {
				if u, err := url.Parse(strings.TrimSpace(r)); err == nil && u.Host != "" {
					o.Routes = append(o.Routes, u)
				}
			}
		},
	})
	if err != nil {
		return err
	}
	fmt.Println("ready", ns.ClientURL())
	<-ctx.Done()
	ns.Shutdown()
	return nil
}

// runEtcd runs one member of an etcd cluster, with the fast election
// timing of the tests; started again on the same directory it rejoins.
func runEtcd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("etcd", flag.ExitOnError)
	name := fs.String("name", "e1", "member name")
	dir := fs.String("dir", "", "data directory (required)")
	clientPort := fs.Int("client-port", 2379, "client port")
	peerPort := fs.Int("peer-port", 2380, "peer port")
	initial := fs.String("initial-cluster", "", "name=peer URL of every member, comma-separated")
	_ = fs.Parse(args)
	if *dir == "" || *initial == "" {
		return errors.New("etcd: -dir and -initial-cluster are required")
	}
	srv, err := etcdserver.Start(etcdserver.Options{
		Name: *name, Dir: *dir, ClientPort: *clientPort, PeerPort: *peerPort,
		TickMs: 20, ElectionMs: 200, NoFsync: true, ReadyTimeout: 60 * time.Second,
		Configure: func(c *embed.Config) {
			c.InitialCluster = *initial
			c.InitialClusterToken = "loomtest"
		},
	})
	if err != nil {
		return err
	}
	fmt.Println("ready", srv.ClientURL())
	<-ctx.Done()
	srv.Close()
	return nil
}

// open connects with Loom's configuration and opens queue name.
func open(ctx context.Context, name string, ackWait time.Duration) (*workqueue.Queue[Job], func(), error) {
	loaded, err := config.Load()
	if err != nil {
		return nil, nil, err
	}
	cfg := loaded.Config
	nc, err := natsconn.Connect(ctx, cfg.NATS)
	if err != nil {
		return nil, nil, err
	}
	qc := workqueue.ConfigFrom(cfg.Queue, name)
	qc.AutoID = true // a batch retried through an outage is stored once
	if ackWait > 0 {
		qc.AckWait = ackWait
	}
	// Creating the queue races the cluster's leader election: retry.
	var q *workqueue.Queue[Job]
	for {
		q, err = workqueue.New[Job](ctx, nc, qc)
		if err == nil || ctx.Err() != nil {
			break
		}
		fmt.Fprintln(os.Stderr, "queuetest: opening the queue, retrying:", err)
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return q, func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = q.Shutdown(cctx)
		nc.Close()
	}, nil
}

func produce(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("produce", flag.ExitOnError)
	name := fs.String("queue", "faults", "queue name")
	jobs := fs.Int("jobs", 1000, "jobs to enqueue")
	start := fs.Int("start", 0, "id of the first job")
	batch := fs.Int("batch", 500, "jobs per EnqueueBatch")
	_ = fs.Parse(args)
	q, closeQ, err := open(ctx, *name, 0)
	if err != nil {
		return err
	}
	defer closeQ()
	pad := make([]byte, 64)
	begin := time.Now()
	for i := *start; i < *start+*jobs; i += *batch {
		n := min(*batch, *start+*jobs-i)
		b := make([]Job, n)
		for j := range b {
			b[j] = Job{ID: i + j, Pad: pad}
		}
		// Each job has a unique message id (AutoID), so a batch retried
		// after a server restart is stored once; keep trying until it is.
		for {
			bctx, cancel := context.WithTimeout(ctx, 60*time.Second)
			err := q.EnqueueBatch(bctx, b)
			cancel()
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return err
			}
			fmt.Fprintln(os.Stderr, "queuetest: batch failed, retrying:", err)
			time.Sleep(100 * time.Millisecond)
		}
	}
	fmt.Printf("enqueued %d in %s\n", *jobs, time.Since(begin).Round(time.Millisecond))
	return nil
}

func consume(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("consume", flag.ExitOnError)
	name := fs.String("queue", "faults", "queue name")
	concurrency := fs.Int("concurrency", 16, "jobs handled at once")
	ackWait := fs.Duration("ack-wait", 0, "ack wait; 0 takes queue.ack_wait")
	_ = fs.Parse(args)
	q, closeQ, err := open(ctx, *name, *ackWait)
	if err != nil {
		return err
	}
	defer closeQ()
	// One write per job, unbuffered: what was printed survives SIGKILL.
	var mu sync.Mutex
	out := bufio.NewWriterSize(os.Stdout, 64)
	c, err := q.Consume(workqueue.HandlerFunc[Job](func(ctx context.Context, j *workqueue.Job[Job]) error {
		mu.Lock()
		defer mu.Unlock()
		out.WriteString("done " + strconv.Itoa(j.Value.ID) + " " + strconv.Itoa(j.Deliveries) + "\n")
		return out.Flush()
	}), workqueue.WithConcurrency(*concurrency))
	if err != nil {
		return err
	}
	fmt.Println("consuming", *name)
	select {
	case <-ctx.Done():
	case <-c.Done():
		return c.Err()
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}
