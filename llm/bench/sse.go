package bench

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
)

// MaxEventSize bounds one Server-Sent Event's data: a server that sends
// more without ending the event gets ErrEventTooLarge instead of an
// unbounded allocation.
const MaxEventSize = 1 << 20

// ErrEventTooLarge is returned, or wrapped, for an event whose data
// exceeded MaxEventSize.
var ErrEventTooLarge = errors.New("bench: server-sent event larger than 1 MiB")

// SSEReader reads the data of Server-Sent Events (the text/event-stream
// format of the HTML standard) from a stream: lines "data: x" accumulate
// into an event that a blank line ends; comment lines (":") and the
// event, id and retry fields are skipped. Lines end with LF, CRLF or CR.
type SSEReader struct {
	r       *bufio.Reader
	data    []byte
	has     bool   // the pending event has a data field
	line    []byte // a line longer than the buffer, being assembled
	rest    []byte // lines still to hand out, after a lone CR
	afterCR bool   // the last line ended with CR: a following LF is its end, not a line
}

// NewSSEReader returns a reader of the events in r.
func NewSSEReader(r io.Reader) *SSEReader {
	return &SSEReader{r: bufio.NewReaderSize(r, 16<<10)}
}

// Next returns the data of the next event that has any, valid until the
// following call. At the end of the stream it returns io.EOF, or
// io.ErrUnexpectedEOF if an event was cut off before its blank line.
func (s *SSEReader) Next() ([]byte, error) {
	s.data, s.has = s.data[:0], false
	for {
		line, err := s.readLine()
		if err != nil {
			if err == io.EOF && (s.has || len(line) > 0) {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if len(line) == 0 {
			if s.has {
				return s.data, nil
			}
			continue
		}
		if line[0] == ':' {
			continue
		}
		field, value := line, []byte(nil)
		if i := bytes.IndexByte(line, ':'); i >= 0 {
			field, value = line[:i], line[i+1:]
			if len(value) > 0 && value[0] == ' ' {
				value = value[1:]
			}
		}
		if string(field) != "data" {
			continue
		}
		if s.has {
			s.data = append(s.data, '\n')
		}
		if len(s.data)+len(value) > MaxEventSize {
			return nil, ErrEventTooLarge
		}
		s.data = append(s.data, value...)
		s.has = true
	}
}

// readLine returns the next line without its ending. The line is valid
// until the next call.
func (s *SSEReader) readLine() ([]byte, error) {
	if len(s.rest) > 0 {
		return s.cut(s.rest)
	}
	var line []byte
	var err error
	for {
		var frag []byte
		frag, err = s.r.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			if len(s.line)+len(frag) > MaxEventSize {
				return nil, fmt.Errorf("%w (a line without an end)", ErrEventTooLarge)
			}
			s.line = append(s.line, frag...)
			continue
		}
		if len(s.line) > 0 {
			s.line = append(s.line, frag...)
			line, s.line = s.line, s.line[:0]
		} else {
			line = frag
		}
		break
	}
	if err != nil && len(line) == 0 {
		return nil, err
	}
	if len(line) > MaxEventSize {
		return nil, fmt.Errorf("%w (a line without an end)", ErrEventTooLarge)
	}
	if s.afterCR && len(line) > 0 && line[0] == '\n' {
		line = line[1:]
		s.afterCR = false
		if len(line) == 0 {
			return s.readLine()
		}
	}
	s.afterCR = false
	if err == io.EOF {
		// A last line without an end: complete only if it ended with CR.
		if i := bytes.IndexByte(line, '\r'); i >= 0 && i < len(line)-1 {
			s.rest = append(s.rest[:0], line...)
			return s.cut(s.rest)
		}
		if line[len(line)-1] == '\r' {
			return line[:len(line)-1], nil
		}
		return line, io.EOF
	}
	line = line[:len(line)-1] // the LF
	if i := bytes.IndexByte(line, '\r'); i >= 0 {
		if i == len(line)-1 {
			return line[:i], nil // CRLF
		}
		// Lines ended by a lone CR inside: hand them out one by one.
		s.rest = append(append(s.rest[:0], line...), '\n')
		return s.cut(s.rest)
	}
	return line, nil
}

// cut returns the first line of rest (ended by CR, CRLF or LF) and keeps
// the remainder in s.rest. A remainder without an end is the stream's
// last, cut-off line: it comes with io.EOF.
func (s *SSEReader) cut(rest []byte) ([]byte, error) {
	i := bytes.IndexAny(rest, "\r\n")
	if i < 0 {
		s.rest = rest[:0]
		return rest, io.EOF
	}
	line := rest[:i]
	n := i + 1
	if rest[i] == '\r' && n < len(rest) && rest[n] == '\n' {
		n++
	}
	if rest[i] == '\r' && i+1 == len(rest) {
		s.afterCR = true // an LF may follow in the next read: part of this CR's end
	}
	s.rest = rest[n:]
	return line, nil
}
