package worker

import (
	"bytes"
	"errors"
	"strconv"
)

// defaultMaxHeader is server.max_header_bytes' default: the request line
// plus headers; past it the answer is 431.
const defaultMaxHeader = 8 << 10

// errNeedMore: the buffer holds no complete request head yet.
var errNeedMore = errors.New("worker: need more data")

// httpError is a rejection that carries its status. The answer is prebuilt,
// so rejecting a request allocates nothing; the text never echoes client
// bytes.
type httpError struct {
	status int
	text   string
	resp   []byte
}

func (e *httpError) Error() string { return strconv.Itoa(e.status) + " " + e.text }

func newHTTPError(status int, reason, text string, extra ...string) *httpError {
	e := &httpError{status: status, text: text}
	body := text + "\n"
	b := []byte("HTTP/1.1 " + strconv.Itoa(status) + " " + reason + "\r\n")
	for _, h := range extra {
		b = append(b, h+"\r\n"...)
	}
	// Any page may read why it was refused (the text never echoes the
	// request), and when to come back.
	b = append(b, "Access-Control-Allow-Origin: *\r\nAccess-Control-Expose-Headers: Retry-After\r\n"...)
	b = append(b, "Content-Type: text/plain; charset=utf-8\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\nConnection: close\r\n\r\n"+body...)
	e.resp = b
	return e
}

var (
	errBadRequest = newHTTPError(400, "Bad Request", "malformed request")
	errBareCR     = newHTTPError(400, "Bad Request", "CR without LF, or NUL, in the request head")
	errBadID      = newHTTPError(400, "Bad Request", "bad id: use 1 to 64 of A-Z a-z 0-9 _ -")
	errBody       = newHTTPError(400, "Bad Request", "request body not allowed")
	errNotFound   = newHTTPError(404, "Not Found", "not found")
	errMethod     = newHTTPError(405, "Method Not Allowed", "method not allowed", "Allow: GET, HEAD, OPTIONS")
	errTooLarge   = newHTTPError(431, "Request Header Fields Too Large", "request header fields too large")
	errTimeout    = newHTTPError(408, "Request Timeout", "the request head did not arrive within server.header_timeout")
	errPerIP      = newHTTPError(429, "Too Many Requests", "too many connections from your address")
	errVersion    = newHTTPError(505, "HTTP Version Not Supported", "HTTP version not supported")
	// errRetryNow answers a connection a worker hands over before it has
	// answered it (reload, stop): come back at once, another worker takes it.
	errRetryNow = newHTTPError(503, "Service Unavailable", "this worker is handing its clients over: retry now", "Retry-After: 0")
)

// cutByte splits b at its first sep: what comes before, and what follows
// (nil when there is no sep).
func cutByte(b []byte, sep byte) (before, after []byte) {
	if i := bytes.IndexByte(b, sep); i >= 0 {
		return b[:i], b[i+1:]
	}
	return b, nil
}

// request is one parsed request head. Every slice aliases the input buffer
// and is valid only until the Data callback that parsed it returns.
type request struct {
	method  []byte
	path    []byte
	query   []byte // without the '?'
	http11  bool
	close   bool // Connection: close, or HTTP/1.0 without keep-alive
	upgrade bool // Connection: upgrade

	lastEventID []byte
	origin      []byte
	upgradeTo   []byte
	wsKey       []byte
	wsVersion   []byte
	wsProtocol  []byte

	authorization []byte // never logged nor echoed
	cookie        []byte
	fetchSite     []byte // Sec-Fetch-Site: where the browser says the request comes from
	fetchDest     []byte // Sec-Fetch-Dest: what the browser will do with the answer
	ifNoneMatch   []byte
	forwardedFor  []byte // X-Forwarded-For (the last one, when several)
	forwarded     []byte // Forwarded (RFC 7239)
}

func (r *request) reset() { *r = request{} }

var (
	strGET            = []byte("GET")
	strHEAD           = []byte("HEAD")
	strOPTIONS        = []byte("OPTIONS")
	strHTTP10         = []byte("HTTP/1.0")
	strHTTP11         = []byte("HTTP/1.1")
	strConnection     = []byte("connection")
	strContentLength  = []byte("content-length")
	strTransferEnc    = []byte("transfer-encoding")
	strLastEventID    = []byte("last-event-id")
	strOrigin         = []byte("origin")
	strUpgrade        = []byte("upgrade")
	strWSKey          = []byte("sec-websocket-key")
	strWSVersion      = []byte("sec-websocket-version")
	strWSProtocol     = []byte("sec-websocket-protocol")
	strAuthorization  = []byte("authorization")
	strCookie         = []byte("cookie")
	strFetchSite      = []byte("sec-fetch-site")
	strFetchDest      = []byte("sec-fetch-dest")
	strIfNoneMatch    = []byte("if-none-match")
	strXFF            = []byte("x-forwarded-for")
	strForwarded      = []byte("forwarded")
	strClose          = []byte("close")
	strKeepAlive      = []byte("keep-alive")
	strUpgradeToken   = []byte("upgrade")
	strZero           = []byte("0")
	headerTerminators = [][]byte{[]byte("\r\n\r\n"), []byte("\n\n")}
)

// parseRequest parses the request head at the front of b into r and returns
// its length. It returns errNeedMore while the head is incomplete and an
// *httpError for anything it rejects. Bare LF line ends are accepted, as
// most servers do.
func parseRequest(b []byte, r *request, maxHeader int) (int, error) {
	end := headEnd(b)
	if end < 0 {
		if len(b) > maxHeader {
			return 0, errTooLarge
		}
		return 0, errNeedMore
	}
	if end > maxHeader {
		return 0, errTooLarge
	}
	r.reset()
	head := b[:end]
	line, rest := cutLine(head)
	if badInLine(line) {
		return 0, errBareCR
	}
	sp := bytes.IndexByte(line, ' ')
	if sp <= 0 {
		return 0, errBadRequest
	}
	r.method = line[:sp]
	line = line[sp+1:]
	sp = bytes.IndexByte(line, ' ')
	if sp <= 0 {
		return 0, errBadRequest
	}
	target, version := line[:sp], line[sp+1:]
	switch {
	case bytes.Equal(version, strHTTP11):
		r.http11 = true
	case bytes.Equal(version, strHTTP10):
		r.close = true
	case len(version) > 5 && string(version[:5]) == "HTTP/":
		return 0, errVersion
	default:
		return 0, errBadRequest
	}
	if len(target) == 0 || target[0] != '/' {
		return 0, errBadRequest
	}
	if q := bytes.IndexByte(target, '?'); q >= 0 {
		r.path, r.query = target[:q], target[q+1:]
	} else {
		r.path = target
	}
	for len(rest) > 0 {
		line, rest = cutLine(rest)
		if len(line) == 0 {
			break
		}
		if badInLine(line) {
			return 0, errBareCR
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || line[colon-1] == ' ' || line[colon-1] == '\t' {
			return 0, errBadRequest // RFC 9112 §5.1: no whitespace before the colon
		}
		name, value := line[:colon], trimOWS(line[colon+1:])
		switch {
		case asciiEqualFold(name, strConnection):
			r.parseConnection(value)
		case asciiEqualFold(name, strContentLength):
			if !bytes.Equal(value, strZero) {
				return 0, errBody
			}
		case asciiEqualFold(name, strTransferEnc):
			return 0, errBody
		case asciiEqualFold(name, strLastEventID):
			r.lastEventID = value
		case asciiEqualFold(name, strOrigin):
			r.origin = value
		case asciiEqualFold(name, strUpgrade):
			r.upgradeTo = value
		case asciiEqualFold(name, strWSKey):
			r.wsKey = value
		case asciiEqualFold(name, strWSVersion):
			r.wsVersion = value
		case asciiEqualFold(name, strWSProtocol):
			r.wsProtocol = value
		case asciiEqualFold(name, strAuthorization):
			r.authorization = value
		case asciiEqualFold(name, strCookie):
			r.cookie = value
		case asciiEqualFold(name, strFetchSite):
			r.fetchSite = value
		case asciiEqualFold(name, strFetchDest):
			r.fetchDest = value
		case asciiEqualFold(name, strIfNoneMatch):
			r.ifNoneMatch = value
		case asciiEqualFold(name, strXFF):
			r.forwardedFor = value
		case asciiEqualFold(name, strForwarded):
			r.forwarded = value
		}
	}
	return end, nil
}

// parseConnection reads the Connection header's comma-separated tokens.
func (r *request) parseConnection(v []byte) {
	for len(v) > 0 {
		var tok []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			tok, v = trimOWS(v[:i]), v[i+1:]
		} else {
			tok, v = trimOWS(v), nil
		}
		switch {
		case asciiEqualFold(tok, strClose):
			r.close = true
		case asciiEqualFold(tok, strKeepAlive):
			if !r.http11 {
				r.close = false
			}
		case asciiEqualFold(tok, strUpgradeToken):
			r.upgrade = true
		}
	}
}

// headEnd returns the length of the head including its blank line, or -1.
func headEnd(b []byte) int {
	best := -1
	for _, t := range headerTerminators {
		if i := bytes.Index(b, t); i >= 0 && (best < 0 || i+len(t) < best) {
			best = i + len(t)
		}
	}
	return best
}

func cutLine(b []byte) (line, rest []byte) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return b, nil
	}
	line, rest = b[:i], b[i+1:]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, rest
}

// badInLine reports a CR or NUL inside a head line (cutLine has taken its
// CRLF off). RFC 9112 §2.2: "A recipient of such a bare CR MUST consider
// that element to be invalid or replace each bare CR with SP"; RFC 9110
// §5.5: a field value with CR, LF or NUL is rejected or each replaced with
// SP. Replacing would make the head mean something other than what a proxy
// in front of us read from it (request smuggling), so it is rejected.
func badInLine(line []byte) bool {
	return bytes.IndexByte(line, '\r') >= 0 || bytes.IndexByte(line, 0) >= 0
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// asciiEqualFold compares b to lower, which must already be lower case.
func asciiEqualFold(b, lower []byte) bool {
	if len(b) != len(lower) {
		return false
	}
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}
