package worker

import (
	"bytes"
	"strconv"

	"github.com/megacomet/megacomet/auth"
	"github.com/megacomet/megacomet/ipc"
	"github.com/tidwall/evio"
)

// maxChannels bounds channels=a,b,... per connection.
const maxChannels = 16

// maxCursor is the largest cursor a client may send. Ids are publish times
// in microseconds (the manager's nextID; on a cluster, the stream's
// sequence plus the clock when it was made), below 2^53 until the year
// 2255 and so exact in JavaScript. A cursor past every id that can be
// issued would leave its connection silent for good, and 2^64-1 made
// cursor+1 wrap to 0 (a gap "after" it was then announced, and the cursor
// went back).
const maxCursor = 1<<53 - 1

// parseSince reads a cursor: since=N, Last-Event-ID: N.
func parseSince(b []byte) (uint64, *httpError) {
	n, ok := parseUint(b)
	switch {
	case !ok:
		return 0, errBadSince
	case n > maxCursor:
		return 0, errSinceRange
	}
	return n, nil
}

var (
	errBadSince    = newHTTPError(400, "Bad Request", "bad since: use a message id (an unsigned integer)")
	errSinceRange  = newHTTPError(400, "Bad Request", "bad since: message ids are below 2^53 (9007199254740992)")
	errBadCallback = newHTTPError(400, "Bad Request", "bad callback: use a JavaScript identifier of at most 64 bytes")
	errBadChannel  = newHTTPError(400, "Bad Request", "bad channels: use up to 16 comma-separated names of 1 to 64 of A-Z a-z 0-9 _ -")
	errPipelined   = newHTTPError(400, "Bad Request", "too much pipelined input during a long-poll")
)

var (
	pathPing     = []byte("/ping")
	prefixLP     = []byte("/lp/")
	prefixStream = []byte("/stream/")
	prefixSSE    = []byte("/sse/")
	suffixJS     = []byte(".js")
	keySince     = []byte("since")
	keyCallback  = []byte("callback")
	keyChannels  = []byte("channels")
	keyCursor    = []byte("cursor")
)

// query is what a comet request's query string may say.
type query struct {
	since    uint64
	hasSince bool
	cursor   bool // cursor=1: WebSocket's first frame tells the cursor
	callback []byte
	token    []byte // never logged nor echoed
	chans    [maxChannels][]byte
	nchans   int
}

func (q *query) channels() [][]byte { return q.chans[:q.nchans] }

// clientData handles bytes read from a client.
func (w *Worker) clientData(cc *conn, in []byte) evio.Action {
	switch cc.state {
	case stReading:
	case stPolling:
		// Pipelined input behind a held long-poll waits for its answer.
		x := cc.extra()
		if len(x.in)+len(in) > w.opts.Server.MaxHeaderBytes {
			w.reject(cc, errPipelined)
			return evio.None
		}
		x.in = append(x.in, in...)
		return evio.None
	case stParked:
		// Input behind a parked request waits for the application's answer.
		x := cc.extra()
		if len(x.in)+len(in) > w.opts.Server.MaxHeaderBytes {
			w.unpark(cc)
			w.reject(cc, errPipelined)
			return evio.None
		}
		x.in = append(x.in, in...)
		return evio.None
	case stStreaming:
		if cc.tr == trWS {
			w.wsData(cc, in) // frames from a WebSocket client (ws.go)
		}
		return evio.None // other streams' input is discarded
	default:
		return evio.None // lingering or dead: input is discarded
	}
	buf := in
	if cc.x != nil && len(cc.x.in) > 0 {
		cc.x.in = append(cc.x.in, in...)
		buf = cc.x.in
	}
	wait := false // a PROXY header not complete yet
	if cc.kind == kindProxy || (len(buf) > 0 && (buf[0] == 'P' || buf[0] == '\r')) {
		var ok bool
		if buf, wait, ok = w.proxyHeader(cc, buf); !ok {
			return evio.None
		}
	}
	for !wait && len(buf) > 0 && cc.state == stReading {
		n, err := parseRequest(buf, &w.req, w.opts.Server.MaxHeaderBytes)
		if err == errNeedMore {
			break
		}
		if err != nil {
			if err == errTooLarge {
				w.counts.HeadersTooLarge++
			}
			w.reject(cc, err.(*httpError))
			return evio.None
		}
		w.counts.Requests++
		w.head = buf[:n]
		buf = buf[n:]
		if cc.kind == kindForwarded && !w.admitForwarded(cc, &w.req) {
			return evio.None
		}
		w.serve1(cc, &w.req)
	}
	switch {
	case cc.state == stParked:
		var rest []byte // pipelined behind it: waits for the answer
		if len(buf) > 0 {
			rest = append(rest, buf...)
		}
		if cc.x != nil {
			cc.x.in = nil
			cc.tidy()
		}
		if rest != nil {
			cc.extra().in = rest
		}
	case cc.state == stDead || cc.state == stLingering || cc.state == stStreaming || len(buf) == 0:
		if cc.x != nil {
			cc.x.in = nil
			cc.tidy()
		}
	case cc.x != nil && len(cc.x.in) > 0:
		cc.x.in = append(cc.x.in[:0], buf...)
	default:
		cc.extra().in = append([]byte(nil), buf...) // a head split across reads, or pipelined behind a poll
	}
	if cc.tr == trWS && cc.state == stStreaming && len(buf) > 0 {
		w.wsData(cc, buf) // frames that came with the WebSocket handshake
	}
	return evio.None
}

// resume parses input that arrived while a long-poll was held.
func (w *Worker) resume(cc *conn) {
	if cc.state == stReading && cc.x != nil && len(cc.x.in) > 0 {
		w.clientData(cc, nil)
	}
}

// serve1 answers one parsed request.
func (w *Worker) serve1(cc *conn, r *request) {
	head := bytes.Equal(r.method, strHEAD)
	switch {
	case bytes.Equal(r.method, strOPTIONS):
		w.preflight(cc, r)
		return
	case !head && !bytes.Equal(r.method, strGET):
		w.reject(cc, errMethod)
		return
	}
	if r.close {
		cc.flags |= fClose
	}
	path := r.path
	var id []byte
	var tr transport
	switch {
	case bytes.Equal(path, pathPing):
		if head {
			w.send(cc, w.pongHead)
		} else {
			w.send(cc, w.pong)
		}
		w.afterAnswer(cc)
		return
	case bytes.Equal(path, pathClientJS):
		w.serveClientJS(cc, r, head) // clientjs.go
		return
	case bytes.HasPrefix(path, prefixLP):
		id, tr = path[len(prefixLP):], trLP
	case bytes.HasPrefix(path, prefixStream):
		id, tr = path[len(prefixStream):], trStream
	case bytes.HasPrefix(path, prefixSSE):
		id, tr = path[len(prefixSSE):], trSSE
	case bytes.HasPrefix(path, prefixWS):
		if w.off[trWS] {
			w.reject(cc, errTransportOff[trWS])
			return
		}
		w.startWS(cc, r, path[len(prefixWS):]) // ws.go
		return
	case bytes.HasSuffix(path, suffixJS) && bytes.IndexByte(path[1:], '/') < 0:
		id, tr = path[1:len(path)-len(suffixJS)], trLP // the original MegaComet URL
	default:
		w.reject(cc, errNotFound)
		return
	}
	if w.off[tr] {
		w.reject(cc, errTransportOff[tr])
		return
	}
	since, ok := w.subscription(cc, r, id, tr)
	if !ok {
		return
	}
	a := admission{id: id, tr: tr, since: since, fresh: w.fresh, head: head, raw: !r.http11 && tr == trStream,
		origin: r.origin, callback: w.q.callback, channels: w.q.channels(), grant: w.grant}
	if w.mustAsk(&a) {
		w.park(cc, r, &a) // park.go
		return
	}
	w.admit(cc, &a)
}

// admission is a comet request its token (or the application's hooks)
// admitted: what its answer and subscription need.
type admission struct {
	id          []byte
	channels    [][]byte
	origin      []byte
	callback    []byte // long-poll JSONP
	ws101       []byte // WebSocket: the handshake's answer
	since       uint64
	grant       grant
	tr          transport
	fresh       bool // since is "from now" (subscription)
	head        bool // HEAD: the answer's head, and no subscription
	raw         bool // an HTTP/1.0 stream: no chunked framing
	cursorFrame bool // WebSocket cursor=1: the first frame tells the cursor
}

// admit answers an admitted comet request and subscribes it.
func (w *Worker) admit(cc *conn, a *admission) {
	if why, banned := w.banned(a.id); banned { // kick.go
		w.refuse(cc, a.origin, &auth.Refusal{Status: 403, Reason: why}, 0)
		return
	}
	w.fresh = a.fresh
	switch {
	case a.tr == trWS:
		w.admitWS(cc, a) // ws.go
		return
	case a.head:
		w.send(cc, w.streamHead(a.tr, a.origin, false, a.since))
		w.linger(cc)
		return
	case a.tr == trLP:
		x := cc.extra()
		x.callback = append(x.callback[:0], a.callback...)
		if !w.corsAny && w.allowed(a.origin) {
			x.origin = append(x.origin[:0], a.origin...)
		}
		cc.tr, cc.state = trLP, stPolling
		w.subscribe(cc, a.id, a.channels, a.since, a.grant.exp)
		w.schedule(cc, w.tick+w.pollTicks)
		return
	}
	if a.raw {
		cc.flags |= fRaw // HTTP/1.0 cannot take chunked framing
	}
	w.send(cc, w.streamHead(a.tr, a.origin, cc.flags&fRaw == 0, a.since))
	cc.tr, cc.state = a.tr, stStreaming
	w.subscribe(cc, a.id, a.channels, a.since, a.grant.exp)
	w.startHeartbeats(cc)
}

// subscription reads what a comet request asks for into w.q and returns
// the cursor to resume after; it rejects a bad id or query.
func (w *Worker) subscription(cc *conn, r *request, id []byte, tr transport) (since uint64, ok bool) {
	w.fresh = false
	if !ipc.ValidName(id) {
		w.reject(cc, errBadID)
		return 0, false
	}
	q := &w.q
	if e := parseQuery(r.query, q); e != nil {
		w.reject(cc, e)
		return 0, false
	}
	if tr == trSSE && len(r.lastEventID) > 0 {
		// EventSource resends the last id it saw on every reconnect; it
		// is fresher than the since= of the URL the page first opened.
		v, e := parseSince(r.lastEventID)
		if e != nil {
			w.reject(cc, e)
			return 0, false
		}
		q.since, q.hasSince = v, true
	}
	if w.grant, ok = w.authorize(cc, r, q, id, tr); !ok {
		return 0, false
	}
	if q.hasSince {
		return q.since, true
	}
	// Message ids are publish times in microseconds, so "from now" is a
	// cursor too: a client without one gets every message published after
	// it connected, including those published before its subscription
	// reached the manager. The answer tells the client this cursor, so it
	// can resume from it even before its first message. Such a connection
	// missed nothing, so it is never told of a gap (w.fresh).
	w.fresh = true
	return w.connectCursor(), true
}

// afterAnswer returns a keep-alive connection to reading, or closes it.
func (w *Worker) afterAnswer(cc *conn) {
	cc.tr = trNone
	if cc.flags&fClose != 0 {
		w.linger(cc)
		return
	}
	cc.state = stReading
	w.schedule(cc, w.tick+w.reqTicks)
}

// reject answers with a prebuilt error and closes gracefully.
func (w *Worker) reject(cc *conn, e *httpError) {
	w.counts.BadRequests++
	w.send(cc, e.resp)
	w.linger(cc)
}

// parseQuery reads since, callback and channels; other keys are ignored
// (cache busters such as jQuery's _=).
func parseQuery(q []byte, out *query) *httpError {
	*out = query{}
	for len(q) > 0 {
		var kv []byte
		kv, q = cutByte(q, '&')
		k, v, _ := bytes.Cut(kv, []byte{'='})
		switch {
		case bytes.Equal(k, keySince):
			n, e := parseSince(v)
			if e != nil {
				return e
			}
			out.since, out.hasSince = n, true
		case bytes.Equal(k, keyCursor):
			out.cursor = len(v) > 0 && v[0] != '0'
		case bytes.Equal(k, keyToken):
			out.token = v // base64url and dots: nothing to unescape
		case bytes.Equal(k, keyCallback):
			if !validCallback(v) {
				return errBadCallback
			}
			out.callback = v
		case bytes.Equal(k, keyChannels):
			for len(v) > 0 {
				var ch []byte
				if i := bytes.IndexByte(v, ','); i >= 0 {
					ch, v = v[:i], v[i+1:]
				} else {
					ch, v = v, nil
				}
				if !ipc.ValidName(ch) || out.nchans == maxChannels {
					return errBadChannel
				}
				out.chans[out.nchans] = ch
				out.nchans++
			}
		}
	}
	return nil
}

func parseUint(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 20 {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if n > (1<<64-1-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	return n, true
}

// validCallback accepts a JavaScript identifier path such as
// jQuery3510_1700000000.cb: identifiers of [A-Za-z0-9_$] not starting with
// a digit, joined by dots, at most 64 bytes.
func validCallback(b []byte) bool {
	if len(b) == 0 || len(b) > 64 {
		return false
	}
	start := true
	for _, c := range b {
		switch {
		case c == '.':
			if start {
				return false
			}
			start = true
		case 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '_' || c == '$':
			start = false
		case '0' <= c && c <= '9':
			if start {
				return false
			}
		default:
			return false
		}
	}
	return !start
}

// allowed reports whether a browser Origin may use the client endpoints.
func (w *Worker) allowed(origin []byte) bool {
	if w.corsAny {
		return true
	}
	_, ok := w.origins[string(origin)]
	return ok
}

// appendCORS adds the CORS headers for a request from origin.
func (w *Worker) appendCORS(b, origin []byte) []byte {
	switch {
	case w.corsAny:
		return append(b, "Access-Control-Allow-Origin: *\r\nAccess-Control-Expose-Headers: X-Megacomet-Cursor\r\n"...)
	case len(origin) > 0 && w.allowed(origin):
		// A named origin may also send the auth cookie (fetch with
		// credentials: "include", EventSource withCredentials) and read
		// the answer; "*" never allows credentials.
		b = append(b, "Access-Control-Allow-Origin: "...)
		b = append(b, origin...)
		return append(b, "\r\nAccess-Control-Allow-Credentials: true\r\nAccess-Control-Expose-Headers: X-Megacomet-Cursor\r\nVary: Origin\r\n"...)
	}
	return append(b, "Vary: Origin\r\n"...)
}

// preflight answers a CORS OPTIONS request.
func (w *Worker) preflight(cc *conn, r *request) {
	b := append(w.scratch[:0], "HTTP/1.1 204 No Content\r\n"...)
	b = w.appendCORS(b, r.origin)
	b = append(b, "Access-Control-Allow-Methods: GET, HEAD, OPTIONS\r\n"+
		"Access-Control-Allow-Headers: Authorization, Last-Event-ID, Cache-Control, Content-Type, X-Requested-With\r\n"+
		"Access-Control-Max-Age: 86400\r\n"...)
	if r.close {
		b = append(b, "Connection: close\r\n"...)
		cc.flags |= fClose
	}
	b = append(b, "\r\n"...)
	w.scratch = b
	w.send(cc, b)
	w.afterAnswer(cc)
}

// streamHead is the answer head of an SSE or NDJSON stream (for HEAD, of a
// long-poll too), telling the client the cursor it starts from: in the
// X-Megacomet-Cursor header, and for SSE as an id with no data, which sets
// EventSource's lastEventId without firing an event (HTML's event stream
// dispatch sets the last event ID before it checks for data).
func (w *Worker) streamHead(tr transport, origin []byte, chunked bool, cursor uint64) []byte {
	b := append(w.scratch[:0], "HTTP/1.1 200 OK\r\n"...)
	switch tr {
	case trSSE:
		b = append(b, "Content-Type: text/event-stream\r\n"...)
	case trStream:
		b = append(b, "Content-Type: application/x-ndjson\r\n"...)
		if chunked {
			b = append(b, "Transfer-Encoding: chunked\r\n"...)
		}
	default:
		b = append(b, "Content-Type: application/json\r\n"...)
	}
	// nosniff as on a long-poll answer: a browser must not take a stream
	// of client-chosen JSON for HTML or script.
	b = append(b, "Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\nX-Accel-Buffering: no\r\n"...)
	b = appendCursor(b, cursor)
	b = w.appendCORS(b, origin)
	b = append(b, "\r\n"...)
	if tr == trSSE {
		b = append(b, "retry: 2000\nid: "...)
		b = strconv.AppendUint(b, cursor, 10)
		b = append(b, "\n\n"...)
	}
	w.scratch = b
	return b
}

func appendCursor(b []byte, cursor uint64) []byte {
	b = append(b, "X-Megacomet-Cursor: "...)
	b = strconv.AppendUint(b, cursor, 10)
	return append(b, "\r\n"...)
}

var (
	sseHandOff   = []byte("retry: 1000\n: reconnect\n\n")
	chunkedEnd   = []byte("0\r\n\r\n")
	contentJSON  = []byte("Content-Type: application/json\r\n")
	contentJSONP = []byte("Content-Type: application/javascript; charset=utf-8\r\n")
)

// appendPollHead is a long-poll answer's head for a body of n bytes.
func (w *Worker) appendPollHead(b []byte, cc *conn, n int) []byte {
	b = append(b, "HTTP/1.1 200 OK\r\n"...)
	if cc.x != nil && len(cc.x.callback) > 0 {
		b = append(b, contentJSONP...)
	} else {
		b = append(b, contentJSON...)
	}
	b = append(b, "Cache-Control: no-cache, no-store\r\nX-Content-Type-Options: nosniff\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(n), 10)
	b = append(b, "\r\n"...)
	b = appendCursor(b, cc.cursor)
	var origin []byte
	if cc.x != nil {
		origin = cc.x.origin
	}
	b = w.appendCORS(b, origin)
	if cc.flags&fClose != 0 {
		b = append(b, "Connection: close\r\n"...)
	}
	return append(b, "\r\n"...)
}
