package worker

import (
	"bytes"
	"encoding/json"
	"strconv"
	"time"

	"github.com/gobwas/ws"
	"github.com/megacomet/megacomet/auth"
	"github.com/megacomet/megacomet/hooks"
	"github.com/megacomet/megacomet/ipc"
)

// Client publish: a WebSocket client sends {"publish":"CHANNEL","data":…}.
// It is allowed by its token's publish claim when auth is on, by
// comet.client_publish when it is off; comet.client_publish_rate a second
// after a burst of twice that (past it the client is told; past another
// burst of refusals in a row, closed with 1008); ws_max_message bounds it
// as any client message, and ipc.MaxData its data (compacted) as the API's.
// The worker sends it to the manager (TypePublish, with a token for the
// connection), which publishes it as the API would
// and answers with a RecAck: the client gets {"ack":ID}, or
// {"error":"…","channel":"…"} and stays connected. This is not the hot
// path - it is rate-limited per connection - so the command is decoded
// with encoding/json.

// pubWait is a client publish waiting for the manager's answer.
type pubWait struct {
	cc      *conn
	channel string
	at      uint32 // tick sent
}

// pubAckWait is how long a publish may wait for its answer: past it (a
// manager gone or handing over) the client is told to retry.
const pubAckWait = 30 * time.Second

var (
	wsPubNotAllowed = "publish not allowed"
	wsPubRate       = "publish rate exceeded"
	wsPubTooBig     = "data over " + strconv.Itoa(ipc.MaxData) + " bytes"
	errWSPublish    = newWSError(ws.StatusPolicyViolation, `send {"publish":"channel","data":<json>}`)
	errWSPubRate    = newWSError(ws.StatusPolicyViolation, "too many publishes: over comet.client_publish_rate")
)

// isPublish: the message is a publish command (it has that key).
func isPublish(p []byte) bool { return bytes.Contains(p, []byte(`"publish"`)) }

func (w *Worker) wsPublish(cc *conn, p []byte) {
	var c struct {
		Publish *string         `json:"publish"`
		Data    json.RawMessage `json:"data"`
	}
	dec := json.NewDecoder(bytes.NewReader(p))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil || c.Publish == nil || len(c.Data) == 0 || dec.More() {
		w.wsFail(cc, errWSPublish)
		return
	}
	ch := *c.Publish
	if !ipc.ValidName(ch) {
		w.wsFail(cc, errWSChannel)
		return
	}
	x := cc.extra()
	if !w.wsPublishAllowed(cc) {
		if x.pubOver++; x.pubOver > 2*uint32(w.opts.Comet.ClientPublishRate) {
			w.wsFail(cc, errWSPubRate)
			return
		}
		w.wsError(cc, wsPubRate, ch)
		return
	}
	x.pubOver = 0
	data := []byte(c.Data)
	switch {
	case w.mayPublish(cc, ch):
	case w.hooks.On(hooks.Publish):
		w.ask(cc, hooks.Publish, ch, data) // park.go: sendPublish on its answer
		return
	default:
		w.counts.AuthRefused++
		w.wsError(cc, wsPubNotAllowed, ch)
		return
	}
	w.sendPublish(cc, ch, data)
}

// sendPublish hands an allowed client publish to the manager.
func (w *Worker) sendPublish(cc *conn, ch string, data []byte) {
	if len(data) > ipc.MaxData {
		// The API's limit, on the same measure: the data compacted (what
		// is stored, replayed and written to every subscriber).
		var buf bytes.Buffer
		if json.Compact(&buf, data) != nil || buf.Len() > ipc.MaxData {
			w.wsError(cc, wsPubTooBig, ch)
			return
		}
		data = buf.Bytes()
	}
	if w.pubs == nil {
		w.pubs = make(map[uint32]pubWait)
	}
	w.pubSeq++
	w.pubs[w.pubSeq] = pubWait{cc, ch, w.tick}
	f, start := ipc.Begin(w.ipcOut, ipc.TypePublish)
	w.ipcOut = ipc.End(ipc.AppendPublish(f, w.pubSeq, stringBytes(ch), data, stringBytes(cc.id)), start)
	w.flushIPC()
}

// mayPublish: the token's publish claim with auth on, else
// comet.client_publish (the publish hook decides what neither allows).
func (w *Worker) mayPublish(cc *conn, channel string) bool {
	if w.auth != nil {
		return cc.x != nil && auth.MayPublish(cc.x.publish, channel)
	}
	return w.opts.Comet.ClientPublish
}

// acked answers a client publish.
func (w *Worker) acked(a *ipc.Ack) {
	pw, ok := w.pubs[a.Token]
	if !ok {
		return
	}
	delete(w.pubs, a.Token)
	if pw.cc.state == stDead {
		return
	}
	if a.ID == 0 {
		w.wsError(pw.cc, string(a.Reason), pw.channel)
		return
	}
	w.body = append(strconv.AppendUint(append(w.body[:0], `{"ack":`...), a.ID, 10), '}')
	w.send(pw.cc, appendWSText(w.scratch[:0], w.body))
}

// sweepPublishes tells the clients whose publish went unanswered for
// pubAckWait to retry.
func (w *Worker) sweepPublishes() {
	limit := uint32(pubAckWait / tickEvery)
	for tok, pw := range w.pubs {
		if w.tick-pw.at > limit {
			delete(w.pubs, tok)
			if pw.cc.state != stDead {
				w.wsError(pw.cc, "publish not acknowledged: retry", pw.channel)
			}
		}
	}
}

// wsError sends {"error":"why","channel":"c"}: the client stays.
func (w *Worker) wsError(cc *conn, why, channel string) {
	b := append(w.body[:0], `{"error":`...)
	b = strconv.AppendQuote(b, why)
	b = append(append(append(b, `,"channel":"`...), channel...), `"}`...)
	w.body = b
	w.send(cc, appendWSText(w.scratch[:0], b))
}
