package megatest

import (
	"bytes"
	"errors"
)

// errNeedMore: the buffer does not hold a complete unit (response head, SSE
// event, chunk, long-poll answer, WebSocket frame) yet. Every parser here
// has the form parse(buf) (n, err) and consumes nothing until a unit is
// whole, so input split anywhere gives the same result.
var errNeedMore = errors.New("megatest: need more data")

// Framing errors. They never carry server bytes.
var (
	errHead      = errors.New("megatest: malformed HTTP response head")
	errHeadLarge = errors.New("megatest: HTTP response head over 16 KiB")
	errStatus    = errors.New("megatest: unexpected HTTP status")
	errType      = errors.New("megatest: unexpected Content-Type")
	errFraming   = errors.New("megatest: unexpected body framing")
)

const maxHead = 16 << 10

// respHead is one parsed response head. Slices alias the input.
type respHead struct {
	status        int
	contentLength int64 // -1 when absent
	chunked       bool
	close         bool // Connection: close (or HTTP/1.0 without keep-alive)
	upgrade       bool // Connection: upgrade
	contentType   []byte
	wsAccept      []byte
	upgradeTo     []byte
	cursor        uint64 // X-Megacomet-Cursor: where this client starts (long-poll: the cursor after the answer)
	hasCursor     bool
	retryAfter    int64 // Retry-After in seconds; -1 when absent (or an HTTP date)
}

var (
	hdrContentLength = []byte("content-length")
	hdrContentType   = []byte("content-type")
	hdrConnection    = []byte("connection")
	hdrTransferEnc   = []byte("transfer-encoding")
	hdrWSAccept      = []byte("sec-websocket-accept")
	hdrUpgrade       = []byte("upgrade")
	hdrCursor        = []byte("x-megacomet-cursor")
	hdrRetryAfter    = []byte("retry-after")
	tokClose         = []byte("close")
	tokKeepAlive     = []byte("keep-alive")
	tokUpgrade       = []byte("upgrade")
	tokChunked       = []byte("chunked")
	strHTTP1         = []byte("HTTP/1.")
)

// parseHead parses the response head at the front of b into h and returns
// its length (through the blank line). Bare LF line ends are accepted.
func parseHead(b []byte, h *respHead) (int, error) {
	end, lf := headEnd(b)
	if end < 0 {
		if len(b) > maxHead {
			return 0, errHeadLarge
		}
		return 0, errNeedMore
	}
	if end > maxHead {
		return 0, errHeadLarge
	}
	*h = respHead{contentLength: -1, retryAfter: -1}
	head := b[:end-lf]
	line, rest := cutLine(head)
	// HTTP/1.1 200 OK
	if len(line) < 12 || !bytes.HasPrefix(line, strHTTP1) || line[8] != ' ' {
		return 0, errHead
	}
	http10 := line[7] == '0'
	if !http10 && line[7] != '1' {
		return 0, errHead
	}
	st := 0
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return 0, errHead
		}
		st = st*10 + int(c-'0')
	}
	if len(line) > 12 && line[12] != ' ' {
		return 0, errHead
	}
	h.status = st
	keepAlive := false
	for len(rest) > 0 {
		line, rest = cutLine(rest)
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return 0, errHead
		}
		name, val := line[:colon], bytes.TrimSpace(line[colon+1:])
		switch {
		case equalFold(name, hdrContentLength):
			n, ok := atoi64(val)
			if !ok {
				return 0, errHead
			}
			h.contentLength = n
		case equalFold(name, hdrContentType):
			h.contentType = val
		case equalFold(name, hdrTransferEnc):
			h.chunked = hasToken(val, tokChunked)
		case equalFold(name, hdrConnection):
			h.close = h.close || hasToken(val, tokClose)
			h.upgrade = h.upgrade || hasToken(val, tokUpgrade)
			keepAlive = keepAlive || hasToken(val, tokKeepAlive)
		case equalFold(name, hdrUpgrade):
			h.upgradeTo = val
		case equalFold(name, hdrWSAccept):
			h.wsAccept = val
		case equalFold(name, hdrRetryAfter):
			if n, ok := atoi64(val); ok { // delta-seconds; a date is ignored
				h.retryAfter = n
			}
		case equalFold(name, hdrCursor):
			v, end, ok := scanUint(val, 0)
			if !ok || end != len(val) {
				return 0, errHead
			}
			h.cursor, h.hasCursor = v, true
		}
	}
	if http10 && !keepAlive {
		h.close = true
	}
	return end, nil
}

// headEnd returns the index just past the blank line ending the head and
// the length of that blank line's terminator, or -1.
func headEnd(b []byte) (end, lf int) {
	for i := 0; i < len(b); i++ {
		if b[i] != '\n' {
			continue
		}
		// b[i] ends a line; is the next line empty?
		switch {
		case i+1 < len(b) && b[i+1] == '\n':
			return i + 2, 1
		case i+2 < len(b) && b[i+1] == '\r' && b[i+2] == '\n':
			return i + 3, 2
		}
	}
	return -1, 0
}

// cutLine splits off the first line, without its CRLF or LF.
func cutLine(b []byte) (line, rest []byte) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		line, rest = b, nil
	} else {
		line, rest = b[:i], b[i+1:]
	}
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, rest
}

func equalFold(a, lower []byte) bool {
	if len(a) != len(lower) {
		return false
	}
	for i, c := range a {
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// hasToken reports whether the comma-separated list v holds tok (any case).
func hasToken(v, tok []byte) bool {
	for len(v) > 0 {
		var t []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			t, v = v[:i], v[i+1:]
		} else {
			t, v = v, nil
		}
		if equalFold(bytes.TrimSpace(t), tok) {
			return true
		}
	}
	return false
}

func atoi64(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// hasPrefixFold reports whether b starts with lower, ignoring ASCII case.
func hasPrefixFold(b, lower []byte) bool {
	return len(b) >= len(lower) && equalFold(b[:len(lower)], lower)
}
