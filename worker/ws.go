package worker

import (
	"errors"
	"io"
	"net/http"
	"strconv"
	"unicode/utf8"

	"github.com/gobwas/ws"
	"github.com/megacomet/megacomet/ipc"
)

// The WebSocket transport, /ws/ID (RFC 6455), on the same loop as the
// other transports.
//
//   - Handshake: serve1 routes /ws/ here once the request head is parsed;
//     ws.Upgrader checks it and writes the 101 answer (startWS).
//   - Server to client: one unmasked text frame per message, rendered once
//     per fan-out (deliver.go, renderWS); a ping every heartbeat interval;
//     close 1012 on hand-over (wheel.go handOff), then linger for the
//     client's close.
//   - Client to server: clientData hands a WebSocket connection's input to
//     wsData, which parses complete frames in evio's buffer and unmasks
//     them in place; only a frame split across reads is copied, into
//     connExtra.in, and only a fragmented message in progress holds a
//     wsMessage. An idle WebSocket connection costs what an idle SSE one
//     does. A message in progress is bounded three ways: its size
//     (comet.ws_max_message, 1009), its age (comet.ws_fragment_timeout of
//     live time, the connection's one timer standing in for its next
//     heartbeat while the deadline comes first) and the bytes of all such
//     messages on the worker (wsHeldMax); past the last two, 1008.
//   - Liveness: fPing says a ping is unanswered and lastTx holds the live
//     tick (clock.go) the oldest unanswered one went out; a pong clears
//     it. A connection whose ping is two heartbeat intervals of live time
//     old, with nothing unread in its socket, is failed (wsHeartbeat).
//
// Text messages from the client are commands: {"since":N} resumes after N,
// {"subscribe":"c"} and {"unsubscribe":"c"} change the channel set; each
// re-joins through the manager, which replays from the cursor.

var prefixWS = []byte("/ws/")

// wsMessage is a fragmented text message being assembled (§5.4).
type wsMessage struct {
	buf   []byte
	begun uint32 // the live tick its first frame was read (clock.go)
	hbDue uint32 // the connection's next heartbeat, while its timer is the deadline (wsSchedule)
}

// wsHeldMax bounds the bytes of unfinished messages one worker holds, all
// its connections together: 1,024 clients at the default
// comet.ws_max_message, four at its largest. Each connection's is bounded
// by ws_max_message and in time by comet.ws_fragment_timeout; this bounds
// many clients that begin messages at once. (Counted as the bytes read;
// the buffers' capacity may be up to about twice that while they grow.)
const wsHeldMax = 64 << 20

var errWSOrigin = newHTTPError(403, "Forbidden", "origin not allowed")

// wsUpgrader checks the handshake (§4.2.1) and writes the answer (§4.2.2).
// megacomet speaks one subprotocol, wsProtocol: a client that offers it
// (among others) is answered with it; other names are not ours to claim,
// so a client that offers only those gets no Sec-WebSocket-Protocol, and a
// browser then fails the connection, as §4.1 lets it.
var wsUpgrader = ws.Upgrader{Protocol: func(p []byte) bool { return string(p) == wsProtocol }}

// wsProtocol is the subprotocol megacomet speaks (docs/PROTOCOL.md).
const wsProtocol = "megacomet.v1"

// handshakeErrors are ws.Upgrader's rejections as our prebuilt answers
// (Connection: close, no client bytes echoed).
var handshakeErrors = func() map[error]*httpError {
	m := make(map[error]*httpError)
	for _, err := range []error{ws.ErrHandshakeBadProtocol, ws.ErrHandshakeBadMethod, ws.ErrHandshakeBadHost,
		ws.ErrHandshakeBadUpgrade, ws.ErrHandshakeBadConnection, ws.ErrHandshakeBadSecKey,
		ws.ErrHandshakeBadSecVersion, ws.ErrHandshakeUpgradeRequired, ws.ErrMalformedRequest} {
		var extra []string
		if err == ws.ErrHandshakeUpgradeRequired {
			// §4.2.2: "a |Sec-WebSocket-Version| header field indicating
			// the version(s) the server is capable of understanding".
			extra = append(extra, "Sec-WebSocket-Version: 13")
		}
		status := 400
		var rej *ws.ConnectionRejectedError
		if errors.As(err, &rej) && rej.StatusCode() != 0 {
			status = rej.StatusCode()
		}
		m[err] = newHTTPError(status, http.StatusText(status), err.Error(), extra...)
	}
	return m
}()

var errWSHandshake = newHTTPError(400, "Bad Request", "bad WebSocket handshake")

// handshakeIO is the connection ws.Upgrader sees: the request head we
// parsed, and a buffer for its answer.
type handshakeIO struct {
	in, out []byte
}

func (h *handshakeIO) Read(p []byte) (int, error) {
	if len(h.in) == 0 {
		return 0, io.EOF
	}
	n := copy(p, h.in)
	h.in = h.in[n:]
	return n, nil
}

func (h *handshakeIO) Write(p []byte) (int, error) {
	h.out = append(h.out, p...)
	return len(p), nil
}

// appendHandshake writes the parts of a parsed request head that the
// handshake depends on back into request form for ws.Upgrader. Host is
// not kept by parseRequest (megacomet answers any host), so a placeholder
// stands in for it.
func appendHandshake(b []byte, r *request) []byte {
	b = append(b, r.method...)
	if r.http11 {
		b = append(b, " / HTTP/1.1\r\nHost: megacomet\r\n"...)
	} else {
		b = append(b, " / HTTP/1.0\r\nHost: megacomet\r\n"...)
	}
	if r.upgrade {
		b = append(b, "Connection: Upgrade\r\n"...)
	}
	for _, h := range [...]struct {
		name  string
		value []byte
	}{
		{"Upgrade: ", r.upgradeTo},
		{"Sec-WebSocket-Version: ", r.wsVersion},
		{"Sec-WebSocket-Key: ", r.wsKey},
		{"Sec-WebSocket-Protocol: ", r.wsProtocol},
	} {
		if h.value != nil {
			b = append(append(append(b, h.name...), h.value...), "\r\n"...)
		}
	}
	return append(b, "\r\n"...)
}

// startWS answers a request for /ws/ID: the handshake, then the connection
// streams like an SSE one.
func (w *Worker) startWS(cc *conn, r *request, id []byte) {
	since, ok := w.subscription(cc, r, id, trWS)
	if !ok {
		return
	}
	q := &w.q
	// §10.2: "Servers that are not intended to process input from any web
	// page but only for certain sites SHOULD verify the |Origin| field".
	// Browsers apply no CORS to WebSocket, so server.allowed_origins is
	// enforced here.
	if len(r.origin) > 0 && !w.allowed(r.origin) {
		w.reject(cc, errWSOrigin)
		return
	}
	// The answer tells the client its starting cursor, as every comet
	// answer does (a per-handshake allocation; the handshake makes others).
	u := wsUpgrader
	u.Header = ws.HandshakeHeaderBytes(appendCursor(nil, since))
	hs := &handshakeIO{in: appendHandshake(w.body[:0], r), out: w.scratch[:0]}
	w.body = hs.in[:0]
	_, err := u.Upgrade(hs)
	w.scratch = hs.out
	if err != nil {
		e := handshakeErrors[err]
		if e == nil {
			e = errWSHandshake
		}
		w.reject(cc, e)
		return
	}
	a := admission{id: id, tr: trWS, since: since, fresh: w.fresh, origin: r.origin, channels: q.channels(),
		grant: w.grant, ws101: hs.out, cursorFrame: q.cursor}
	if w.mustAsk(&a) {
		w.park(cc, r, &a) // park.go
		return
	}
	w.admit(cc, &a)
}

// admitWS answers an admitted WebSocket handshake and subscribes it.
func (w *Worker) admitWS(cc *conn, a *admission) {
	out := a.ws101
	if a.cursorFrame {
		// Browsers cannot read the 101 answer's X-Megacomet-Cursor; asked
		// with cursor=1, the first frame carries it, so a page can resume
		// without a gap even before its first message.
		w.body = strconv.AppendUint(append(w.body[:0], `{"cursor":`...), a.since, 10)
		w.body = append(w.body, '}')
		out = appendWSText(out, w.body)
		w.scratch = out
	}
	w.send(cc, out)
	if cc.state == stDead {
		return
	}
	cc.tr, cc.state = trWS, stStreaming
	cc.flags &^= fClose | fPing
	if a.grant.allowed != nil {
		cc.extra().allowed = a.grant.allowed // for its later subscribes (authz.go)
	}
	if a.grant.publish != nil {
		cc.extra().publish = a.grant.publish // for its publishes (publish.go)
	}
	w.subscribe(cc, a.id, a.channels, a.since, a.grant.exp)
	w.startHeartbeats(cc)
}

// maxWSHeader is the longest frame header (RFC 6455 §5.2).
const maxWSHeader = 14

// wsData reads a WebSocket connection's input: complete frames are parsed
// and unmasked where evio read them; a frame split across reads waits in
// connExtra.in for the rest.
func (w *Worker) wsData(cc *conn, in []byte) {
	buf := in
	if cc.x != nil && len(cc.x.in) > 0 {
		cc.x.in = append(cc.x.in, in...)
		buf = cc.x.in
	}
	limit := int64(w.opts.Comet.WSMaxMessage)
	var f wsFrame
	for len(buf) > 0 && cc.state == stStreaming {
		if cc.x != nil && cc.x.asking != 0 {
			// A command waits for the application (park.go): what follows
			// waits for its answer, as much as a message may be.
			if len(buf) > int(limit)+maxWSHeader {
				w.wsFail(cc, errWSAsking)
				return
			}
			break
		}
		n, err := parseFrame(buf, &f, cc.x != nil && cc.x.ws != nil, limit)
		if err == errNeedMore {
			break
		}
		if err != nil {
			w.wsFail(cc, err.(*wsError))
			return
		}
		buf = buf[n:]
		w.wsFrame(cc, &f)
	}
	switch {
	case cc.state != stStreaming: // closed: linger or kill dropped the input
	case len(buf) == 0:
		if cc.x != nil && cc.x.in != nil {
			cc.x.in = nil
			cc.tidy()
		}
	case cc.x != nil && len(cc.x.in) > 0: // buf is the tail of x.in
		cc.x.in = append(cc.x.in[:0], buf...)
	default:
		cc.extra().in = append([]byte(nil), buf...)
	}
}

// wsFrame acts on one complete, checked client frame.
func (w *Worker) wsFrame(cc *conn, f *wsFrame) {
	p := f.payload
	// §5.3: the client masks every frame; unmasking is the same XOR.
	ws.Cipher(p, f.Mask, 0)
	switch f.OpCode {
	case ws.OpPing:
		if !w.wsControlAllowed(cc) {
			w.counts.WSControlLimited++
			w.wsFail(cc, errWSControlRate)
			return
		}
		// §5.5.2: "Upon receipt of a Ping frame, an endpoint MUST send a
		// Pong frame in response"; §5.5.3: with "identical Application
		// data".
		if len(p) == 0 {
			w.send(cc, wsPong)
		} else {
			w.send(cc, w.wsControl(ws.OpPong, p))
		}
	case ws.OpPong:
		// §5.5.3: a pong may answer any ping, or none ("unsolicited ... a
		// unidirectional heartbeat"): either way the client is alive.
		cc.flags &^= fPing
	case ws.OpClose:
		w.wsPeerClose(cc, p)
	case ws.OpBinary:
		// §7.4.1: 1003 "it has received a type of data it cannot accept".
		w.wsFail(cc, errWSBinary)
	case ws.OpText:
		if f.Fin {
			w.wsMessage(cc, p)
			return
		}
		if !w.wsHold(cc, len(p)) {
			return
		}
		m := &wsMessage{buf: append([]byte(nil), p...), begun: w.live, hbDue: cc.due}
		cc.extra().ws = m
		w.wsSchedule(cc, m.hbDue) // the deadline, if it comes before the heartbeat
	case ws.OpContinuation: // parseFrame let it through: a message is open
		m := cc.x.ws
		if len(m.buf)+len(p) > w.opts.Comet.WSMaxMessage {
			w.wsFail(cc, errWSTooBig)
			return
		}
		if !w.wsHold(cc, len(p)) {
			return
		}
		m.buf = append(m.buf, p...)
		if f.Fin {
			w.wsDropMessage(cc)
			cc.tidy()
			if cc.due != m.hbDue { // back to the heartbeat, not before the wheel's next slot
				due := m.hbDue
				if next := w.wheelAt + 1; int32(due-next) < 0 {
					due = next
				}
				w.schedule(cc, due)
			}
			w.wsMessage(cc, m.buf)
		}
	}
}

// wsHold counts n more bytes of an unfinished message against wsHeldMax,
// or fails the connection (1008) when they would pass it.
func (w *Worker) wsHold(cc *conn, n int) bool {
	if w.wsHeld+n > w.wsHeldMax {
		w.counts.WSFragmentClosed++
		w.wsFail(cc, errWSHeld)
		return false
	}
	w.wsHeld += n
	return true
}

// wsDropMessage lets go of cc's unfinished message, if it has one: done,
// failed, or the connection closing.
func (w *Worker) wsDropMessage(cc *conn) {
	if cc.x == nil || cc.x.ws == nil {
		return
	}
	w.wsHeld -= len(cc.x.ws.buf)
	cc.x.ws = nil
}

// wsSchedule sets a WebSocket connection's timer: its next heartbeat at
// tick due or, while a message is unfinished and its deadline comes first,
// the deadline (the heartbeat's tick kept in the message meanwhile). The
// deadline is on live time, as a ping's silence is: a worker that was
// stopped or starved does not count that time against its client.
func (w *Worker) wsSchedule(cc *conn, due uint32) {
	if m := cc.x; m != nil && m.ws != nil {
		m.ws.hbDue = due
		deadline := w.tick + 1 // live time has reached it already
		if age := w.live - m.ws.begun; age < w.fragTicks {
			deadline = w.tick + (w.fragTicks - age)
		}
		if int32(deadline-due) < 0 {
			due = deadline
		}
	}
	w.schedule(cc, due)
}

// wsControl builds a control frame (at most 125 bytes of payload) in the
// loop's scratch buffer; send copies what the socket does not take.
func (w *Worker) wsControl(op ws.OpCode, p []byte) []byte {
	b := appendWSHeader(w.scratch[:0], op, len(p))
	b = append(b, p...)
	w.scratch = b
	return b
}

// wsPeerClose answers the client's close frame and lingers for its end of
// the TCP connection.
func (w *Worker) wsPeerClose(cc *conn, p []byte) {
	// §5.5.1: "If there is a body, the first two bytes of the body MUST be
	// a 2-byte unsigned integer ... Following the 2-byte integer, the body
	// MAY contain UTF-8-encoded data"; §7.4 lists the codes a peer may send.
	switch {
	case len(p) == 0:
		// "If an endpoint receives a Close frame and did not previously
		// send a Close frame, the endpoint MUST send a Close frame in
		// response."
		w.wsClose(cc, wsCloseEmpty)
	case len(p) == 1:
		w.wsFail(cc, errWSCloseBody)
	default:
		code, reason := ws.ParseCloseFrameDataUnsafe(p)
		if !validCloseCode(code) || !utf8.ValidString(reason) {
			w.wsFail(cc, errWSCloseBody)
			return
		}
		// "the endpoint typically echos the status code it received"
		w.wsClose(cc, w.wsControl(ws.OpClose, p[:2]))
	}
}

// wsClose sends a close frame and lingers: the client answers with its own
// close and then closes the TCP connection, which ends ours (§7.1.1: the
// server closes first only after the handshake; lingering bounds the wait).
func (w *Worker) wsClose(cc *conn, frame []byte) {
	w.wsDropMessage(cc)
	w.send(cc, frame)
	w.linger(cc)
}

// wsFail is §7.1.7 _Fail the WebSocket Connection_ with e's status.
func (w *Worker) wsFail(cc *conn, e *wsError) {
	w.counts.BadRequests++
	w.wsClose(cc, e.frame)
}

// wsHandOff tells a client to reconnect elsewhere (reload, stop): 1012,
// service restart. handOff lingers after it.
func (w *Worker) wsHandOff(cc *conn) {
	w.wsDropMessage(cc)
	w.send(cc, wsCloseReload)
}

// wsHeartbeat pings every interval, whether or not messages went out: a
// ping is also how the server learns the client still reads (§5.5.2).
//
// Silence is what the worker has read, in the time it kept up: the age of
// the oldest unanswered ping is counted on the live clock, which leaves
// out the loop's own lag (a stopped or starved worker), and a client whose
// bytes sit unread in its socket - perhaps the pong - is not judged until
// the loop has read them.
func (w *Worker) wsHeartbeat(cc *conn) {
	if m := cc.x; m != nil && m.ws != nil {
		switch {
		case w.live-m.ws.begun < w.fragTicks:
			if int32(m.ws.hbDue-w.tick) > 0 {
				// The deadline's tick came before live time reached it
				// (the loop was behind): not yet, and not the heartbeat's
				// turn either.
				w.wsSchedule(cc, m.ws.hbDue)
				return
			}
		case cc.unread():
			w.schedule(cc, w.tick+1) // its end may be there: read first, then judge
			return
		default:
			w.counts.WSFragmentClosed++
			w.wsFail(cc, errWSFragTimeout)
			return
		}
	}
	if cc.flags&fPing != 0 && w.live-cc.lastTx >= 2*w.hbTicks {
		if cc.unread() {
			w.schedule(cc, w.tick+1) // read first, then judge
			return
		}
		w.counts.SilentClosed++ // not a bad request: counted apart
		w.bye = ipc.ByeTimeout
		w.wsClose(cc, errWSNoPong.frame)
		w.bye = ipc.ByeClosed
		return
	}
	if cc.flags&fPing == 0 {
		cc.flags |= fPing
		cc.lastTx = w.live // the oldest unanswered ping
	}
	w.send(cc, wsPing)
	if cc.state == stDead {
		return
	}
	w.counts.Heartbeats++
	w.wsSchedule(cc, w.tick+w.hbTicks)
}
