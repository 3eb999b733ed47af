package main

import (
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"strconv"
	"strings"

	"github.com/loomrt/loom/events"
)

// defaultZMQBrokerPorts are the ports of `loom up --zmq-broker` alone:
// publishers connect to the first (the broker's XSUB side), subscribers
// to the second (its XPUB side).
const defaultZMQBrokerPorts = "5557,5558"

// brokerPorts is what --zmq-broker's value looks like.
var brokerPorts = regexp.MustCompile(`^\s*\d+\s*,\s*\d+\s*$`)

// parseBrokerPorts reads --zmq-broker's value: the publishers' port, then
// the subscribers'.
func parseBrokerPorts(spec string) (pub, sub int, err error) {
	pubPort, subPort, ok := strings.Cut(spec, ",")
	pp, err1 := strconv.Atoi(strings.TrimSpace(pubPort))
	sp, err2 := strconv.Atoi(strings.TrimSpace(subPort))
	if !ok || err1 != nil || err2 != nil || pp < 0 || sp < 0 || pp > 65535 || sp > 65535 {
		return 0, 0, fmt.Errorf("--zmq-broker %q: want two ports, publishers then subscribers, like %s", spec, defaultZMQBrokerPorts)
	}
	return pp, sp, nil
}

// checkBrokerPeers reads --zmq-broker-max-peers: 1 or more, or -1 for no
// limit (as events.zmq.max_peers), and only with --zmq-broker.
func checkBrokerPeers(n int, broker, set bool) error {
	if set && !broker {
		return fmt.Errorf("--zmq-broker-max-peers %d: it limits the broker of --zmq-broker, which is not asked for; add --zmq-broker", n)
	}
	if n < 1 && n != -1 {
		return fmt.Errorf("--zmq-broker-max-peers %d: want 1 or more connections on each side, or -1 for no limit", n)
	}
	return nil
}

// startZMQBroker runs an events.Broker on host at the ports spec names,
// holding at most maxPeers connections on each side (-1: no limit), and
// returns the environment lines that send components' events through it.
func startZMQBroker(host, spec string, maxPeers int, log *slog.Logger) ([][2]string, func(), error) {
	pp, sp, err := parseBrokerPorts(spec)
	if err != nil {
		return nil, nil, err
	}
	b, err := events.StartBroker(events.BrokerConfig{
		PubEndpoint:     "tcp://" + net.JoinHostPort(host, strconv.Itoa(pp)),
		SubEndpoint:     "tcp://" + net.JoinHostPort(host, strconv.Itoa(sp)),
		MaxPeers:        maxPeers,
		MaxPeersSetting: "--zmq-broker-max-peers",
		Logger:          log,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("%w (another loom up running? choose other ports with --zmq-broker=PUB,SUB)", err)
	}
	env := [][2]string{
		{"LOOM_EVENTS_TRANSPORT", events.ZMQ},
		{"LOOM_EVENTS_ZMQ_BROKER_PUB", b.PubEndpoint()},
		{"LOOM_EVENTS_ZMQ_BROKER_SUB", b.SubEndpoint()},
	}
	return env, func() { _ = b.Close() }, nil
}
