package workqueue

import "strings"

// ackSubject reads the part of a JetStream ack subject that names the
// consumer, the narrowest prefix a NATS user's publish permission can
// grant a consumer's acks: for the form the server sends by default,
//
//	$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>
//
// it is "$JS.ACK.<stream>.<consumer>."; for the form a server with the
// js_ack_fc_v2 feature flag sends,
//
//	$JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>[.<token>...]
//
// it is "$JS.ACK.<domain>.<account hash>.<stream>.<consumer>.". ok is
// false for a subject of neither form. The subject comes from the server
// (in a refusal's text, or a delivery's reply subject), so nothing about it
// is taken on trust.
func ackSubject(subject string) (prefix, stream, consumer string, ok bool) {
	rest, found := strings.CutPrefix(subject, "$JS.ACK.")
	if !found {
		return "", "", "", false
	}
	tokens := strings.Split(rest, ".")
	var at int // where the stream token is
	switch n := len(tokens); {
	case n == 7:
		at = 0
	case n >= 9:
		at = 2
	default:
		return "", "", "", false
	}
	for _, t := range tokens {
		if t == "" {
			return "", "", "", false
		}
	}
	stream, consumer = tokens[at], tokens[at+1]
	prefix = "$JS.ACK." + strings.Join(tokens[:at+2], ".") + "."
	return prefix, stream, consumer, true
}
