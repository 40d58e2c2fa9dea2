package worker

import (
	"bytes"
	"unicode/utf8"
	"unsafe"

	"github.com/megacomet/megacomet/ipc"
)

// WebSocket commands: a client's text messages ({"since":N},
// {"subscribe":"c"}, {"unsubscribe":"c"}), parsed without allocating, and
// the re-join each one that changes something costs (rate-limited in
// ratelimit.go).

// wsMessage handles a complete text message: a command.
func (w *Worker) wsMessage(cc *conn, p []byte) {
	// §8.1: "When an endpoint is to interpret a byte stream as UTF-8 but
	// finds that the byte stream is not, in fact, a valid UTF-8 stream, that
	// endpoint MUST _Fail the WebSocket Connection_"; §7.4.1: 1007.
	if !utf8.Valid(p) {
		w.wsFail(cc, errWSUTF8)
		return
	}
	var c wsCommand
	if !parseCommand(p, &c) {
		if isPublish(p) {
			w.wsPublish(cc, p)
			return
		}
		w.wsFail(cc, errWSCommand)
		return
	}
	switch c.op {
	case cmdSince:
		if c.since > maxCursor { // route.go
			w.wsFail(cc, errWSSince)
			return
		}
		w.resubscribe(cc, c.since, nil, nil)
	case cmdSubscribe:
		if !ipc.ValidName(c.channel) {
			w.wsFail(cc, errWSChannel)
			return
		}
		if w.wsMayJoinNow(cc, c.channel) {
			w.resubscribe(cc, cc.cursor, c.channel, nil)
		}
	case cmdUnsubscribe:
		if !ipc.ValidName(c.channel) {
			w.wsFail(cc, errWSChannel)
			return
		}
		w.resubscribe(cc, cc.cursor, nil, c.channel)
	}
}

// resubscribe joins again with cursor since and the channel set changed by
// add or drop; the manager answers with the replay after since, and live
// messages wait for it as on a new connection (subs.go).
func (w *Worker) resubscribe(cc *conn, since uint64, add, drop []byte) {
	if cc.id == "" {
		return
	}
	chans, change := w.channelsWith(cc, add, drop)
	switch {
	case change == chansSame:
		return // nothing changes: no need to join again
	case change == chansFull:
		w.wsFail(cc, errWSChannels)
		return
	case !w.wsCommandAllowed(cc):
		clear(w.q.chans[:])
		w.wsFail(cc, errWSRate)
		return
	}
	w.rejoin(cc, since, chans)
}

// What adding or dropping a channel does to a connection's set.
const (
	chansChanged = iota
	chansSame
	chansFull // past maxChannels
)

// channelsWith is cc's channels with add added or drop dropped (either
// may be nil: the same set), in w.q.chans, the query scratch (no request
// is being parsed).
func (w *Worker) channelsWith(cc *conn, add, drop []byte) ([][]byte, int) {
	var old []string
	if cc.x != nil {
		old = cc.x.channels
	}
	chans := w.q.chans[:0]
	found := false
	for _, ch := range old {
		switch {
		case drop != nil && ch == string(drop):
			found = true
			continue
		case add != nil && ch == string(add):
			found = true
		}
		chans = append(chans, stringBytes(ch))
	}
	switch {
	case add != nil && found, drop != nil && !found:
		return nil, chansSame
	case add != nil:
		if len(chans) == maxChannels {
			return nil, chansFull
		}
		chans = append(chans, add)
	}
	return chans, chansChanged
}

// rejoin registers cc for chans and joins again from since.
func (w *Worker) rejoin(cc *conn, since uint64, chans [][]byte) {
	id := cc.id
	if cc.flags&fAwaiting != 0 {
		// A join is on its way: change the registration now, and join
		// again once its replay is in (subs.go, "Joins wait their turn").
		a := w.awaiting[cc.token]
		a.rejoin = true
		w.awaiting[cc.token] = a
		w.unregister(cc)
		w.register(cc, stringBytes(id), chans)
		cc.cursor = since
		w.maybeFlushPresence()
	} else {
		exp := w.expOf(cc)
		w.unsubscribe(cc)
		w.subscribe(cc, stringBytes(id), chans, since, exp)
	}
	clear(w.q.chans[:])
}

// stringBytes views s as bytes, for callees that only read them.
func stringBytes(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

// Commands a client may send as text messages.
const (
	cmdSince = iota + 1
	cmdSubscribe
	cmdUnsubscribe
)

type wsCommand struct {
	op      int
	since   uint64
	channel []byte // aliases the message
}

var (
	cmdKeySince       = []byte(`"since"`)
	cmdKeySubscribe   = []byte(`"subscribe"`)
	cmdKeyUnsubscribe = []byte(`"unsubscribe"`)
)

// parseCommand reads a JSON object with exactly one of the keys since
// (a uint64), subscribe or unsubscribe (a string without escapes, as
// channel names need none), without allocating.
func parseCommand(p []byte, c *wsCommand) bool {
	p = skipJSONSpace(p)
	if len(p) == 0 || p[0] != '{' {
		return false
	}
	p = skipJSONSpace(p[1:])
	switch {
	case bytes.HasPrefix(p, cmdKeySince):
		c.op, p = cmdSince, p[len(cmdKeySince):]
	case bytes.HasPrefix(p, cmdKeySubscribe):
		c.op, p = cmdSubscribe, p[len(cmdKeySubscribe):]
	case bytes.HasPrefix(p, cmdKeyUnsubscribe):
		c.op, p = cmdUnsubscribe, p[len(cmdKeyUnsubscribe):]
	default:
		return false
	}
	p = skipJSONSpace(p)
	if len(p) == 0 || p[0] != ':' {
		return false
	}
	p = skipJSONSpace(p[1:])
	if c.op == cmdSince {
		i := 0
		for i < len(p) && '0' <= p[i] && p[i] <= '9' {
			i++
		}
		if i > 1 && p[0] == '0' { // JSON numbers have no leading zeros
			return false
		}
		var ok bool
		if c.since, ok = parseUint(p[:i]); !ok {
			return false
		}
		p = p[i:]
	} else {
		if len(p) == 0 || p[0] != '"' {
			return false
		}
		end := bytes.IndexByte(p[1:], '"')
		if end < 0 || bytes.IndexByte(p[1:1+end], '\\') >= 0 {
			return false
		}
		c.channel, p = p[1:1+end], p[2+end:]
	}
	p = skipJSONSpace(p)
	if len(p) == 0 || p[0] != '}' {
		return false
	}
	return len(skipJSONSpace(p[1:])) == 0
}

func skipJSONSpace(p []byte) []byte {
	for len(p) > 0 && (p[0] == ' ' || p[0] == '\t' || p[0] == '\n' || p[0] == '\r') {
		p = p[1:]
	}
	return p
}
