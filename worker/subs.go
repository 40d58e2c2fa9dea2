package worker

import (
	"time"

	"github.com/megacomet/megacomet/ipc"
)

// Subscriptions. byID lists the connections of each client id (linked
// through conn.inext, the index holding the first; idindex.go); byChan holds
// each channel's connections. The manager learns of them through presence
// records: a Has when a connection takes an id and a Leave when it lets
// go, a Sub and an Unsub likewise per channel it is on (so the manager
// counts connections: GET /presence), and a Join for every subscribing
// connection (answered with that connection's replay, matched by token).

// subscribe registers cc for id and channels, resuming after since. Until
// its replay arrives the connection takes no live messages: the replay
// includes them (see manager/hub.go).
func (w *Worker) subscribe(cc *conn, id []byte, chans [][]byte, since uint64, exp uint32) {
	w.register(cc, id, chans)
	w.join(cc, since, awaiter{cc: cc, exp: exp, fresh: w.fresh})
	w.fresh = false
}

// register files cc under id and chans and tells the manager (Has, Sub).
func (w *Worker) register(cc *conn, id []byte, chans [][]byte) {
	if head := w.byID.get(id); head != nil {
		cc.id, cc.inext = head.id, head // share the id's bytes
	} else {
		cc.id, cc.inext = string(id), nil
	}
	w.presOut = ipc.AppendName(w.presOut, ipc.OpHas, id)
	w.byID.put(cc)
	if len(chans) > 0 {
		x := cc.extra()
		for _, ch := range chans {
			set := w.byChan[string(ch)]
			if set == nil {
				set = make(map[*conn]struct{})
				w.byChan[string(ch)] = set
			}
			if _, dup := set[cc]; !dup {
				set[cc] = struct{}{}
				x.channels = append(x.channels, string(ch))
				w.presOut = ipc.AppendName(w.presOut, ipc.OpSub, ch)
				if len(w.opts.Comet.PresenceEvents) > 0 && w.opts.Comet.Announced(string(ch)) {
					w.presOut = ipc.AppendMember(w.presOut, ipc.OpMemberJoin, string(ch), cc.id)
				}
			}
		}
	}
}

// join asks the manager for cc's replay after since, for its id and
// channels as registered, under a new token; a waits for it in awaiting.
func (w *Worker) join(cc *conn, since uint64, a awaiter) {
	w.nextToken++
	if w.nextToken == 0 {
		w.nextToken = 1
	}
	cc.token = w.nextToken
	cc.flags |= fAwaiting
	w.awaiting[cc.token] = a
	w.awaitingPeak = max(w.awaitingPeak, len(w.awaiting))
	cc.cursor = since
	w.appendJoin(cc)
	w.maybeFlushPresence()
}

// appendJoin queues cc's Join record: its token, cursor, id and channels.
func (w *Worker) appendJoin(cc *conn) {
	var chans []string
	if cc.x != nil {
		chans = cc.x.channels
	}
	w.presOut = ipc.AppendJoin(w.presOut, cc.token, cc.cursor, stringBytes(cc.id), chans)
}

// awaiter is a subscription whose replay is on its way, and when its
// token expires (0: never): cc.token holds the replay's token until then.
type awaiter struct {
	cc     *conn
	exp    uint32
	cut    bool // its replay outgrew what the client reads: the rest after a reconnect
	fresh  bool // it came without a cursor: no gap is announced to it
	rejoin bool // its subscription changed while it waited: join again, from cc.cursor, when the replay comes
}

// Joins wait their turn. A connection has at most one join on its way: a
// WebSocket command that changes its subscription while one is changes
// the registration at once and joins again once that replay is in (the
// replay, for the old subscription, is dropped), so a burst of commands
// costs the manager one replay, not one each. A join the manager deferred
// (its queue for this worker is full of replays: manager/hub.go
// joinBacklog) is asked again after rejoinAfter, from the same cursor.
type rejoin struct {
	token uint32
	due   uint32 // tick
}

const rejoinAfter = 100 * time.Millisecond

// deferJoin schedules cc's join (token) again, after rejoinAfter and up to
// as long again at random, so deferred joins do not come back together.
func (w *Worker) deferJoin(token uint32) {
	d := ticksOf(rejoinAfter)
	w.rejoins = append(w.rejoins, rejoin{token: token, due: w.tick + d + w.random()%d})
}

// rejoinDue sends the deferred joins whose time has come (the tick).
func (w *Worker) rejoinDue() {
	kept := w.rejoins[:0]
	for _, r := range w.rejoins {
		if int32(w.tick-r.due) < 0 {
			kept = append(kept, r)
			continue
		}
		if a, ok := w.awaiting[r.token]; ok && a.cc.token == r.token {
			w.appendJoin(a.cc)
		}
	}
	clear(w.rejoins[len(kept):])
	w.rejoins = kept
}

// unsubscribe undoes subscribe; it is a no-op for a connection that is not
// subscribed.
func (w *Worker) unsubscribe(cc *conn) {
	if cc.id == "" {
		return
	}
	if cc.flags&fAwaiting != 0 {
		delete(w.awaiting, cc.token)
		cc.flags &^= fAwaiting
	}
	cc.flags &^= fExp
	w.unregister(cc)
}

// unregister undoes register: cc leaves its id and channels.
func (w *Worker) unregister(cc *conn) {
	if head := w.byID.getString(cc.id); head == cc {
		if cc.inext == nil {
			w.byID.del(cc.id)
		} else {
			w.byID.put(cc.inext)
		}
	} else {
		for p := head; p != nil; p = p.inext {
			if p.inext == cc {
				p.inext = cc.inext
				break
			}
		}
	}
	id := cc.id
	cc.id, cc.inext = "", nil
	if cc.x != nil && cc.x.channels != nil {
		for _, ch := range cc.x.channels {
			set := w.byChan[ch]
			delete(set, cc)
			if len(w.opts.Comet.PresenceEvents) > 0 && w.opts.Comet.Announced(ch) {
				w.presOut = ipc.AppendMember(w.presOut, ipc.OpMemberLeave, ch, id)
			}
			w.presOut = ipc.AppendName(w.presOut, ipc.OpUnsub, ch)
			if len(set) == 0 {
				delete(w.byChan, ch)
			}
		}
		cc.x.channels = nil
		cc.tidy()
	}
	// Last, so the manager hears a connection leave in the reverse of
	// the order it came: member, channel, id.
	w.presOut = ipc.AppendBye(w.presOut, w.bye, id)
}

// presenceEvery bounds how often presence records are written from the
// request path: a burst of connections shares one frame, while a lone
// subscription still reaches the manager at once.
const presenceEvery = time.Millisecond

func (w *Worker) maybeFlushPresence() {
	if now := time.Since(w.start); now-w.presFlushed >= presenceEvery {
		w.presFlushed = now
		w.flushPresence()
		w.flushIPC()
	}
}

// flushPresence frames the pending presence records into the IPC output.
func (w *Worker) flushPresence() {
	if len(w.presOut) == 0 {
		return
	}
	out, start := ipc.Begin(w.ipcOut, ipc.TypePresence)
	w.ipcOut = ipc.End(append(out, w.presOut...), start)
	w.presOut = w.presOut[:0]
}

// connectCursor is the cursor of a connection that did not send one: the
// newest id that can have been published before it connected - on the
// manager's id clock, and never below an id this worker has seen, so ids
// that ran ahead of the clock (a burst, a clock stepped back, a restart
// above the state_dir mark) are not taken as already delivered.
func (w *Worker) connectCursor() uint64 {
	if w.cfg.SeqIDs {
		return w.lastSeen
	}
	return max(w.lastSeen, uint64(time.Now().UnixMicro()+w.cfg.IDClockUs)-1)
}

// saw notes a message id from the manager.
func (w *Worker) saw(id uint64) {
	if id > w.lastSeen {
		w.lastSeen = id
	}
}
