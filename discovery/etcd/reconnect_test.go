package etcd

import (
	"testing"
	"time"

	"google.golang.org/grpc/connectivity"

	"github.com/loomrt/loom/internal/testutil"
)

// TestANewDiscoveryDoesNotTakeItsFirstConnectionForAReconnect: gRPC lets
// calls through a new connection (New's lease grant) a moment before it
// reports the connection ready. A Discovery that took that moment for a
// lost connection signalled a reconnect as soon as the state caught up,
// and every watch started meanwhile read its records again, sending what
// had changed since in key order rather than in the order it happened
// (the conformance suite saw the Added of a record registered second
// before the one registered first). The connection never dropped here:
// no reconnect may be signalled.
func TestANewDiscoveryDoesNotTakeItsFirstConnectionForAReconnect(t *testing.T) {
	srv := startEtcd(t, fast)
	const n = 300
	spurious := 0
	for range n {
		d, err := New(t.Context(), Config{Endpoints: []string{srv.ClientURL()}, DialTimeout: 5 * time.Second, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		reconnected := d.reconnected()
		// Let the state catch up, then stop the Discovery: Close waits
		// for the goroutine that would signal a reconnect.
		conn := d.cli.ActiveConnection()
		for s := conn.GetState(); s != connectivity.Ready; s = conn.GetState() {
			if !conn.WaitForStateChange(testutil.Timeout(t, 5*time.Second), s) {
				t.Fatalf("the connection to etcd is %v 5s after New", s)
			}
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-reconnected:
			spurious++
		default:
		}
	}
	if spurious > 0 {
		t.Fatalf("%d of %d new Discoveries signalled a reconnect though their connection never dropped", spurious, n)
	}
}
