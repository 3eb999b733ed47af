package zmtp

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/loomrt/loom/internal/testutil"
)

// seqMessage is a message on topic whose payload is seq, padded to size.
func seqMessage(topic string, seq, size int) []byte {
	payload := make([]byte, max(size, 8))
	binary.BigEndian.PutUint64(payload, uint64(seq))
	return AppendMessage(nil, []byte(topic), payload)
}

// A peer's writer runs only while something waits to be written, so a
// sender that pauses starts a new one each time: messages keep the order
// they were sent in, per sender, and none is lost, whether the writer
// ended between them (after a Drain) or was ending as they were queued.
func TestMessagesKeepTheirOrderAcrossWriterRestarts(t *testing.T) {
	const senders, perSender = 2, 3000
	var mu sync.Mutex
	got := make(map[string][]int)
	pub, sub := pubSub(t, Options{}, func(parts [][]byte) {
		mu.Lock()
		got[string(parts[0])] = append(got[string(parts[0])], int(binary.BigEndian.Uint64(parts[1])))
		mu.Unlock()
	})
	sub.Subscribe(nil)
	testutil.Eventually(t, 10*time.Second, "the subscription", func() bool { return pub.Subscribers(nil) == 1 })
	var wg sync.WaitGroup
	for s := range senders {
		topic := fmt.Sprintf("s%d", s)
		wg.Go(func() {
			for i := 0; i < perSender; {
				// Bursts of 1 to 37 messages; one sender waits for the
				// writer to end after some of them (Drain returns once
				// it has), the other does not wait for it.
				for n := 1 + i%37; n > 0 && i < perSender; n-- {
					if q, _ := pub.Send([]byte(topic), seqMessage(topic, i, i%300)); q != 1 {
						t.Errorf("%s: message %d queued for %d peers, want 1", topic, i, q)
						return
					}
					i++
				}
				if s == 0 && i%3 == 0 {
					if err := pub.Drain(testutil.Timeout(t, 10*time.Second)); err != nil {
						t.Errorf("drain: %v", err)
						return
					}
				}
				runtime.Gosched() // lets the writer catch up, and end
			}
			// Nothing is left queued with no writer to write it.
			if err := pub.Drain(testutil.Timeout(t, 10*time.Second)); err != nil {
				t.Errorf("%s: drain after the last message: %v", topic, err)
			}
		})
	}
	wg.Wait()
	testutil.Eventually(t, 10*time.Second, "every message", func() bool {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, seqs := range got {
			n += len(seqs)
		}
		return n >= senders*perSender
	})
	mu.Lock()
	defer mu.Unlock()
	for s := range senders {
		seqs := got[fmt.Sprintf("s%d", s)]
		if len(seqs) != perSender {
			t.Fatalf("sender %d: %d messages arrived, want %d", s, len(seqs), perSender)
		}
		for i, seq := range seqs {
			if seq != i {
				t.Fatalf("sender %d: message %d arrived as number %d", s, seq, i)
			}
		}
	}
	if pub.Dropped() != 0 {
		t.Fatalf("%d messages dropped with queues far from full", pub.Dropped())
	}
}

// A subscriber that stops reading fills its queue; what is sent to it
// then is dropped and counted, and once it reads again it gets exactly the
// messages that were queued for it, in order, the writer having ended and
// started again between them.
func TestASlowPeerGetsWhatWasQueuedInOrderAndTheRestIsCounted(t *testing.T) {
	release := make(chan struct{})
	released := sync.OnceFunc(func() { close(release) })
	defer released()
	var mu sync.Mutex
	var got []int
	pub, sub := pubSub(t, Options{SendQueue: 16}, func(parts [][]byte) {
		<-release
		mu.Lock()
		got = append(got, int(binary.BigEndian.Uint64(parts[1])))
		mu.Unlock()
	})
	sub.Subscribe(nil)
	testutil.Eventually(t, 10*time.Second, "the subscription", func() bool { return pub.Subscribers(nil) == 1 })
	var queued []int
	dropped, seq := 0, 0
	send := func() {
		q, d := pub.Send([]byte("t"), seqMessage("t", seq, 64<<10))
		if q == 1 {
			queued = append(queued, seq)
		}
		dropped += d
		seq++
	}
	// Until 100 messages are dropped: the queue is full, the writer stuck.
	for dropped < 100 {
		send()
		if seq > 1<<16 {
			t.Fatal("a subscriber that does not read never made the publisher drop")
		}
	}
	released()
	if err := pub.Drain(testutil.Timeout(t, 30*time.Second)); err != nil {
		t.Fatalf("drain once the subscriber reads: %v", err)
	}
	// Each of these starts a writer that ends once it is written.
	for range 20 {
		send()
		if err := pub.Drain(testutil.Timeout(t, 10*time.Second)); err != nil {
			t.Fatalf("drain: %v", err)
		}
	}
	testutil.Eventually(t, 30*time.Second, "every queued message", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) >= len(queued)
	})
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(got) != fmt.Sprint(queued) {
		t.Fatalf("the subscriber got %d messages, %d were queued for it; first differences in\ngot    %v\nqueued %v",
			len(got), len(queued), got[:min(len(got), 40)], queued[:min(len(queued), 40)])
	}
	if peers := pub.Peers(); len(peers) != 1 || pub.Dropped() != uint64(dropped) || peers[0].Dropped() != uint64(dropped) {
		t.Fatalf("Send reported %d dropped; the socket counts %d, the peer %v", dropped, pub.Dropped(), peers)
	}
	t.Logf("%d messages queued, %d dropped", len(queued), dropped)
}

// Peers that go away, and a socket that closes, while messages are being
// queued to them (so while their writers start and end) leave no
// goroutine behind and do not hold Close up.
func TestClosingWhileWritersStartLeavesNoGoroutine(t *testing.T) {
	for round := range 20 {
		s := NewSocket(Options{Type: PUB, SendQueue: 64})
		addr, err := s.Listen("tcp://127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		const peers = 8
		var conns []net.Conn
		for i := range peers {
			p := dialRaw(t, addr, true)
			if _, err := p.c.Write(AppendSubscription(nil, nil, true)); err != nil {
				t.Fatal(err)
			}
			conns = append(conns, p.c)
			testutil.Eventually(t, 10*time.Second, "the subscriptions", func() bool { return s.Subscribers(nil) == i+1 })
		}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			msg := seqMessage("t", 0, round*10)
			for {
				select {
				case <-stop:
					return
				default:
				}
				s.Send([]byte("t"), msg)
			}
		})
		// Half the peers hang up, then the socket closes, as messages
		// are queued.
		for _, c := range conns[:peers/2] {
			c.Close()
		}
		testutil.Eventually(t, 10*time.Second, "the peers that hung up to be gone", func() bool { return len(s.Peers()) == peers-peers/2 })
		closed := make(chan struct{})
		go func() {
			s.Close()
			close(closed)
		}()
		select {
		case <-closed:
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: Close did not return within 10s while messages were queued", round)
		}
		if q, _ := s.Send([]byte("t"), seqMessage("t", 0, 0)); q != 0 {
			t.Fatalf("round %d: a message was queued for %d peers of a closed socket", round, q)
		}
		close(stop)
		wg.Wait()
		for _, c := range conns {
			c.Close()
		}
	}
	goleak.VerifyNone(t)
}

// A peer whose queue filled once (a subscriber that stalled, then caught
// up) does not keep the queue's arrays once it is written: with 8192
// entries or more they held 300 to 450 KiB a peer (the batch written
// last alone, 192 KiB); 25 to 60 KiB more stay in use now.
func TestAPeerThatCaughtUpDoesNotKeepItsQueuesArrays(t *testing.T) {
	pub := NewSocket(Options{Type: PUB})
	defer pub.Close()
	addr, err := pub.Listen("tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := subscriber(t, pub, addr)
	if _, err := c.Write(AppendSubscription(nil, nil, true)); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the subscription", func() bool { return pub.Subscribers(nil) == 1 })
	msg := seqMessage("t", 0, 1000)
	h0 := heapInUse()
	// The peer reads nothing until its queue is full.
	queued := 0
	for pub.Dropped() == 0 {
		q, _ := pub.Send([]byte("t"), msg)
		queued += q
		if queued > 1<<20 {
			t.Fatal("a subscriber that does not read never made the publisher drop")
		}
	}
	// Then it reads all that was queued, and the writer ends.
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.CopyN(io.Discard, c, int64(queued*len(msg))); err != nil {
		t.Fatalf("reading the %d messages queued: %v", queued, err)
	}
	if err := pub.Drain(testutil.Timeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	kept := int64(heapInUse()) - int64(h0)
	t.Logf("after %d messages queued and written, the peer keeps %d bytes more", queued, kept)
	if kept > 128<<10 {
		t.Errorf("a peer that caught up after its queue of %d filled keeps %d bytes more, want under 128 KiB", DefaultSendQueue, kept)
	}
}
