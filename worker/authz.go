package worker

import (
	"bytes"
	"strconv"
	"time"

	"github.com/gobwas/ws"
	"github.com/megacomet/megacomet/auth"
	"github.com/megacomet/megacomet/hooks"
	"github.com/megacomet/megacomet/ipc"
)

// Client tokens (auth/) on the worker's side. A comet request's token is
// checked once, when it subscribes: from ?token=, Authorization: Bearer or
// the auth cookie, against the id of its URL and the channels it asks for.
// What the connection keeps of it: its expiry, as a tick in conn.token once
// the join is in (while the join is out, in its awaiter: conn.token is the
// join's token then), flagged fExp - a field every connection has, so an
// idle connection costs no more with auth on - and, for a WebSocket
// connection whose token limits channels, that claim in connExtra, for the
// subscribes it may send later. The token itself is not kept.
//
// Expiry ends the connection with its transport's announced close, so the
// client comes back with a fresh token and its cursor: SSE an "expired"
// event, a stream the line {"error":"token expired"} and its last chunk, a
// long-poll 401, WebSocket close 4001.

var keyToken = []byte("token")

// wsStatusTokenExpired is the close code of an expired token: 4000-4999
// are the application's (RFC 6455 §7.4.2).
const wsStatusTokenExpired ws.StatusCode = 4001

// grant is what authorize found, for the subscribe that follows.
type grant struct {
	admitted bool     // a token was verified: the connect hook is not asked
	exp      uint32   // expiry tick, 0 = none
	allowed  []string // the channels claim; nil = any
	publish  []string // the publish claim; nil = none
}

// authorize checks the request's token for client id and the channels it
// asks for. When it refuses, the client has its answer and the connection
// lingers.
func (w *Worker) authorize(cc *conn, r *request, q *query, id []byte, tr transport) (grant, bool) {
	if w.auth == nil {
		return grant{}, true
	}
	tok, ambient := tokenOf(r, q, w.auth.Cookie())
	if ambient {
		if e := w.ambientRefusal(r, q, tr); e != nil {
			w.refuse(cc, r.origin, e, 0)
			return grant{}, false
		}
	}
	if len(tok) == 0 && (!w.auth.Required() || w.hooks.On(hooks.Connect)) {
		return grant{}, true // the connect hook decides, if there is one
	}
	claims, err := w.auth.Verify(string(tok), string(id))
	if err != nil {
		w.refuse(cc, r.origin, err.(*auth.Refusal), 0)
		return grant{}, false
	}
	if w.isRevoked(id, claims) { // kick.go
		w.refuse(cc, r.origin, errRevoked, 0)
		return grant{}, false
	}
	for _, ch := range q.channels() {
		if !claims.Allows(string(ch)) && !w.hooks.On(hooks.Subscribe) { // else the subscribe hook decides (park.go)
			w.refuse(cc, r.origin, auth.ChannelRefused(string(ch)), 0)
			return grant{}, false
		}
	}
	g := grant{admitted: true, allowed: claims.Channels, publish: claims.Publish}
	if claims.ExpiresAt != nil {
		g.exp = w.expiryTick(claims.ExpiresAt.Time)
	}
	return g, true
}

// tokenOf finds the token: the query, then Authorization: Bearer, then the
// cookie. ambient says it came from the cookie, which the browser attaches
// by itself, whatever page started the request.
func tokenOf(r *request, q *query, cookie string) (tok []byte, ambient bool) {
	if len(q.token) > 0 {
		return q.token, false
	}
	if a := r.authorization; len(a) > 7 && asciiEqualFold(a[:7], []byte("bearer ")) {
		return trimOWS(a[7:]), false
	}
	if cookie == "" {
		return nil, false
	}
	for c := r.cookie; len(c) > 0; {
		var kv []byte
		kv, c = cutByte(c, ';')
		if k, v, ok := bytes.Cut(trimOWS(kv), []byte{'='}); ok && string(k) == cookie {
			return v, true
		}
	}
	return nil, false
}

// Ambient credentials. A browser sends the auth cookie with every request
// to this server, whichever page starts it: a <script> tag or a WebSocket
// on another site included (SameSite=None, or a sibling subdomain, which
// is same-site). So the cookie counts only where the browser says the page
// is one of ours:
//   - never for JSONP (a callback=, or Sec-Fetch-Dest: script): a <script>
//     runs the answer in the including page, whatever its origin, so that
//     page would read it. JSONP takes ?token=;
//   - on a WebSocket handshake, only with an Origin in
//     server.allowed_origins: browsers apply no CORS to WebSocket;
//   - on other requests, with an Origin in the list, or, without an Origin
//     (a same-origin GET, a navigation), when Sec-Fetch-Site says
//     same-origin, same-site or none. A cross-site page's request that
//     carries no Origin is one whose answer it cannot read anyway, but it
//     is refused all the same.
//
// A token passed explicitly (?token=, Authorization) is not ambient: the
// page that sends it has it.
var (
	errCookieJSONP     = &auth.Refusal{Status: 403, Reason: "cookie credentials are not accepted for JSONP (a <script> request): send ?token="}
	errCookieNoOrigin  = &auth.Refusal{Status: 403, Reason: "cookie credentials are not accepted on a WebSocket handshake without an Origin in server.allowed_origins"}
	errCookieCrossSite = &auth.Refusal{Status: 403, Reason: "cookie credentials are not accepted on a cross-site request (Sec-Fetch-Site)"}

	strScript     = []byte("script")
	sameSiteValue = [][]byte{[]byte("same-origin"), []byte("same-site"), []byte("none")}
)

// ambientRefusal says why the cookie's token may not be used for this
// request, or nil when it may.
func (w *Worker) ambientRefusal(r *request, q *query, tr transport) *auth.Refusal {
	if len(q.callback) > 0 || asciiEqualFold(r.fetchDest, strScript) {
		return errCookieJSONP
	}
	if len(r.origin) > 0 {
		// Named in server.allowed_origins: "*" names no page (a cookie
		// with "*" is a config error; a hook forwarding Cookie then never
		// forwards it with an Origin, park.go).
		if _, ours := w.origins[string(r.origin)]; ours && string(r.origin) != "*" {
			return nil
		}
		return cookieOriginRefused(r.origin)
	}
	if tr == trWS {
		return errCookieNoOrigin
	}
	for _, v := range sameSiteValue {
		if asciiEqualFold(r.fetchSite, v) {
			return nil
		}
	}
	return errCookieCrossSite
}

// cookieOriginRefused names the origin that was refused, printable ASCII
// only and at most 100 bytes of it (it is the client's).
func cookieOriginRefused(origin []byte) *auth.Refusal {
	o := make([]byte, 0, min(len(origin), 100))
	for _, c := range origin[:min(len(origin), 100)] {
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			c = '?'
		}
		o = append(o, c)
	}
	return &auth.Refusal{Status: 403, Reason: "cookie credentials are not accepted from origin " + string(o)}
}

// refuse answers a refused token: the status and a one-line JSON reason,
// with CORS so a page's fetch can read it, then closes. A long-poll that
// was held until its token expired also gets its cursor (X-Megacomet-Cursor),
// to poll again after with a new token.
func (w *Worker) refuse(cc *conn, origin []byte, e *auth.Refusal, cursor uint64) {
	w.counts.BadRequests++
	w.counts.AuthRefused++
	w.answerRefusal(cc, origin, e, cursor)
}

// answerRefusal writes a refusal's answer - 401, 403, or 503 with
// Retry-After when the application's hook failed (park.go) - and closes.
func (w *Worker) answerRefusal(cc *conn, origin []byte, e *auth.Refusal, cursor uint64) {
	body := strconv.AppendQuote(append(w.body[:0], `{"error":`...), e.Reason)
	body = append(body, "}\n"...)
	w.body = body
	b := append(w.scratch[:0], "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(e.Status), 10)
	switch e.Status {
	case 401:
		b = append(b, " Unauthorized\r\nWWW-Authenticate: Bearer\r\n"...)
	case 503:
		b = append(b, " Service Unavailable\r\nRetry-After: 1\r\n"...)
	default:
		b = append(b, " Forbidden\r\n"...)
	}
	b = w.appendCORS(b, origin)
	if cursor != 0 {
		b = appendCursor(b, cursor)
	}
	b = append(b, "Content-Type: application/json\r\nCache-Control: no-store\r\nConnection: close\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	b = append(append(b, "\r\n\r\n"...), body...)
	w.scratch = b
	w.send(cc, b)
	w.linger(cc)
}

// expiryTick is the tick at which a token valid until t expires (at least
// the next one; a date past what a tick counter holds is capped, and the
// client then checks in again with the same token).
func (w *Worker) expiryTick(t time.Time) uint32 {
	d := time.Until(t)
	ticks := int64(d/tickEvery) + 1
	ticks = min(max(ticks, 1), 1<<31-1)
	return w.tick + uint32(ticks)
}

// expOf is the connection's expiry tick (0: none).
func (w *Worker) expOf(cc *conn) uint32 {
	switch {
	case cc.flags&fAwaiting != 0:
		return w.awaiting[cc.token].exp
	case cc.flags&fExp != 0:
		return cc.token
	}
	return 0
}

// setExpiry is the join's part: the connection goes live with its expiry,
// and its timer comes no later than that.
func (w *Worker) setExpiry(cc *conn, exp uint32) {
	cc.token = exp
	cc.flags |= fExp
	if cc.flags&fWheel != 0 {
		w.schedule(cc, cc.due) // clamped to the expiry
	}
}

// clampExpiry brings a timer forward to the connection's expiry.
func (w *Worker) clampExpiry(cc *conn, due uint32) uint32 {
	if cc.flags&fExp == 0 || int32(cc.token-due) >= 0 {
		return due
	}
	if next := w.wheelAt + 1; int32(cc.token-next) < 0 {
		return next // expired already: the next slot the wheel walks
	}
	return cc.token
}

// expired reports whether the connection's token has expired.
func (w *Worker) expired(cc *conn) bool {
	return cc.flags&fExp != 0 && int32(w.tick-cc.token) >= 0
}

var (
	sseExpired       = []byte("event: expired\ndata: {\"error\":\"token expired\"}\n\n")
	chunkExpired     = []byte("1a\r\n{\"error\":\"token expired\"}\n\r\n0\r\n\r\n") // a line of its own, then the last chunk
	wsCloseExpired   = ws.MustCompileFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(wsStatusTokenExpired, "token expired")))
	errTokenExpired  = auth.ErrExpired
	wsChannelRefused = []byte(`{"error":"token does not allow channel `)
)

// endExpired ends a connection whose token expired, with its transport's
// announced close.
func (w *Worker) endExpired(cc *conn) {
	w.counts.TokensExpired++
	w.bye = ipc.ByeExpired
	defer func() { w.bye = ipc.ByeClosed }()
	switch cc.state {
	case stStreaming:
		switch {
		case cc.tr == trWS:
			w.wsClose(cc, wsCloseExpired)
			return
		case cc.tr == trSSE:
			w.send(cc, sseExpired)
		case cc.flags&fRaw == 0:
			w.send(cc, chunkExpired)
		default:
			w.send(cc, chunkExpired[4:len(chunkExpired)-7]) // HTTP/1.0: the line, then the close
		}
		w.linger(cc)
	case stPolling:
		var origin []byte
		if cc.x != nil {
			origin = cc.x.origin // as the poll's answer would have carried
		}
		cursor := cc.cursor
		w.unsubscribe(cc)
		w.refuse(cc, origin, errTokenExpired, cursor)
	default:
		w.linger(cc)
	}
}

// wsMayJoinNow checks a WebSocket subscribe against the channels its token
// (or the connect hook) granted. Outside them, the subscribe hook decides,
// and the subscribe waits for it (park.go); without one, the refusal is an
// error frame, and the connection stays.
func (w *Worker) wsMayJoinNow(cc *conn, channel []byte) bool {
	if cc.x == nil || cc.x.allowed == nil || auth.Allows(cc.x.allowed, string(channel)) {
		return true
	}
	if w.hooks.On(hooks.Subscribe) {
		w.ask(cc, hooks.Subscribe, string(channel), nil)
		return false
	}
	w.counts.AuthRefused++
	msg := append(append(append(w.body[:0], wsChannelRefused...), channel...), `"}`...)
	w.body = msg
	w.send(cc, appendWSText(w.scratch[:0], msg))
	return false
}
