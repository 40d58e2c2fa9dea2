package megatest

import (
	"bytes"
	"errors"
)

// Server-Sent Events, as the WHATWG HTML standard defines the stream
// ("9.2.6 Interpreting an event stream"): lines end with LF or CRLF (a bare
// CR, which the standard also allows, is rejected: no server we test sends
// it), a blank line dispatches the event, "field: value" with one optional
// space after the colon, a line starting with ':' is a comment.

var (
	errSSELarge = errors.New("megatest: SSE event over 1 MiB")
	errSSEID    = errors.New("megatest: SSE id field differs from the message id")
)

const maxEvent = 1 << 20

// sseEvent is one parsed event block. Slices alias the input, or scratch
// when data spans several lines.
type sseEvent struct {
	id        []byte
	data      []byte
	retry     int64 // -1 when absent
	hasID     bool
	dataLines int
	comments  int
	fields    int  // non-comment lines
	reconnect bool // a ": reconnect" comment: the server's hand-over notice
	event     []byte
}

var (
	sseID        = []byte("id")
	sseData      = []byte("data")
	sseRetry     = []byte("retry")
	sseEventName = []byte("event")
	sseExpired   = []byte("expired")
	sseReconnect = []byte(" reconnect")
)

// parseSSE parses the event block at the front of b, through the blank line
// that ends it. Multi-line data is joined with '\n' into *scratch (reused,
// so steady state allocates nothing).
func parseSSE(b []byte, ev *sseEvent, scratch *[]byte) (int, error) {
	end := sseEnd(b)
	if end < 0 {
		if len(b) > maxEvent {
			return 0, errSSELarge
		}
		return 0, errNeedMore
	}
	if end > maxEvent {
		return 0, errSSELarge
	}
	*ev = sseEvent{retry: -1}
	rest := b[:end]
	for len(rest) > 0 {
		var line []byte
		line, rest = cutLine(rest)
		if len(line) == 0 {
			break // the blank line that ends the block
		}
		if bytes.IndexByte(line, '\r') >= 0 {
			return 0, errFraming // a bare CR inside a line
		}
		if line[0] == ':' {
			ev.comments++
			if bytes.Equal(line[1:], sseReconnect) || bytes.Equal(line[1:], sseReconnect[1:]) {
				ev.reconnect = true
			}
			continue
		}
		ev.fields++
		name, val := line, []byte(nil)
		if i := bytes.IndexByte(line, ':'); i >= 0 {
			name, val = line[:i], line[i+1:]
			if len(val) > 0 && val[0] == ' ' {
				val = val[1:]
			}
		}
		switch {
		case bytes.Equal(name, sseData):
			switch ev.dataLines {
			case 0:
				ev.data = val
			case 1:
				*scratch = append(append(append((*scratch)[:0], ev.data...), '\n'), val...)
				ev.data = *scratch
			default:
				*scratch = append(append(*scratch, '\n'), val...)
				ev.data = *scratch
			}
			ev.dataLines++
		case bytes.Equal(name, sseID):
			ev.id, ev.hasID = val, true
		case bytes.Equal(name, sseEventName):
			ev.event = val
		case bytes.Equal(name, sseRetry):
			if n, ok := atoi64(val); ok {
				ev.retry = n
			}
		}
	}
	return end, nil
}

// sseEnd returns the index just past the blank line that ends the first
// event block in b, or -1. A block may start with the blank line itself
// (an empty block, which dispatches nothing).
func sseEnd(b []byte) int {
	atLineStart := true
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case '\n':
			if atLineStart {
				return i + 1
			}
			atLineStart = true
		case '\r':
			if i+1 < len(b) && b[i+1] == '\n' {
				if atLineStart {
					return i + 2
				}
				atLineStart = true
				i++
			} else if i+1 == len(b) {
				return -1 // is an LF coming?
			} else {
				atLineStart = false // a bare CR; parseSSE rejects it
			}
		default:
			atLineStart = false
		}
	}
	return -1
}
