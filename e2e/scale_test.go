package e2e

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/discovery/etcd"
	"github.com/loomrt/loom/discovery/natskv"
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/embedded/etcdserver"
	"github.com/loomrt/loom/internal/testutil"
)

// TestAThousandInstancesAndAWatcher registers 1,000 instances from 10
// clients against a real server and measures how long each took to reach a
// watcher on another client, and what holding them cost.
func TestAThousandInstancesAndAWatcher(t *testing.T) {
	if testing.Short() {
		t.Skip("registers 1,000 instances")
	}
	const clients, perClient = 10, 100
	backends := map[string]func(t *testing.T) func() discovery.Discovery{
		"etcd": func(t *testing.T) func() discovery.Discovery {
			srv, err := etcdserver.Start(etcdserver.Options{TickMs: 10, ElectionMs: 50, NoFsync: true})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(srv.Close)
			return func() discovery.Discovery {
				d, err := etcd.New(context.Background(), etcd.Config{Endpoints: []string{srv.ClientURL()}})
				if err != nil {
					t.Fatal(err)
				}
				return d
			}
		},
		"natskv": func(t *testing.T) func() discovery.Discovery {
			ns := testutil.StartNATS(t, embedded.NATSOptions{JetStream: true})
			return func() discovery.Discovery {
				nc, err := nats.Connect(ns.ClientURL())
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(nc.Close)
				d, err := natskv.New(context.Background(), nc, natskv.Config{})
				if err != nil {
					t.Fatal(err)
				}
				return d
			}
		},
	}
	for _, name := range []string{"etcd", "natskv"} {
		t.Run(name, func(t *testing.T) {
			connect := backends[name](t)
			watcherD := connect()
			defer watcherD.Close()
			runtime.GC()
			var before runtime.MemStats
			runtime.ReadMemStats(&before)

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			events, err := watcherD.Watch(ctx, discovery.Query{Namespace: "scale"})
			if err != nil {
				t.Fatal(err)
			}
			if ev := <-events; ev.Kind != discovery.Synced {
				t.Fatalf("first event %v, want Synced on an empty store", ev.Kind)
			}
			var mu sync.Mutex
			started := map[uint64]time.Time{}
			seen := map[uint64]time.Duration{}
			all := make(chan struct{})
			go func() {
				for ev := range events {
					if ev.Kind != discovery.Added {
						continue
					}
					mu.Lock()
					if _, dup := seen[ev.Instance.ID]; dup {
						t.Errorf("instance %x added twice", ev.Instance.ID)
					}
					seen[ev.Instance.ID] = time.Since(started[ev.Instance.ID])
					n := len(seen)
					mu.Unlock()
					if n == clients*perClient {
						close(all)
					}
				}
			}()
			var regs []discovery.Discovery
			var wg sync.WaitGroup
			begin := time.Now()
			for c := range clients {
				d := connect()
				regs = append(regs, d)
				wg.Go(func() {
					for i := range perClient {
						id := uint64(c*perClient + i + 1)
						inst := discovery.Instance{Namespace: "scale", Component: "worker", Endpoint: "generate", ID: id,
							Transport: "tcp", Address: fmt.Sprintf("127.0.0.1:%d", 10000+id), Codec: "msgpack"}
						mu.Lock()
						started[id] = time.Now()
						mu.Unlock()
						if err := d.Register(context.Background(), inst); err != nil {
							t.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			registered := time.Since(begin)
			select {
			case <-all:
			case <-time.After(60 * time.Second):
				mu.Lock()
				t.Fatalf("the watcher saw %d of %d instances", len(seen), clients*perClient)
			}
			total := time.Since(begin)
			runtime.GC()
			var after runtime.MemStats
			runtime.ReadMemStats(&after)
			mu.Lock()
			lat := make([]time.Duration, 0, len(seen))
			for _, d := range seen {
				lat = append(lat, d)
			}
			mu.Unlock()
			slices.Sort(lat)
			list, err := watcherD.List(context.Background(), discovery.Query{Namespace: "scale"})
			if err != nil || len(list) != clients*perClient {
				t.Fatalf("List has %d instances (%v)", len(list), err)
			}
			t.Logf("%s: %d instances from %d clients registered in %s, all seen by the watcher after %s; register-to-Added latency p50 %s p99 %s max %s; heap in use +%.1f MiB for the process (servers, %d clients, watcher)",
				name, clients*perClient, clients, registered.Round(time.Millisecond), total.Round(time.Millisecond),
				lat[len(lat)/2].Round(10*time.Microsecond), lat[len(lat)*99/100].Round(10*time.Microsecond), lat[len(lat)-1].Round(10*time.Microsecond),
				float64(int64(after.HeapInuse)-int64(before.HeapInuse))/(1<<20), clients)
			cancel()
			for _, d := range regs {
				_ = d.Close()
			}
		})
	}
}
