package events

import (
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"

	"github.com/loomrt/loom/internal/zmtp"
)

// Broker is a ZeroMQ XSUB / XPUB proxy: publishers connect to its XSUB
// side (events.zmq.broker_pub), subscribers to its XPUB side
// (events.zmq.broker_sub), and every event goes through it. Subscriptions
// travel upstream, so a publisher only sends what someone subscribed to.
// Subscribers then need no discovery and publishers no listening port, at
// the price of one more hop. It speaks plain ZMTP 3, so libzmq publishers
// and subscribers can use it too; `loom up --zmq-broker` runs one.
type Broker struct {
	front, back          *zmtp.Socket
	pubAddr, subAddr     string
	forwarded, malformed atomic.Uint64
}

// BrokerConfig configures a Broker.
type BrokerConfig struct {
	// PubEndpoint is where publishers connect (the XSUB side), such as
	// "tcp://127.0.0.1:5557"; port 0 picks a free one.
	PubEndpoint string
	// SubEndpoint is where subscribers connect (the XPUB side).
	SubEndpoint string
	// SendQueue bounds the events queued for each subscriber; past it
	// events for that subscriber are dropped (it counts them as lost).
	// Default 8192.
	SendQueue int
	// MaxMessage bounds one message from a publisher, in bytes. Default
	// 1 MiB plus room for the subject.
	MaxMessage int
	// MaxPeers bounds the connections each side holds at once (those
	// still in the handshake included); one accepted beyond it is closed
	// at once. Default 4096 (as events.zmq.max_peers); negative: no
	// limit.
	MaxPeers int
	// MaxPeersSetting names the setting MaxPeers came from, such as a
	// command-line flag: the warning about a refused peer names it.
	// Default "BrokerConfig.MaxPeers".
	MaxPeersSetting string
	// Logger receives connection failures at debug level, and peers
	// refused beyond MaxPeers at warn level, at most once a second a side.
	Logger *slog.Logger
}

// StartBroker listens on both endpoints and forwards until Close.
func StartBroker(cfg BrokerConfig) (*Broker, error) {
	if cfg.MaxMessage <= 0 {
		cfg.MaxMessage = 1<<20 + FrameHeaderSize + frameOverhead
	}
	if cfg.MaxPeersSetting == "" {
		cfg.MaxPeersSetting = "BrokerConfig.MaxPeers"
	}
	b := &Broker{}
	b.back = zmtp.NewSocket(zmtp.Options{
		Type: zmtp.XPUB, SendQueue: cfg.SendQueue, MaxMessage: zmqSubscriptionLimit,
		MaxPeers: cfg.MaxPeers, MaxPeersSetting: cfg.MaxPeersSetting, Logger: cfg.Logger,
		OnSubscribe: func(_ *zmtp.Peer, prefix []byte, on bool) {
			if on {
				b.front.Subscribe(prefix)
			} else {
				b.front.Unsubscribe(prefix)
			}
		},
	})
	b.front = zmtp.NewSocket(zmtp.Options{
		Type: zmtp.XSUB, MaxMessage: cfg.MaxMessage,
		MaxPeers: cfg.MaxPeers, MaxPeersSetting: cfg.MaxPeersSetting, Logger: cfg.Logger,
		OnMessage: func(_ *zmtp.Peer, parts [][]byte) {
			if len(parts) == 0 {
				b.malformed.Add(1)
				return
			}
			wire := zmtp.AppendMessage(make([]byte, 0, zmtp.MessageSize(parts...)), parts...)
			b.back.Send(parts[0], wire)
			b.forwarded.Add(1)
		},
	})
	fail := func(which, ep string, err error) (*Broker, error) {
		b.Close()
		return nil, fmt.Errorf("events: broker %s endpoint %s: %w", which, ep, err)
	}
	addr, err := b.front.Listen(cfg.PubEndpoint)
	if err != nil {
		return fail("publisher", cfg.PubEndpoint, err)
	}
	b.pubAddr = "tcp://" + addr.(*net.TCPAddr).String()
	addr, err = b.back.Listen(cfg.SubEndpoint)
	if err != nil {
		return fail("subscriber", cfg.SubEndpoint, err)
	}
	b.subAddr = "tcp://" + addr.(*net.TCPAddr).String()
	return b, nil
}

// PubEndpoint returns the endpoint publishers connect to, with the port
// chosen.
func (b *Broker) PubEndpoint() string { return b.pubAddr }

// SubEndpoint returns the endpoint subscribers connect to.
func (b *Broker) SubEndpoint() string { return b.subAddr }

// BrokerStats counts a broker's peers and traffic.
type BrokerStats struct {
	Publishers, Subscribers int
	// Forwarded counts the messages received from publishers.
	Forwarded uint64
	// Dropped counts messages not queued for a subscriber whose queue was
	// full.
	Dropped uint64
	// Refused counts connections closed at accept, on either side,
	// because that side held BrokerConfig.MaxPeers.
	Refused uint64
}

// Stats returns the broker's counts now.
func (b *Broker) Stats() BrokerStats {
	return BrokerStats{
		Publishers:  len(b.front.Peers()),
		Subscribers: len(b.back.Peers()),
		Forwarded:   b.forwarded.Load(),
		Dropped:     b.back.Dropped(),
		Refused:     b.front.Refused() + b.back.Refused(),
	}
}

// Close stops the broker, disconnecting every peer, and waits for its
// goroutines.
func (b *Broker) Close() error {
	b.front.Close()
	return b.back.Close()
}
