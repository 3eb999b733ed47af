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

// ErrEventTooLarge: an event's data exceeded MaxEventSize.
var ErrEventTooLarge = errors.New("bench: server-sent event larger than 1 MiB")

// SSEReader reads the data of Server-Sent Events (the text/event-stream
// format of the HTML standard) from a stream: lines "data: x" accumulate
// into an event that a blank line ends; comment lines (":") and the
// event, id and retry fields are skipped. Lines end with LF, CRLF or CR.
type SSEReader struct {
	r       *bufio.Reader
	data    []byte
	has     bool // the pending event has a data field
	line    []byte
	afterCR bool // the last line ended with CR: a following LF is its end, not a line
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
	s.line = s.line[:0]
	for {
		b, err := s.r.ReadByte()
		if err != nil {
			if err == io.EOF && len(s.line) > 0 {
				return s.line, io.EOF
			}
			return nil, err
		}
		if s.afterCR {
			s.afterCR = false
			if b == '\n' {
				continue
			}
		}
		switch b {
		case '\n':
			return s.line, nil
		case '\r':
			s.afterCR = true
			return s.line, nil
		}
		if len(s.line) >= MaxEventSize {
			return nil, fmt.Errorf("%w (a line without an end)", ErrEventTooLarge)
		}
		s.line = append(s.line, b)
	}
}
