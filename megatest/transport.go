//go:build linux

package megatest

import (
	"bytes"
	"errors"
	"strconv"
	"unicode/utf8"
)

// consume parses every whole unit at the front of buf for connection idx
// and returns how many bytes it used. A unit split across reads stays in
// conn.in until the rest arrives (errNeedMore from the parser).
func (e *engine) consume(idx int32, c *conn, buf []byte, now int64) (int, error) {
	off := 0
	for off < len(buf) {
		var n int
		var err error
		switch {
		case e.tr == trLP:
			n, err = e.lpAnswer(idx, c, buf[off:], now)
		case c.state == stHead:
			n, err = e.head(c, buf[off:])
		case e.tr == trSSE && c.flags&fChunked != 0:
			n, err = e.sseChunked(c, buf[off:], now, idx)
		case e.tr == trSSE:
			n, err = e.sseEvent(c, buf[off:], now, idx)
		case e.tr == trStream:
			n, err = e.chunk(c, buf[off:], now, idx)
		default:
			n, err = e.wsFrame(idx, c, buf[off:], now)
		}
		switch err {
		case nil:
			off += n
		case errNeedMore: // n is 0, or what sseChunked wrote back
			return off + n, nil
		default:
			return off + n, err
		}
	}
	return off, nil
}

// head checks the response head of a streaming transport.
func (e *engine) head(c *conn, b []byte) (int, error) {
	var h respHead
	n, err := parseHead(b, &h)
	if err != nil {
		return 0, err
	}
	e.status = h.status
	if err := e.retryLater(&h); err != nil {
		return n, err
	}
	switch e.tr {
	case trSSE:
		if h.status != 200 {
			return 0, errStatus
		}
		if !hasPrefixFold(h.contentType, ctEventStream) {
			return 0, errType
		}
		c.flags &^= fChunked
		if h.chunked {
			c.flags |= fChunked // megacomet's own stream ends at the close; a proxy's may be chunked
		}
	case trStream:
		if h.status != 200 {
			return 0, errStatus
		}
		if !h.chunked {
			return 0, errFraming
		}
	case trWS:
		if h.status != 101 {
			return 0, errStatus
		}
		// RFC 6455 §4.1: the client must fail the connection unless the
		// answer upgrades to "websocket" with the accept value of our key.
		if !h.upgrade || !equalFold(h.upgradeTo, tokWebsocket) || !bytes.Equal(h.wsAccept, e.wsAcc) {
			return 0, errUpgrade
		}
	}
	c.state = stBody
	e.ready(c)
	if h.hasCursor {
		c.advance(h.cursor)
	}
	return n, nil
}

// retryLater recognises the server's "come back later": 503 with a
// Retry-After, which a draining worker answers a connection it hands over
// before answering it. That is an announced close, like a reconnect hint.
func (e *engine) retryLater(h *respHead) error {
	if h.status != 503 || h.retryAfter < 0 {
		return nil
	}
	e.retryAfter = min(h.retryAfter, 60) * 1000
	return errRetryAfter
}

// advance moves the cursor to what the server says this client has seen,
// never back: a reopen then resumes without a gap even before the first
// message.
func (c *conn) advance(cursor uint64) {
	if cursor > c.lastID {
		c.lastID = cursor
	}
}

var (
	ctEventStream = []byte("text/event-stream")
	tokWebsocket  = []byte("websocket")
	errUpgrade    = errors.New("megatest: WebSocket upgrade refused")
	errRetryAfter = errors.New("megatest: 503 with Retry-After") // announced
)

// ready: the server has answered, so it knows this client and messages
// published to it from now on are owed to it.
func (e *engine) ready(c *conn) {
	if c.flags&fReady == 0 {
		c.flags |= fReady | fCursor
		e.st.ready++
	}
	c.fails = 0
}

func (e *engine) sseEvent(c *conn, b []byte, now int64, idx int32) (int, error) {
	var ev sseEvent
	n, err := parseSSE(b, &ev, &e.scratch)
	if err != nil {
		return 0, err
	}
	if ev.retry >= 0 {
		e.retryHint = min(ev.retry, 60_000)
	}
	if ev.reconnect {
		c.flags |= fAnnounced
	}
	switch {
	case bytes.Equal(ev.event, sseExpired):
		// The server's notice that this connection's token expired; it
		// closes next, and we come back with a new token.
		c.flags |= fAnnounced
		e.st.expired++
	case bytes.Equal(ev.event, sseDisconnect):
		e.disconnected(c, ev.data)
	case bytes.Equal(ev.event, sseChannels):
		e.st.channelNotices++ // POST /subscribe changed its channels
	case ev.dataLines > 0:
		var m msgInfo
		if err := scanMessage(ev.data, e.tag, &m); err != nil {
			return 0, err
		}
		if ev.hasID && !m.gap && !uintEquals(ev.id, m.id) {
			return 0, errSSEID
		}
		e.message(idx, c, &m, now)
		e.arrived = true // the server's heartbeat wait restarts with a message too
	case ev.hasID:
		// An id without data dispatches nothing but sets the last event
		// id (megacomet opens every stream with one: the cursor).
		if v, end, ok := scanUint(ev.id, 0); ok && end == len(ev.id) {
			c.advance(v)
		}
	case ev.comments > 0 && ev.fields == 0 && !ev.reconnect:
		e.st.hb++
		e.arrived = true
	}
	return n, nil
}

// sseChunked reads an SSE stream in a chunked body, as a proxy (nginx)
// re-frames megacomet's close-delimited one: the whole chunks at the front
// of b are joined in place and their events parsed; an event not complete
// yet is written back, as one chunk of its own, right before the input not
// read, and stays for the next read. (It fits: the chunks it came from
// took at least as many bytes.)
func (e *engine) sseChunked(c *conn, b []byte, now int64, idx int32) (int, error) {
	raw, w, ended := 0, 0, false
	for !ended {
		n, payload, last, err := parseChunk(b[raw:])
		if err == errNeedMore {
			break
		}
		if err != nil {
			return 0, err
		}
		w += copy(b[w:], payload) // forward: a payload lies after its own header
		raw += n
		ended = last
	}
	off := 0
	for off < w {
		n, err := e.sseEvent(c, b[off:w], now, idx)
		if err == errNeedMore {
			break
		}
		if err != nil {
			return 0, err
		}
		off += n
	}
	if ended {
		return raw, errEnd
	}
	rest := w - off
	if rest == 0 {
		return raw, errNeedMore // what is left is a chunk not complete yet
	}
	hdr := strconv.AppendInt(e.hexBuf[:0], int64(rest), 16)
	start := raw - len(hdr) - 2 - rest - 2
	copy(b[start+len(hdr)+2:], b[off:w])
	copy(b[start:], hdr)
	copy(b[start+len(hdr):], "\r\n")
	copy(b[raw-2:], "\r\n")
	return start, errNeedMore
}

func uintEquals(b []byte, v uint64) bool {
	w, end, ok := scanUint(b, 0)
	return ok && end == len(b) && w == v
}

var errLine = errors.New("megatest: stream chunk does not end a line")

// lpExpired is in the body of megacomet's 401 for an expired token;
// streamExpired is the line a stream ends with for one.
var (
	lpExpired     = []byte(`"token expired"`)
	streamExpired = []byte(`{"error":"token expired"}`)
	// streamDisconnect opens a stream's last line for POST /disconnect;
	// sseDisconnect is the SSE event's name.
	streamDisconnect = []byte(`{"disconnect":`)
	sseDisconnect    = []byte("disconnect")
	// channelsNotice opens the notice of a connection's new channels
	// (POST /subscribe, /unsubscribe); sseChannels is its SSE event.
	channelsNotice = []byte(`{"channels":`)
	sseChannels    = []byte("channels")
	noReconnect    = []byte(`"reconnect":false`)
)

// chunk handles one chunk of the NDJSON stream: whole lines, each a
// message, an empty one a heartbeat; the last chunk is the server's
// hand-over notice.
func (e *engine) chunk(c *conn, b []byte, now int64, idx int32) (int, error) {
	n, payload, last, err := parseChunk(b)
	if err != nil {
		return 0, err
	}
	if last {
		return n, errEnd
	}
	if payload[len(payload)-1] != '\n' {
		return 0, errLine
	}
	e.arrived = true // every line is a heartbeat or a message: either restarts the server's wait
	for len(payload) > 0 {
		i := bytes.IndexByte(payload, '\n')
		line := payload[:i]
		payload = payload[i+1:]
		if k := len(line); k > 0 && line[k-1] == '\r' {
			line = line[:k-1]
		}
		if len(line) == 0 {
			e.st.hb++
			continue
		}
		if bytes.HasPrefix(line, channelsNotice) {
			e.st.channelNotices++ // POST /subscribe changed its channels
			continue
		}
		if bytes.HasPrefix(line, streamDisconnect) {
			e.disconnected(c, line) // the last chunk follows
			continue
		}
		if bytes.Equal(line, streamExpired) {
			// The server's notice that this connection's token expired;
			// the last chunk follows, and we come back with a new token.
			c.flags |= fAnnounced
			e.st.expired++
			continue
		}
		var m msgInfo
		if err := scanMessage(line, e.tag, &m); err != nil {
			return 0, err
		}
		e.message(idx, c, &m, now)
	}
	return n, nil
}

// lpAnswer handles one long-poll answer and sends the next poll with the
// cursor; an answer with Connection: close is the server's hand-over.
func (e *engine) lpAnswer(idx int32, c *conn, b []byte, now int64) (int, error) {
	var h respHead
	hn, err := parseHead(b, &h)
	if err != nil {
		return 0, err
	}
	e.status = h.status
	if err := e.retryLater(&h); err != nil {
		return hn, err
	}
	if h.status != 200 && h.status != 401 {
		return 0, errStatus
	}
	if h.chunked || h.contentLength < 0 || h.contentLength > maxEvent {
		return 0, errFraming
	}
	end := hn + int(h.contentLength)
	if len(b) < end {
		return 0, errNeedMore
	}
	if h.status == 401 {
		if !bytes.Contains(b[hn:end], lpExpired) {
			return 0, errStatus
		}
		// A held poll whose token expired: the server knew this client
		// and says where it was; come back from there with a new token.
		e.st.expired++
		e.ready(c)
		if h.hasCursor {
			c.advance(h.cursor)
		}
		return end, errEnd
	}
	count, err := lpBody(b[hn:end], func(body []byte, i int) (int, error) {
		var m msgInfo
		j, err := scanMessageAt(body, i, e.tag, &m)
		if err == nil {
			e.message(idx, c, &m, now)
		}
		return j, err
	})
	if err != nil {
		return 0, err
	}
	if count == 0 {
		e.st.hb++ // an empty answer after poll_timeout: the long-poll heartbeat
	}
	e.ready(c)
	if h.hasCursor {
		c.advance(h.cursor) // after the messages: they are not duplicates
	}
	if h.close {
		return end, errEnd
	}
	if !e.sendRequest(idx, c) {
		return end, errClosed
	}
	return end, nil
}

// message accounts one message: cursor, duplicates, and for our own
// messages the latency and the check-off.
func (e *engine) message(idx int32, c *conn, m *msgInfo, now int64) {
	if m.ack != 0 || m.refused {
		e.chatAnswer(idx, m)
		return
	}
	if m.gap {
		// What the server says may be missing: owed ids in it are not
		// lost, and the cursor moves past it.
		e.st.gaps++
		if e.ledger != nil {
			e.ledger.gap(uint32(idx), m.after, m.before)
		}
		if m.before > 0 {
			c.advance(m.before - 1)
		}
		return
	}
	e.st.msgs++
	if m.id <= c.lastID {
		e.st.dups++
		return
	}
	c.lastID = m.id
	if m.kind == kindNone {
		return
	}
	us := uint64(max(now-m.t, 0)) / 1000
	e.tagged.add(us)
	e.taggedV++
	switch m.kind {
	case kindPub:
		e.lat.add(us)
		e.latV++
		e.ledger.delivered(uint32(idx), m.id)
	case kindChat:
		e.st.chatRecv++
		e.chatLat.add(us)
		e.chatLatV++
	case kindBcast:
		r := m.seq
		if r == 0 || r > maxRounds || uint32(r) <= c.round {
			return
		}
		c.round = uint32(r)
		for uint64(len(e.rounds)) < r {
			e.rounds = append(e.rounds, round{})
		}
		rd := &e.rounds[r-1]
		if rd.h == nil {
			rd.h = new(hist)
		}
		rd.recv++
		rd.h.add(us)
		rd.v++
	}
}

// wsFrame handles one WebSocket message or control frame.
func (e *engine) wsFrame(idx int32, c *conn, b []byte, now int64) (int, error) {
	n, f, err := parseWSMessage(b, &e.scratch)
	if err != nil {
		return 0, err
	}
	switch f.op {
	case wsText:
		// RFC 6455 §8.1: text that is not UTF-8 must fail the connection.
		if !utf8.Valid(f.payload) {
			return 0, errWSUTF8
		}
		if bytes.HasPrefix(f.payload, channelsNotice) {
			e.st.channelNotices++ // POST /subscribe changed its channels
			return n, nil
		}
		var m msgInfo
		if err := scanMessage(f.payload, e.tag, &m); err != nil {
			return 0, err
		}
		e.message(idx, c, &m, now)
	case wsBinary:
		return 0, errWSBinary
	case wsPing:
		e.st.hb++
		e.arrived = true // only pings: the server pings every interval, messages or not
		// RFC 6455 §5.5.3: a Pong in response carries the Ping's payload.
		e.wbuf = appendWSFrame(e.wbuf[:0], wsPong, f.payload, uint32(e.rand()))
		if !e.write(idx, c, e.wbuf) {
			return n, errClosed
		}
	case wsClose:
		code := f.closeCode()
		e.wbuf = appendWSClose(e.wbuf[:0], code, uint32(e.rand()))
		unixWriteIgnore(c.fd, e.wbuf)
		if code == wsServiceRestart {
			return n, errEnd
		}
		if code == wsTokenExpired {
			e.st.expired++
			return n, errEnd
		}
		if code == wsDisconnected || code == wsGone {
			e.st.disconnected++
			if code == wsGone {
				c.flags |= fGone
			}
			return n, errEnd
		}
		return n, errWSClosed
	}
	return n, nil
}

// disconnected notes the server's notice of a POST /disconnect (its JSON
// in b): an announced close, and with reconnect false one not reopened.
func (e *engine) disconnected(c *conn, b []byte) {
	c.flags |= fAnnounced
	e.st.disconnected++
	if bytes.Contains(b, noReconnect) {
		c.flags |= fGone
	}
}
