package jsconsume

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
)

// Headers Loom adds to a dead-lettered copy of a message. The copy keeps
// the original body and headers (but not its Nats-Msg-Id, kept in
// HeaderMsgID, so that a requeued copy is not dropped as a duplicate).
const (
	HeaderError      = "Loom-Dlq-Error"      // the last error, one line, at most 1 KiB
	HeaderReason     = "Loom-Dlq-Reason"     // failed, permanent, decode, payload or expired
	HeaderDeliveries = "Loom-Dlq-Deliveries" // deliveries made, a decimal count
	HeaderQueue      = "Loom-Dlq-Queue"      // the stream the message came from
	HeaderGroup      = "Loom-Dlq-Group"      // the consumer that gave up on it
	HeaderSubject    = "Loom-Dlq-Subject"    // the subject it was published to
	HeaderStreamSeq  = "Loom-Dlq-Stream-Seq" // its sequence in that stream
	HeaderTime       = "Loom-Dlq-Time"       // when it was dead-lettered, RFC 3339
	HeaderMsgID      = "Loom-Dlq-Msg-Id"     // its Nats-Msg-Id, if it had one
	maxErrorHeader   = 1024
)

// DeadLetterInfo is what the headers of a dead-lettered message say.
type DeadLetterInfo struct {
	Queue, Group, Subject string
	Reason, Error         string
	Deliveries            int
	StreamSeq             uint64
	Time                  time.Time
	MsgID                 string
}

// Header returns the headers that describe info, to add to the copy.
func (info DeadLetterInfo) Header(h nats.Header) {
	h.Set(HeaderError, oneLine(info.Error, maxErrorHeader))
	h.Set(HeaderReason, info.Reason)
	h.Set(HeaderDeliveries, strconv.Itoa(info.Deliveries))
	h.Set(HeaderQueue, info.Queue)
	if info.Group != "" {
		h.Set(HeaderGroup, info.Group)
	}
	h.Set(HeaderSubject, info.Subject)
	h.Set(HeaderStreamSeq, strconv.FormatUint(info.StreamSeq, 10))
	h.Set(HeaderTime, info.Time.UTC().Format(time.RFC3339Nano))
	if info.MsgID != "" {
		h.Set(HeaderMsgID, info.MsgID)
	}
}

// ParseDeadLetter reads the headers of a dead-lettered message. It fails
// if the message is not one (no HeaderQueue) or a field is malformed;
// the texts are returned as they are.
func ParseDeadLetter(h nats.Header) (DeadLetterInfo, error) {
	info := DeadLetterInfo{
		Queue:   h.Get(HeaderQueue),
		Group:   h.Get(HeaderGroup),
		Subject: h.Get(HeaderSubject),
		Reason:  h.Get(HeaderReason),
		Error:   h.Get(HeaderError),
		MsgID:   h.Get(HeaderMsgID),
	}
	if info.Queue == "" {
		return info, fmt.Errorf("jsconsume: not a dead-lettered message: no %s header", HeaderQueue)
	}
	if v := h.Get(HeaderDeliveries); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return info, fmt.Errorf("jsconsume: %s %q is not a count", HeaderDeliveries, v)
		}
		info.Deliveries = n
	}
	if v := h.Get(HeaderStreamSeq); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return info, fmt.Errorf("jsconsume: %s %q is not a sequence number", HeaderStreamSeq, v)
		}
		info.StreamSeq = n
	}
	if v := h.Get(HeaderTime); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return info, fmt.Errorf("jsconsume: %s %q is not an RFC 3339 time", HeaderTime, v)
		}
		info.Time = t
	}
	return info, nil
}

// oneLine makes s fit a header value: no line breaks or control
// characters, valid UTF-8, at most max bytes.
func oneLine(s string, max int) string {
	s = strings.Map(func(r rune) rune {
		if r == utf8.RuneError || r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, "?"))
	if len(s) <= max {
		return s
	}
	cut := max - 3
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}
