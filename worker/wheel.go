package worker

import (
	"time"

	"github.com/megacomet/megacomet/ipc"
)

// The timing wheel: every connection has one timer - the request timeout
// while reading, the next heartbeat while streaming, the poll timeout while
// polling, the linger deadline while lingering. A timer is a tick number;
// a connection is linked into slot due mod wheelSize, and each tick visits
// one slot, so a tick costs what is due then, never a scan of every client.
// Heartbeats start at a random phase, so a million streams cost an even
// ~1M/heartbeat writes per second rather than a burst per interval.
const (
	wheelBits = 12
	wheelSize = 1 << wheelBits // 4096 ticks of 10 ms: 41 s round
	wheelMask = wheelSize - 1

	lingerTicks = uint32(lingerFor / tickEvery)

	// timerBudget bounds the time one tick spends firing timers (mostly
	// heartbeats). Timers still due after it wait for the next tick, so a
	// loop that came back from a stall (or fell behind) with thousands of
	// heartbeats due answers new connections, pings and messages between
	// slices of them instead of after all of them: heartbeats are
	// late-tolerant, new connections are not. 2 ms of every 10 ms tick is
	// ~400 heartbeats a tick here, 40,000 a second, twice what a full
	// worker needs at a 1 s heartbeat.
	timerBudget = 2 * time.Millisecond
	// timerCheck is how many timers fire between two looks at the clock.
	timerCheck = 32
	// tickBehind is the period while timers are left over: soon, but
	// after the events that wait.
	tickBehind = time.Millisecond
)

func ticksOf(d time.Duration) uint32 { return max(1, uint32(d/tickEvery)) }

// schedule (re)sets cc's timer to fire at tick due, or when its token
// expires if that is sooner.
func (w *Worker) schedule(cc *conn, due uint32) {
	due = w.clampExpiry(cc, due)
	if cc.flags&fWheel != 0 && cc.due&wheelMask == due&wheelMask {
		cc.due = due // same slot: nothing to relink
		return
	}
	w.unschedule(cc)
	cc.due = due
	slot := &w.wheel[due&wheelMask]
	cc.wnext = *slot
	*slot = cc
	cc.flags |= fWheel
}

// unschedule unlinks cc. Slot lists are singly linked to keep conn small;
// a slot holds connections/wheelSize of them on average (~5 at 19,000), and
// a timer firing is the head of its list, so the walk is short.
func (w *Worker) unschedule(cc *conn) {
	if cc.flags&fWheel == 0 {
		return
	}
	for p := &w.wheel[cc.due&wheelMask]; *p != nil; p = &(*p).wnext {
		if *p == cc {
			*p = cc.wnext
			break
		}
	}
	cc.wnext = nil
	cc.flags &^= fWheel
}

// advance fires the timers due up to tick now, for at most timerBudget:
// what is still due then fires at the next tick. wheelAt is the last slot
// walked to its end; a slot left half-walked is walked again from its head
// (what fired there is rescheduled later or gone, so it is skipped).
func (w *Worker) advance(now uint32) (behind bool) {
	fired := 0
	var start time.Time
	for w.wheelAt != now {
		slot := w.wheelAt + 1
		for cc := w.wheel[slot&wheelMask]; cc != nil; {
			next := cc.wnext
			if int32(cc.due-slot) <= 0 {
				if fired++; fired%timerCheck == 0 {
					if start.IsZero() {
						start = time.Now()
					} else if time.Since(start) >= timerBudget {
						w.counts.TicksOverBudget++
						return true // the rest of this slot, and later ones, next tick
					}
				}
				w.unschedule(cc)
				w.expire(cc)
			}
			cc = next
		}
		w.wheelAt = slot
	}
	return false
}

func (w *Worker) expire(cc *conn) {
	if w.expired(cc) {
		w.endExpired(cc) // authz.go
		return
	}
	switch cc.state {
	case stStreaming:
		w.heartbeat(cc)
	case stPolling:
		w.startPoll(cc)
		w.finishPoll(cc) // nothing came: []
	case stParked:
		w.parkedTimedOut(cc) // park.go
	case stReading: // an idle keep-alive, or a request still coming
		if cc.unread() {
			// The request may be sitting in the socket because the loop
			// is behind: read first, then judge.
			w.schedule(cc, w.tick+1)
			return
		}
		if cc.x != nil && len(cc.x.in) > 0 {
			// Part of a head came, and no more within header_timeout
			// (slowloris): say so, then close.
			w.counts.HeaderTimeouts++
			w.reject(cc, errTimeout)
			return
		}
		w.kill(cc) // an idle keep-alive: nothing to answer
	default: // lingering
		w.kill(cc)
	}
}

var (
	hbSSE   = []byte(":\n\n")
	hbChunk = []byte("1\r\n\n\r\n")
	hbRaw   = []byte("\n")
)

// startHeartbeats schedules a new stream's first heartbeat at a random
// point of the interval.
func (w *Worker) startHeartbeats(cc *conn) {
	cc.lastTx = w.tick - w.random()%w.hbTicks
	w.schedule(cc, cc.lastTx+w.hbTicks)
}

// random is the loop's xorshift: spreads, not secrets.
func (w *Worker) random() uint32 {
	w.rng ^= w.rng << 13
	w.rng ^= w.rng >> 17
	w.rng ^= w.rng << 5
	return w.rng
}

// heartbeat writes one unless a message went out within the interval.
func (w *Worker) heartbeat(cc *conn) {
	evioReleaseOut(cc.ec) // what a backlog left behind, once an interval
	if cc.tr == trWS {
		w.wsHeartbeat(cc) // a ping, also when messages went out (ws.go)
		return
	}
	if quiet := w.tick - cc.lastTx; quiet < w.hbTicks {
		w.schedule(cc, cc.lastTx+w.hbTicks)
		return
	}
	switch {
	case cc.tr == trSSE:
		w.send(cc, hbSSE)
	case cc.flags&fRaw != 0:
		w.send(cc, hbRaw)
	default:
		w.send(cc, hbChunk)
	}
	if cc.state == stDead {
		return
	}
	w.counts.Heartbeats++
	cc.lastTx = w.tick
	w.schedule(cc, w.tick+w.hbTicks)
}

// handOff ends a client's connection with its transport's reconnect hint
// (reload, stop, manager gone): it resumes elsewhere with its cursor. One
// not answered yet - its request still coming, or an idle keep-alive
// between requests - is answered 503 with Retry-After: never a bare FIN.
func (w *Worker) handOff(cc *conn) {
	w.bye = ipc.ByeHandover
	defer func() { w.bye = ipc.ByeClosed }()
	switch cc.state {
	case stParked:
		w.unpark(cc)
		w.send(cc, errRetryNow.resp)
	case stReading:
		w.send(cc, errRetryNow.resp)
	case stStreaming:
		switch {
		case cc.tr == trWS:
			w.wsHandOff(cc) // close 1012 (ws.go)
		case cc.tr == trSSE:
			w.send(cc, sseHandOff)
		case cc.flags&fRaw == 0:
			w.send(cc, chunkedEnd)
		}
	case stPolling:
		cc.flags |= fClose
		w.startPoll(cc)
		w.finishPoll(cc) // [] with Connection: close
		return
	}
	w.linger(cc)
}
