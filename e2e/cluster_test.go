package e2e

import (
	"context"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/config"
	_ "github.com/loomrt/loom/discovery/etcd" // registers the etcd backend
	"github.com/loomrt/loom/events"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/workqueue"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// etcdMember is one member of a 3-node etcd cluster, a queuetest etcd
// process that can be killed and started again on its ports and data.
type etcdMember struct {
	t                *testing.T
	name, dir        string
	clientPort, peer int
	initial          string
	proc             *proc
}

func (m *etcdMember) start() {
	m.t.Helper()
	m.proc = start(m.t, nil, "queuetest", "etcd", "-name", m.name, "-dir", m.dir,
		"-client-port", strconv.Itoa(m.clientPort), "-peer-port", strconv.Itoa(m.peer), "-initial-cluster", m.initial)
	m.proc.waitLine("ready ", 60*time.Second)
}

func (m *etcdMember) url() string { return fmt.Sprintf("http://127.0.0.1:%d", m.clientPort) }

// startEtcdCluster starts three members, which wait for each other.
func startEtcdCluster(t *testing.T) []*etcdMember {
	t.Helper()
	var ms []*etcdMember
	var initial []string
	for i := range 3 {
		m := &etcdMember{t: t, name: fmt.Sprintf("e%d", i+1), dir: t.TempDir(), clientPort: testutil.FreePort(t), peer: testutil.FreePort(t)}
		initial = append(initial, fmt.Sprintf("%s=http://127.0.0.1:%d", m.name, m.peer))
		ms = append(ms, m)
	}
	var wg sync.WaitGroup
	for _, m := range ms {
		m.initial = strings.Join(initial, ",")
		wg.Go(m.start)
	}
	wg.Wait()
	return ms
}

// etcdLeader returns the member that leads the cluster, as the members
// report it.
func etcdLeader(t *testing.T, ms []*etcdMember) *etcdMember {
	t.Helper()
	var eps []string
	for _, m := range ms {
		eps = append(eps, m.url())
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var leader *etcdMember
	waitFor(t, 20*time.Second, "an etcd leader", func() bool {
		for _, m := range ms {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			st, err := c.Status(ctx, m.url())
			cancel()
			if err == nil && st.Leader == st.Header.MemberId {
				leader = m
				return true
			}
		}
		return false
	})
	return leader
}

// phase counts what happened in one stretch of the run.
type phase struct {
	name                 string
	calls, callFailures  int64
	maxCallGap           time.Duration
	published, delivered int64
	enqueued, handled    int64
}

// TestClusterSurvivesLosingANodeOfEach runs components on a 3-node etcd
// cluster and a 3-node NATS cluster (JetStream, the queue at R3), each node
// a process, under steady calls, events and jobs; it SIGKILLs one node of
// each (the etcd leader and the queue stream's leader), registers a
// new server meanwhile, then restarts both: discovery, the request plane,
// events and the queue keep working, no job is lost and every event is
// counted (delivered, dropped or lost).
func TestClusterSurvivesLosingANodeOfEach(t *testing.T) {
	queuetestBin(t)
	begin := time.Now()
	members := startEtcdCluster(t)
	var etcdURLs []string
	for _, m := range members {
		etcdURLs = append(etcdURLs, m.url())
	}

	cports := []int{testutil.FreePort(t), testutil.FreePort(t), testutil.FreePort(t)}
	var nodes []*natsNode
	var natsURLs []string
	for i := range 3 {
		var routes []string
		for j, p := range cports {
			if j != i {
				routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", p))
			}
		}
		n := newNode(t, fmt.Sprintf("n%d", i+1), cports[i], routes)
		nodes = append(nodes, n)
		natsURLs = append(natsURLs, n.url())
	}
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Go(n.start) // the servers wait for each other's routes
	}
	wg.Wait()
	all := strings.Join(natsURLs, ",")
	connect := func() *nats.Conn {
		nc, err := nats.Connect(all, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	admin := connect()
	js, _ := jetstream.New(admin)
	// JetStream answers once it has a meta leader, but an R3 stream can be
	// placed only when all three servers are current peers: probe with one.
	waitFor(t, 60*time.Second, "JetStream in the cluster able to place an R3 stream", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "cluster_probe", Subjects: []string{"cluster_probe"}, Replicas: 3})
		return err == nil
	})
	if err := js.DeleteStream(context.Background(), "cluster_probe"); err != nil {
		t.Fatalf("deleting the probe stream: %v", err)
	}

	// The queue, at R3; its stream's leader is the NATS node to kill.
	qcfg := workqueue.DefaultConfig("cluster_jobs")
	qcfg.Replicas = 3
	qcfg.AckWait = 2 * time.Second
	qcfg.EnqueueTimeout = 5 * time.Second
	qcfg.Logger = quiet
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	producerQ, err := workqueue.New[int](ctx, connect(), qcfg)
	if err != nil {
		t.Fatal(err)
	}
	consumerQ, err := workqueue.New[int](ctx, connect(), qcfg)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, "cluster_jobs")
	if err != nil {
		t.Fatal(err)
	}
	var natsVictim *natsNode
	for _, n := range nodes {
		if n.name == st.CachedInfo().Cluster.Leader {
			natsVictim = n
		}
	}
	if natsVictim == nil {
		t.Fatalf("the queue stream's leader %q is none of the nodes", st.CachedInfo().Cluster.Leader)
	}

	// Runtimes: servers and a caller on etcd discovery; the events
	// subscriber connects to the node that will be killed (it learns the
	// others from it), the publisher to any.
	runtime := func(natsURL string) *loom.Runtime {
		cfg := config.Default()
		cfg.NATS.URL = natsURL
		cfg.NATS.ReconnectWait = 100 * time.Millisecond
		cfg.Discovery.Backend = "etcd"
		cfg.Discovery.EtcdEndpoints = etcdURLs
		cfg.Discovery.LeaseTTL = 5 * time.Second
		return startRuntime(ctx, t, loom.WithConfig(cfg), loom.WithLogger(quiet))
	}
	plusOne := loom.EngineFunc[int, int](func(ctx context.Context, x int) iter.Seq2[int, error] {
		return func(yield func(int, error) bool) { yield(x+1, nil) }
	})
	serve := func(rt *loom.Runtime) {
		ep, err := rt.Endpoint("cluster/calc/inc")
		if err != nil {
			t.Fatal(err)
		}
		if err := loom.Serve(ctx, ep, plusOne); err != nil {
			t.Fatal(err)
		}
	}
	server1, server2 := runtime(all), runtime(all)
	serve(server1)
	serve(server2)
	callerRT := runtime(all)
	cep, err := callerRT.Endpoint("cluster/calc/inc")
	if err != nil {
		t.Fatal(err)
	}
	client, err := loom.NewClient[int, int](ctx, cep)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if err := client.WaitForInstances(ctx, 2); err != nil {
		t.Fatal(err)
	}
	subRT := runtime(natsVictim.url())
	scope := events.Scope{Namespace: "cluster", Component: "ticker"}
	sub, err := events.Subscribe[int](ctx, subRT, scope, "ticks", events.WithBuffer(1<<16, events.DropOldest))
	if err != nil {
		t.Fatal(err)
	}
	pub, err := events.NewPublisher[int](ctx, server1, scope, "ticks")
	if err != nil {
		t.Fatal(err)
	}

	// The load: a caller, a publisher, a producer and a consumer, each
	// counting into the current phase.
	var mu sync.Mutex
	cur := &phase{name: "steady"}
	phases := []*phase{cur}
	next := func(name string) {
		mu.Lock()
		defer mu.Unlock()
		cur = &phase{name: name}
		phases = append(phases, cur)
	}
	add := func(f func(p *phase)) {
		mu.Lock()
		f(cur)
		mu.Unlock()
	}
	stop := make(chan struct{})
	var load sync.WaitGroup
	load.Go(func() { // calls
		last := time.Now()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
			ok := false
			for v, err := range client.Generate(cctx, i) {
				ok = err == nil && v == i+1
			}
			ccancel()
			now := time.Now()
			add(func(p *phase) {
				if !ok {
					p.callFailures++
					return
				}
				p.calls++
				p.maxCallGap = max(p.maxCallGap, now.Sub(last))
			})
			if ok {
				last = now
			}
			time.Sleep(time.Millisecond)
		}
	})
	var published atomic.Int64
	load.Go(func() { // events
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
			if pub.Publish(ctx, i) == nil {
				published.Add(1)
				add(func(p *phase) { p.published++ })
			}
		}
	})
	var delivered atomic.Int64
	var readers sync.WaitGroup
	readers.Go(func() {
		for _, err := range sub.Events(ctx) {
			if err != nil {
				return
			}
			delivered.Add(1)
			add(func(p *phase) { p.delivered++ })
		}
	})
	var enqueued, enqueueRetries atomic.Int64
	load.Go(func() { // jobs, each retried with its key until the queue has it
		for i := 0; ; i++ {
			for {
				select {
				case <-stop:
					return
				default:
				}
				ectx, ecancel := context.WithTimeout(ctx, 5*time.Second)
				err := producerQ.Enqueue(ectx, i, workqueue.WithKey(fmt.Sprintf("job-%d", i)))
				ecancel()
				if err == nil {
					break
				}
				enqueueRetries.Add(1)
				time.Sleep(50 * time.Millisecond)
			}
			enqueued.Store(int64(i + 1))
			add(func(p *phase) { p.enqueued++ })
			time.Sleep(2 * time.Millisecond)
		}
	})
	var hmu sync.Mutex
	handled := map[int]int{}
	consumer, err := consumerQ.Consume(workqueue.HandlerFunc[int](func(ctx context.Context, j *workqueue.Job[int]) error {
		hmu.Lock()
		handled[j.Value]++
		first := handled[j.Value] == 1
		hmu.Unlock()
		if first {
			add(func(p *phase) { p.handled++ })
		}
		return nil
	}), workqueue.WithConcurrency(4))
	if err != nil {
		t.Fatal(err)
	}
	stopLoad := func() {
		select {
		case <-stop:
		default:
			close(stop)
			load.Wait()
		}
	}
	defer func() {
		stopLoad()
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		_ = consumer.Shutdown(sctx)
		_ = sub.Close()
		readers.Wait()
	}()
	// steady waits until the load has made a stretch of progress in the
	// current phase: calls, events and jobs all moving.
	steady := func() {
		t.Helper()
		waitFor(t, 30*time.Second, "a stretch of calls, events and jobs", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return cur.calls >= 800 && cur.delivered >= 800 && cur.handled >= 300
		})
	}
	steady()

	// Kill the etcd leader and the queue stream's leader.
	next("one node of each down")
	etcdVictim := etcdLeader(t, members)
	natsVictim.proc.signal(syscall.SIGKILL)
	etcdVictim.proc.signal(syscall.SIGKILL)
	killed := time.Now()
	t.Logf("SIGKILLed etcd member %s (the leader) and NATS node %s (the queue stream's leader), %s after the start",
		etcdVictim.name, natsVictim.name, killed.Sub(begin).Round(time.Millisecond))
	// Discovery works on two members: a new server registers (at once,
	// while the others elect a leader) and the caller routes to it.
	server3 := runtime(all)
	serve(server3)
	var rest []*etcdMember
	for _, m := range members {
		if m != etcdVictim {
			rest = append(rest, m)
		}
	}
	t.Logf("etcd member %s leads; a new server registered %s after the kill",
		etcdLeader(t, rest).name, time.Since(killed).Round(time.Millisecond))
	waitFor(t, 20*time.Second, "the caller seeing the server registered during the outage", func() bool {
		return len(client.Instances()) == 3
	})
	seen := time.Since(killed)
	var direct int
	dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
	for v, err := range client.Direct(server3.ID()).Generate(dctx, 41) {
		if err != nil {
			t.Fatalf("a call to the server registered during the outage: %v", err)
		}
		direct = v
	}
	dcancel()
	if direct != 42 {
		t.Fatalf("the server registered during the outage answered %d, want 42", direct)
	}
	steady()

	// Restart both.
	next("restarted")
	restartAt := time.Now()
	etcdVictim.start()
	etcdBack := time.Since(restartAt)
	natsVictim.start()
	waitFor(t, 30*time.Second, "the queue stream back at 3 current replicas", func() bool {
		ictx, icancel := context.WithTimeout(ctx, time.Second)
		defer icancel()
		s, err := js.Stream(ictx, "cluster_jobs")
		if err != nil {
			return false
		}
		ci := s.CachedInfo().Cluster
		if ci == nil || len(ci.Replicas) != 2 {
			return false
		}
		for _, r := range ci.Replicas {
			if !r.Current || r.Offline {
				return false
			}
		}
		return true
	})
	natsBack := time.Since(restartAt)
	// The restarted etcd member has the records, read from its own data.
	ec, err := clientv3.New(clientv3.Config{Endpoints: []string{etcdVictim.url()}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer ec.Close()
	waitFor(t, 20*time.Second, "the restarted etcd member holding the 3 instance records", func() bool {
		gctx, gcancel := context.WithTimeout(ctx, time.Second)
		defer gcancel()
		r, err := ec.Get(gctx, "v1/instances/cluster/calc/inc/", clientv3.WithPrefix(), clientv3.WithSerializable())
		return err == nil && len(r.Kvs) == 3
	})
	steady()

	// Stop the load; everything must be accounted for.
	stopLoad()
	next("drain")
	want := int(enqueued.Load())
	waitFor(t, 30*time.Second, "every enqueued job handled", func() bool {
		hmu.Lock()
		defer hmu.Unlock()
		return len(handled) == want
	})
	dups := 0
	hmu.Lock()
	for id, n := range handled {
		if id < 0 || id >= want {
			t.Errorf("handled job %d, never enqueued", id)
		}
		dups += n - 1
	}
	hmu.Unlock()
	fctx, fcancel := context.WithTimeout(ctx, 10*time.Second)
	if err := pub.Flush(fctx); err != nil {
		t.Errorf("flush the event publisher: %v", err)
	}
	fcancel()
	var es events.Stats
	waitFor(t, 20*time.Second, "every published event delivered, dropped or counted lost", func() bool {
		es = sub.Stats()
		return es.Buffered == 0 && es.Delivered+es.Dropped+es.Lost == uint64(published.Load())
	})

	var calls, failures int64
	for _, p := range phases {
		calls += p.calls
		failures += p.callFailures
		t.Logf("%-22s calls %6d ok, %d failed, longest gap between successes %5s; events published %6d, delivered %6d; jobs enqueued %5d, handled %5d",
			p.name, p.calls, p.callFailures, p.maxCallGap.Round(time.Millisecond), p.published, p.delivered, p.enqueued, p.handled)
	}
	t.Logf("discovery: the server registered with one etcd member down was routed to %s after the kill; etcd member back in %s, the NATS node and its replicas current in %s",
		seen.Round(time.Millisecond), etcdBack.Round(time.Millisecond), natsBack.Round(time.Millisecond))
	t.Logf("jobs: %d enqueued (%d enqueue retries), %d handled, 0 lost, %d duplicates; events: %d published = %d delivered + %d dropped + %d lost; calls: %d ok, %d failed; %s in all",
		want, enqueueRetries.Load(), want, dups, published.Load(), es.Delivered, es.Dropped, es.Lost, calls, failures, time.Since(begin).Round(time.Millisecond))
	if failures != 0 {
		t.Errorf("%d calls failed; the request plane needs neither NATS nor etcd's leader", failures)
	}
}
