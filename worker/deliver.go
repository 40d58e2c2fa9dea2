package worker

import (
	"strconv"
	"time"

	"github.com/megacomet/megacomet/ipc"
)

// Rendered forms of one message, cached while a frame fans it out, so a
// broadcast to every client costs one render per transport, not one per
// client.
const (
	renderSSE = iota
	renderChunk
	renderRaw
	renderWS
	renders
)

type rendered struct {
	id  uint64
	buf []byte
}

// deliverFrame hands a Deliver frame's messages to the clients it names,
// until the loop's budget for it runs out (deadline): a broadcast to
// thousands of connections then pauses, and the rest of the frame waits in
// the delivery queue (queue.go) so that new connections, pings and timers
// are served between slices of it. It reports whether it got to the end.
func (w *Worker) deliverFrame(p []byte, deadline time.Time) bool {
	d := ipc.NewDeliverReader(p)
	for {
		switch d.Next() {
		case ipc.RecMsg:
			w.saw(d.Msg.ID)
			if !w.fanOut(&d.Msg, deadline) {
				w.pauseFrame(d.Rest())
				return false
			}
		case ipc.RecReplay:
			w.replay(&d.Replay)
		case ipc.RecAck:
			w.acked(&d.Ack)
		default:
			if err := d.Err(); err != nil {
				w.log.Error("corrupt deliver frame from the manager", "err", err)
			}
			return true
		}
	}
}

// fanOut delivers one message; false when a broadcast paused (w.bcast).
func (w *Worker) fanOut(m *ipc.Msg, deadline time.Time) bool {
	switch m.Kind {
	case ipc.KindIDs:
		for id, ok := m.NextID(); ok; id, ok = m.NextID() {
			for cc := w.byID.get(id); cc != nil; {
				next := cc.inext // push may unsubscribe cc
				w.push(cc, m.ID, m.Body)
				cc = next
			}
		}
	case ipc.KindChannel:
		for cc := range w.byChan[string(m.Channel)] {
			w.push(cc, m.ID, m.Body)
		}
	case ipc.KindBroadcast:
		w.bcast = broadcast{id: m.ID, body: m.Body, from: w.wheelAt + 1, epoch: w.byID.epoch}
		return w.broadcastOn(deadline)
	}
	return true
}

// broadcast is a broadcast being fanned out, in two walks that can each
// pause and resume. First the timing wheel from the next slot due: a
// streaming connection's timer is its next heartbeat, so the connections
// whose heartbeat is due soonest get the message first - and the message
// is their heartbeat (heartbeat skips a connection written to within the
// interval), so a broadcast neither makes heartbeats late nor costs one
// more write each. A connection can move to a slot the walk has passed
// while it is paused, so then the id index, where every subscribed
// connection is: push is a no-op for one that has the message (its
// cursor), so that walk writes only to those the first one missed, and it
// starts over after the index resized.
type broadcast struct {
	id     uint64
	body   []byte // owned by the queue once paused
	from   uint32 // the wheel slot the first walk started at
	walked int    // wheel slots walked; wheelSize: on to the index
	slot   int    // the next id index slot
	epoch  uint32 // the index's epoch when slot was taken
	active bool
}

// broadcastOn goes on walking until the end (true) or the deadline
// (false: w.bcast is left active, to resume where it was).
func (w *Worker) broadcastOn(deadline time.Time) bool {
	b := &w.bcast
	b.active = true
	n := 0
	due := func() bool { return n > fanOutCheck && time.Now().After(deadline) }
	for ; b.walked < wheelSize; b.walked++ {
		if due() {
			return false // this slot again next time
		}
		for cc := w.wheel[(b.from+uint32(b.walked))&wheelMask]; cc != nil; {
			next := cc.wnext // push may move cc to another slot
			if cc.id != "" {
				w.push(cc, b.id, b.body)
				n++
			}
			cc = next
		}
	}
	if b.epoch != w.byID.epoch {
		b.slot, b.epoch = 0, w.byID.epoch
	}
	for ; b.slot < len(w.byID.slots); b.slot++ {
		head := w.byID.slots[b.slot]
		if head == nil || head == tombstone {
			continue
		}
		if due() {
			return false
		}
		for cc := head; cc != nil; {
			next := cc.inext // push may unsubscribe cc
			w.push(cc, b.id, b.body)
			cc = next
			n++
		}
		if w.byID.epoch != b.epoch { // a push unsubscribed the last of an id and shrank the index
			b.slot, b.epoch = -1, w.byID.epoch
		}
	}
	b.active, b.body = false, nil
	return true
}

// push writes one live or replayed message to cc, once and in order.
func (w *Worker) push(cc *conn, id uint64, body []byte) {
	if cc.flags&fAwaiting != 0 || id <= cc.cursor || cc.state == stDead {
		return // its replay will carry it, or it already has it
	}
	if cc.tr != trLP && w.faultDrop(cc, id) { // long-polls: in addPoll
		return
	}
	switch cc.tr {
	case trSSE:
		w.send(cc, w.render(renderSSE, id, body))
	case trStream:
		if cc.flags&fRaw != 0 {
			w.send(cc, w.render(renderRaw, id, body))
		} else {
			w.send(cc, w.render(renderChunk, id, body))
		}
	case trWS:
		w.send(cc, w.render(renderWS, id, body))
		cc.cursor = id // lastTx stays the unanswered ping's tick (ws.go)
		w.counts.MessagesOut++
		return
	case trLP:
		if cc.state == stPolling {
			w.startPoll(cc)
			w.addPoll(cc, id, body)
			w.finishPoll(cc)
		}
		return
	default:
		return
	}
	cc.cursor = id
	cc.lastTx = w.tick
	w.counts.MessagesOut++
}

// faultDrop is the test fault MEGACOMET_FAULT_DROP_EVERY=N: every Nth
// delivery is skipped as if it had been written, so clients must notice a
// loss (megatest's loss accounting is tested with it).
func (w *Worker) faultDrop(cc *conn, id uint64) bool {
	if w.dropEvery == 0 {
		return false
	}
	if w.dropped++; w.dropped%w.dropEvery != 0 {
		return false
	}
	cc.cursor = id
	return true
}

// render returns a message in one transport's framing, from the cache when
// this message was rendered that way already.
func (w *Worker) render(kind int, id uint64, body []byte) []byte {
	r := &w.renders[kind]
	if r.id == id {
		return r.buf
	}
	b := r.buf[:0]
	switch kind {
	case renderSSE:
		b = append(b, "id: "...)
		b = strconv.AppendUint(b, id, 10)
		b = append(b, "\ndata: "...)
		b = append(b, body...)
		b = append(b, "\n\n"...)
	default:
		b = appendLine(b, kind, body)
	}
	r.id, r.buf = id, b
	return b
}

// appendLine frames body as one line of a stream (renderChunk, renderRaw)
// or one WebSocket text frame (renderWS).
func appendLine(b []byte, kind int, body []byte) []byte {
	switch kind {
	case renderChunk:
		b = strconv.AppendInt(b, int64(len(body)+1), 16)
		b = append(b, "\r\n"...)
		b = append(b, body...)
		return append(b, "\n\r\n"...)
	case renderRaw:
		return append(append(b, body...), '\n')
	default:
		return appendWSText(b, body) // wsframe.go
	}
}

// replay answers a connection's subscription with what it missed, one
// piece at a time (rp.More: another follows; the manager queues nothing
// live for it until after the last). A replay goes out only as fast as the
// client reads it: the manager sends at most half of comet.max_pending of
// it (rp.Partial: history holds more), and once comet.max_pending bytes
// wait unsent the rest is left out too; either way the connection, at the
// last piece, gets its transport's reconnect hint - it comes back with its
// cursor, and history gives it the rest. A long-poll's answer is bounded
// the same way, and its next poll is the rest.
func (w *Worker) replay(rp *ipc.Replay) {
	a, ok := w.awaiting[rp.Token]
	cc := a.cc
	if !ok {
		return // it went away meanwhile, joined again, or a long-poll answered already
	}
	if cc.state == stDead || cc.id == "" {
		w.doneAwaiting(rp.Token)
		return
	}
	switch {
	case a.rejoin: // this replay is for a subscription it has changed since
		w.doneAwaiting(rp.Token)
		a.rejoin = false
		w.join(cc, cc.cursor, a)
		return
	case rp.Deferred: // the manager had no room: ask again later
		w.deferJoin(rp.Token)
		return
	}
	if cc.tr == trLP {
		w.replayPoll(cc, rp, a)
		return
	}
	cc.flags &^= fAwaiting // push writes to it now
	// Gap-1, not cursor+1, which would wrap.
	if rp.Gap > 0 && rp.Gap-1 > cc.cursor && !a.cut && !a.fresh {
		w.sendGap(cc, rp.Gap)
	}
	for i := 0; i < rp.N && !a.cut && cc.state != stDead; i++ {
		id, body := rp.Next()
		if pending := cc.pendingLen(); pending > 0 && pending+len(body)+replaySlack > w.opts.Comet.MaxPending {
			a.cut = true
			w.counts.ReplaysPaced++
			break
		}
		w.push(cc, id, body)
	}
	if cc.state == stDead || cc.id == "" {
		w.doneAwaiting(rp.Token)
		return
	}
	if rp.More {
		cc.flags |= fAwaiting
		w.awaiting[rp.Token] = a
		return
	}
	w.goLive(rp.Token, cc, a)
	if a.cut || rp.Partial {
		w.handOff(cc) // the rest when it comes back from its cursor
	}
}

// replaySlack is room kept under comet.max_pending when a replay is cut, for
// the reconnect hint that follows it.
const replaySlack = 512

// replayPoll answers a long-poll with the first piece of its replay that
// has anything in it; the client's next poll, from the cursor the answer
// gives it, gets the rest.
func (w *Worker) replayPoll(cc *conn, rp *ipc.Replay, a awaiter) {
	if rp.N == 0 {
		if !rp.More {
			w.goLive(rp.Token, cc, a)
		}
		return // held until a live message or the poll timeout
	}
	w.goLive(rp.Token, cc, a)
	w.startPoll(cc)
	if rp.Gap > 0 && rp.Gap-1 > cc.cursor && !a.fresh {
		w.body = appendGap(w.body, cc.cursor, rp.Gap)
		w.counts.GapsAnnounced++
		cc.cursor = rp.Gap - 1 // the answer's cursor: the next poll is past the gap
	}
	for i := 0; i < rp.N; i++ {
		id, body := rp.Next()
		if !w.addPoll(cc, id, body) {
			w.counts.ReplaysPaced++
			break
		}
	}
	w.finishPoll(cc)
}

// goLive ends a connection's wait for its replay: live messages reach it
// from now on, and its token's expiry counts.
func (w *Worker) goLive(token uint32, cc *conn, a awaiter) {
	w.doneAwaiting(token)
	cc.flags &^= fAwaiting
	if a.exp != 0 {
		w.setExpiry(cc, a.exp) // authz.go
	}
}

// doneAwaiting forgets a replay's token.
func (w *Worker) doneAwaiting(token uint32) {
	delete(w.awaiting, token)
	if len(w.awaiting) == 0 && w.awaitingPeak > 1024 {
		// Go maps never shrink: after a connection storm, start small.
		w.awaiting, w.awaitingPeak = make(map[uint32]awaiter), 0
	}
}

// appendGap appends the gap announcement: messages with ids strictly
// between after and before may be missing.
func appendGap(b []byte, after, before uint64) []byte {
	b = strconv.AppendUint(append(b, `{"gap":{"after":`...), after, 10)
	b = strconv.AppendUint(append(b, `,"before":`...), before, 10)
	return append(b, "}}"...)
}

// sendGap announces a gap in the connection's transport: an SSE "gap"
// event, a stream line, a WebSocket text frame. The cursor moves to just
// before the gap's end - the SSE event carries it as its id - so a client
// that comes back is not told of the same gap again.
func (w *Worker) sendGap(cc *conn, before uint64) {
	w.counts.GapsAnnounced++
	g := appendGap(w.body[:0], cc.cursor, before)
	w.body = g
	cc.cursor = before - 1
	b := w.scratch[:0]
	switch {
	case cc.tr == trSSE:
		b = strconv.AppendUint(append(b, "event: gap\nid: "...), cc.cursor, 10)
		b = append(append(append(b, "\ndata: "...), g...), "\n\n"...)
	case cc.tr == trWS:
		b = appendLine(b, renderWS, g)
	case cc.flags&fRaw != 0:
		b = appendLine(b, renderRaw, g)
	default:
		b = appendLine(b, renderChunk, g)
	}
	w.scratch = b
	w.send(cc, b)
}

// jsonpPrefix opens every JSONP answer. The callback is the client's
// choice, and "Rosetta Flash" showed that one of identifier characters can
// be a whole Flash file, which a page elsewhere could have run as ours: an
// empty comment first means no answer starts with bytes a client chose,
// and it stays valid JavaScript.
var jsonpPrefix = []byte("/**/")

// Long-poll answers are built in w.body: startPoll, addPoll per message,
// finishPoll.
func (w *Worker) startPoll(cc *conn) {
	w.body = w.body[:0]
	if cc.x != nil && len(cc.x.callback) > 0 {
		w.body = append(append(append(w.body, jsonpPrefix...), cc.x.callback...), '(')
	}
	w.body = append(w.body, '[')
	w.pollMsgs = 0
}

// addPoll adds a message to the answer being built; false when it does not
// fit in comet.max_pending with what the answer holds already (the first
// always does): the client polls for it next, from the answer's cursor.
func (w *Worker) addPoll(cc *conn, id uint64, body []byte) bool {
	if id <= cc.cursor || w.faultDrop(cc, id) {
		return true
	}
	if w.pollMsgs > 0 && len(w.body)+len(body)+replaySlack > w.opts.Comet.MaxPending {
		return false
	}
	if last := w.body[len(w.body)-1]; last != '[' {
		w.body = append(w.body, ',')
	}
	w.body = append(w.body, body...)
	w.pollMsgs++
	cc.cursor = id
	w.counts.MessagesOut++
	return true
}

// finishPoll sends the answer and ends the poll.
func (w *Worker) finishPoll(cc *conn) {
	w.body = append(w.body, ']')
	if cc.x != nil && len(cc.x.callback) > 0 {
		w.body = append(w.body, ");"...)
	}
	b := w.appendPollHead(w.scratch[:0], cc, len(w.body))
	b = append(b, w.body...)
	w.scratch = b
	w.unsubscribe(cc)
	if cc.x != nil {
		cc.x.callback, cc.x.origin = nil, nil
		cc.tidy()
	}
	w.send(cc, b)
	if cc.state == stDead {
		return
	}
	cc.lastTx = w.tick
	w.afterAnswer(cc)
	w.resume(cc)
}
