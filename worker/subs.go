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
	w.nextToken++
	if w.nextToken == 0 {
		w.nextToken = 1
	}
	cc.token = w.nextToken
	cc.flags |= fAwaiting
	w.awaiting[cc.token] = awaiter{cc: cc, exp: exp, fresh: w.fresh}
	w.fresh = false
	w.awaitingPeak = max(w.awaitingPeak, len(w.awaiting))
	cc.cursor = since
	w.presOut = ipc.AppendJoin(w.presOut, cc.token, since, id, chans)
	w.maybeFlushPresence()
}

// awaiter is a subscription whose replay is on its way, and when its
// token expires (0: never): cc.token holds the replay's token until then.
type awaiter struct {
	cc    *conn
	exp   uint32
	cut   bool // its replay outgrew what the client reads: the rest after a reconnect
	fresh bool // it came without a cursor: no gap is announced to it
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
	w.presOut = ipc.AppendName(w.presOut, ipc.OpLeave, cc.id)
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
			w.presOut = ipc.AppendName(w.presOut, ipc.OpUnsub, ch)
			if len(w.opts.Comet.PresenceEvents) > 0 && w.opts.Comet.Announced(ch) {
				w.presOut = ipc.AppendMember(w.presOut, ipc.OpMemberLeave, ch, id)
			}
			if len(set) == 0 {
				delete(w.byChan, ch)
			}
		}
		cc.x.channels = nil
		cc.tidy()
	}
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
