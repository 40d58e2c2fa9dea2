package worker

import (
	"strconv"
	"time"

	"github.com/gobwas/ws"
	"github.com/megacomet/megacomet/auth"
	"github.com/megacomet/megacomet/ipc"
)

// Disconnects (POST /disconnect on the manager, a TypeDisconnect frame to
// every worker): each connection of the id ends with its transport's
// announced close, saying why and whether it may come back. A ban refuses
// the id's new connections, 403 with the reason, until it ends; every
// worker gets the frame, so every worker holds the ban, and the manager
// sends the bans in force to a worker that starts later.

// The WebSocket close codes of a disconnect: the client may come back, or
// should not (4000-4999 is for applications, RFC 6455 §7.4.2).
const (
	wsStatusDisconnected ws.StatusCode = 4002
	wsStatusGone         ws.StatusCode = 4003
)

// ban is an id's refusal: until (unix seconds), and why.
type ban struct {
	until  int64
	reason string
}

// disconnect applies a TypeDisconnect frame.
func (w *Worker) disconnect(p []byte) {
	d, err := ipc.ParseDisconnect(p)
	if err != nil {
		w.log.Warn("ignoring a bad disconnect frame", "err", err)
		return
	}
	if int64(d.BanUntil) > time.Now().Unix() {
		w.inForce([]ipc.Disconnect{d}, nil)
	}
	var conns []*conn
	for cc := w.byID.getString(d.ID); cc != nil; cc = cc.inext {
		conns = append(conns, cc)
	}
	body := strconv.AppendQuote([]byte(`{"reason":`), d.Reason)
	body = append(strconv.AppendBool(append(body, `,"reconnect":`...), d.Reconnect), '}')
	w.bye = ipc.ByeKicked
	for _, cc := range conns {
		w.kick(cc, &d, body)
	}
	w.bye = ipc.ByeClosed
	w.counts.Disconnected += uint64(len(conns))
}

// kick ends cc for d, body being {"reason":…,"reconnect":…}.
func (w *Worker) kick(cc *conn, d *ipc.Disconnect, body []byte) {
	switch cc.state {
	case stStreaming:
		switch {
		case cc.tr == trWS:
			code := wsStatusDisconnected
			if !d.Reconnect {
				code = wsStatusGone
			}
			w.wsClose(cc, ws.MustCompileFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(code, d.Reason))))
			return
		case cc.tr == trSSE:
			w.send(cc, append(append([]byte("event: disconnect\ndata: "), body...), "\n\n"...))
		default:
			line := append(append([]byte(`{"disconnect":`), body...), "}\n"...)
			if cc.flags&fRaw == 0 {
				line = append(append(strconv.AppendInt(nil, int64(len(line)), 16), "\r\n"...), line...)
				line = append(line, "\r\n0\r\n\r\n"...) // the line, then the last chunk
			}
			w.send(cc, line)
		}
		w.linger(cc)
	case stPolling:
		if d.Reconnect {
			cc.flags |= fClose
			w.startPoll(cc)
			w.finishPoll(cc) // [] with Connection: close: it polls again
			return
		}
		var origin []byte
		if cc.x != nil {
			origin = cc.x.origin
		}
		cursor := cc.cursor
		w.unsubscribe(cc)
		w.refuse(cc, origin, &auth.Refusal{Status: 403, Reason: d.Reason}, cursor) // final
	}
}

// banned is why id may not connect now, if it may not.
func (w *Worker) banned(id []byte) (string, bool) {
	b, ok := w.bans[string(id)]
	if !ok {
		return "", false
	}
	if time.Now().Unix() >= b.until {
		delete(w.bans, string(id))
		return "", false
	}
	return b.reason, true
}

// channelChange applies a TypeChannel frame (POST /subscribe or
// /unsubscribe): every streaming connection of the id joins or leaves the
// channel and is told its channels now ({"channels":[…]}: an SSE event, a
// WebSocket text frame, a stream line). It joins again from its own
// cursor, so what the channel had after the last message it got comes
// first, with the usual replay and gap rules. A waiting long-poll changes
// too (its next poll asks for its own channels again).
func (w *Worker) channelChange(p []byte) {
	subscribe, id, channel, err := ipc.ParseChannel(p)
	if err != nil || !ipc.ValidName(id) || !ipc.ValidName(channel) {
		w.log.Warn("ignoring a bad channel frame", "err", err)
		return
	}
	add, drop := channel, []byte(nil)
	if !subscribe {
		add, drop = nil, channel
	}
	var conns []*conn
	for cc := w.byID.get(id); cc != nil; cc = cc.inext {
		conns = append(conns, cc)
	}
	for _, cc := range conns {
		if cc.state != stStreaming && cc.state != stPolling {
			continue
		}
		chans, change := w.channelsWith(cc, add, drop)
		if change != chansChanged {
			clear(w.q.chans[:])
			if change == chansFull {
				w.counts.ChannelsFull++
			}
			continue
		}
		w.rejoin(cc, cc.cursor, chans)
		if cc.state == stStreaming {
			w.tellChannels(cc)
		}
	}
}

// tellChannels writes cc's channels to it, in its transport's framing.
func (w *Worker) tellChannels(cc *conn) {
	b := append(w.body[:0], `{"channels":[`...)
	if cc.x != nil {
		for i, ch := range cc.x.channels {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(append(append(b, '"'), ch...), '"') // names need no escaping
		}
	}
	b = append(b, "]}"...)
	w.body = b
	var out []byte
	switch {
	case cc.tr == trWS:
		out = appendWSText(nil, b)
	case cc.tr == trSSE:
		out = append(append([]byte("event: channels\ndata: "), b...), "\n\n"...)
	case cc.flags&fRaw != 0:
		out = append(append([]byte(nil), b...), '\n')
	default:
		out = append(strconv.AppendInt(nil, int64(len(b)+1), 16), "\r\n"...)
		out = append(append(out, b...), "\n\r\n"...)
	}
	w.send(cc, out)
}

// errRevoked answers a token POST /revoke revoked: 401, so a client asks
// its application for a new one.
var errRevoked = &auth.Refusal{Status: 401, Reason: "token revoked"}

// revocations are the tokens POST /revoke refused, until they end: an id's
// tokens issued before a time, and single tokens by jti.
type revocations struct {
	byID  map[string]ipc.Revoke
	byJTI map[string]ipc.Revoke
}

// revoke applies a TypeRevoke frame: the revocation is kept, and an id's
// live connections end as an expired token's do (their clients come back
// with a new token, which passes if it is newer). A revoked jti's live
// connection is not known here: it is refused from its next connect.
func (w *Worker) revoke(p []byte) {
	r, err := ipc.ParseRevoke(p)
	if err != nil {
		w.log.Warn("ignoring a bad revoke frame", "err", err)
		return
	}
	w.inForce(nil, []ipc.Revoke{r})
	if r.JTI != "" || !r.End {
		return
	}
	var conns []*conn
	for cc := w.byID.getString(r.ID); cc != nil; cc = cc.inext {
		conns = append(conns, cc)
	}
	for _, cc := range conns {
		if cc.state == stStreaming || cc.state == stPolling {
			w.counts.Revoked++
			w.endExpired(cc) // authz.go
		}
	}
}

// isRevoked reports whether a verified token for id was revoked.
func (w *Worker) isRevoked(id []byte, c *auth.Claims) bool {
	if w.revoked.byID == nil && w.revoked.byJTI == nil {
		return false
	}
	now := time.Now().Unix()
	if r, ok := w.revoked.byID[string(id)]; ok {
		if now >= r.Until {
			delete(w.revoked.byID, string(id))
		} else if c.IssuedAt == nil || c.IssuedAt.Unix() < r.Before {
			return true
		}
	}
	if c.ID != "" {
		if r, ok := w.revoked.byJTI[c.ID]; ok {
			if now >= r.Until {
				delete(w.revoked.byJTI, c.ID)
			} else {
				return true
			}
		}
	}
	return false
}

// inForce takes the bans and revocations the manager had when it started
// this worker.
func (w *Worker) inForce(bans []ipc.Disconnect, revs []ipc.Revoke) {
	for _, d := range bans {
		if w.bans == nil {
			w.bans = make(map[string]ban)
		}
		w.bans[d.ID] = ban{int64(d.BanUntil), d.Reason}
	}
	for _, r := range revs {
		if r.JTI != "" {
			if w.revoked.byJTI == nil {
				w.revoked.byJTI = make(map[string]ipc.Revoke)
			}
			w.revoked.byJTI[r.JTI] = r
		} else {
			if w.revoked.byID == nil {
				w.revoked.byID = make(map[string]ipc.Revoke)
			}
			w.revoked.byID[r.ID] = r
		}
	}
}
