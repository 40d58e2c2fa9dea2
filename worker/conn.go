package worker

import (
	"syscall"

	"github.com/megacomet/megacomet/ipc"
	"github.com/tidwall/evio"
	"golang.org/x/sys/unix"
)

type connKind uint8

const (
	kindClient    connKind = iota
	kindProxy              // a client whose PROXY protocol header is still due (proxy.go)
	kindForwarded          // a client of a trusted proxy: its first request names its address (forwarded.go)
	kindCtlPending
	kindCtl
)

type connState uint8

const (
	stReading   connState = iota // waiting for a request head
	stStreaming                  // an SSE or chunked stream is open
	stPolling                    // a long-poll is held
	stParked                     // waiting for the application's hook (park.go)
	stLingering                  // answered and half-closed; input is discarded
	stDead                       // shut down; evio will report the close
)

type transport uint8

const (
	trNone transport = iota
	trLP
	trStream
	trSSE
	trWS // WebSocket (ws.go)
)

// conn flags
const (
	fWoke     uint8 = 1 << iota // a Wake is outstanding
	fQueued                     // on Worker.backlogged
	fAwaiting                   // subscribed, replay not yet in: live messages are dropped
	fClose                      // close after the current answer
	fRaw                        // stream without chunked framing (HTTP/1.0)
	fWheel                      // linked into the timing wheel
	fPing                       // WebSocket: a ping awaits its pong (ws.go)
	fExp                        // its token expires: at tick token once the join is in (authz.go)
)

// conn is the loop's state for one connection. It is kept small - an idle
// client costs this struct (80 bytes: keep it in that size class), its id
// string and an index slot, and nothing else (no goroutine, no buffers) -
// and what only some connections need lives in connExtra. Its descriptor is
// evio's (evioFD).
type conn struct {
	ec     evio.Conn
	id     string     // the subscribed client id, "" when not subscribed
	cursor uint64     // the last message id written to this connection
	wnext  *conn      // timing wheel slot list
	inext  *conn      // next connection subscribed to the same id
	x      *connExtra // nil almost always
	due    uint32     // tick at which its timer fires
	token  uint32     // the pending replay's token
	lastTx uint32     // tick of the last message or heartbeat written
	kind   connKind
	state  connState
	tr     transport
	flags  uint8
}

// connExtra holds what only some connections need, allocated on demand.
type connExtra struct {
	in       []byte     // an incomplete request head, or WebSocket frame
	pending  []byte     // output the socket did not take, in order after evio's own
	channels []string   // channels it is subscribed to
	callback []byte     // long-poll JSONP callback
	origin   []byte     // long-poll: the Access-Control-Allow-Origin to answer with
	ws       *wsMessage // a fragmented WebSocket message being assembled
	cmdAt    uint32     // WebSocket: the command rate limit's state (ws.go)
	ctlAt    uint32     // WebSocket: the control frame rate limit's state
	allowed  []string   // WebSocket: its token's channels claim, for later subscribes (authz.go)
	publish  []string   // WebSocket: its token's publish claim (publish.go)
	pubAt    uint32     // WebSocket: the publish rate limit's state
	pubOver  uint32     // publishes refused for the rate in a row
	asking   uint32     // WebSocket: the hook call its input waits for (park.go), 0 = none
}

func (cc *conn) extra() *connExtra {
	if cc.x == nil {
		cc.x = &connExtra{}
	}
	return cc.x
}

// tidy drops connExtra once nothing in it is in use.
func (cc *conn) tidy() {
	if x := cc.x; x != nil && x.in == nil && x.pending == nil && x.channels == nil && x.callback == nil && x.origin == nil && x.ws == nil && x.cmdAt == 0 && x.ctlAt == 0 && x.allowed == nil && x.publish == nil && x.pubAt == 0 && x.asking == 0 {
		cc.x = nil
	}
}

func (cc *conn) pendingLen() int {
	if cc.x == nil {
		return 0
	}
	return len(cc.x.pending)
}

// unread reports whether the client's socket holds bytes the loop has not
// read yet while nothing waits to be written to it. A timeout or silence
// check asks it first: such bytes mean the worker is behind, not the
// client, so judgment waits until the loop has read them. (evio reads a
// socket only once its output is written, so with output waiting it is
// the client that does not read.)
func (cc *conn) unread() bool { return cc.idle() && unreadInput(evioFD(cc.ec)) }

// unreadInput reports whether socket fd holds received bytes not read yet.
func unreadInput(fd int) bool {
	n, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
	return err == nil && n > 0
}

// idle reports whether nothing of ours or evio's waits to be written.
func (cc *conn) idle() bool { return cc.pendingLen() == 0 && evioUnsent(cc.ec) == 0 }

// send writes b to a client: straight to the socket when nothing is queued
// ahead of it, else behind what is queued. Bytes the socket does not take
// wait in connExtra.pending, bounded by comet.max_pending; a client over the
// bound is a slow consumer and is dropped.
func (w *Worker) send(cc *conn, b []byte) {
	if cc.state == stDead {
		return
	}
	if cc.idle() {
		for len(b) > 0 {
			n, err := syscall.Write(evioFD(cc.ec), b)
			if err == syscall.EINTR {
				continue
			}
			if err == syscall.EAGAIN {
				break
			}
			if err != nil {
				w.bye = ipc.ByeError
				w.kill(cc)
				w.bye = ipc.ByeClosed
				return
			}
			b = b[n:]
		}
		if len(b) == 0 {
			return
		}
	}
	if cc.pendingLen()+len(b) > w.opts.Comet.MaxPending {
		w.counts.SlowConsumers++
		w.log.Debug("slow consumer dropped", "pending", cc.pendingLen()+len(b))
		w.bye = ipc.ByeSlow
		w.kill(cc)
		w.bye = ipc.ByeClosed
		return
	}
	x := cc.extra()
	x.pending = append(x.pending, b...)
	w.handOver(cc)
}

// handOver gets pending output written. evio's own output buffer is
// replaced (not appended to) when a woken Data callback returns bytes -
// upstream issue #72 - so the hand-over happens only while that buffer is
// empty; otherwise the connection waits on Worker.backlogged and the tick
// retries.
func (w *Worker) handOver(cc *conn) {
	if evioUnsent(cc.ec) == 0 {
		if cc.flags&fWoke == 0 {
			cc.flags |= fWoke
			cc.ec.Wake()
		}
		return
	}
	if cc.flags&fQueued == 0 {
		cc.flags |= fQueued
		w.backlogged = append(w.backlogged, cc)
	}
}

// woken is Data(c, nil): evio's answer to our Wake.
func (w *Worker) woken(cc *conn) ([]byte, evio.Action) {
	cc.flags &^= fWoke
	if cc.state == stDead {
		return nil, evio.Close
	}
	if cc.pendingLen() == 0 {
		return nil, evio.None
	}
	if evioUnsent(cc.ec) > 0 {
		w.handOver(cc) // evio got more output since the Wake: wait for it
		return nil, evio.None
	}
	out := cc.x.pending // evio copies it
	cc.x.pending = nil
	cc.tidy()
	return out, evio.None
}

func (w *Worker) retryBacklogged() {
	keep := w.backlogged[:0]
	for _, cc := range w.backlogged {
		switch {
		case cc.state == stDead || cc.pendingLen() == 0:
			cc.flags &^= fQueued
		case evioUnsent(cc.ec) == 0:
			cc.flags &^= fQueued
			pending := cc.x.pending
			cc.x.pending = nil
			w.send(cc, pending) // straight to the socket if it takes it now
		default:
			keep = append(keep, cc)
		}
	}
	clear(w.backlogged[len(keep):])
	w.backlogged = keep
}

// linger half-closes after the answer and discards input until the client
// closes or lingerFor passes: closing with unread input would reset the
// connection and could destroy the answer before the client reads it.
func (w *Worker) linger(cc *conn) {
	if cc.state == stDead || cc.state == stLingering {
		return
	}
	if cc.state == stParked {
		w.unpark(cc)
	}
	w.unsubscribe(cc)
	cc.state = stLingering
	if cc.x != nil {
		cc.x.in = nil
		cc.tidy()
	}
	if cc.idle() {
		syscall.Shutdown(evioFD(cc.ec), syscall.SHUT_WR)
	}
	w.schedule(cc, w.tick+lingerTicks)
}

// kill closes a client from inside the loop: shutdown makes evio's next
// read (or write) fail, and evio then closes the socket and calls Closed.
func (w *Worker) kill(cc *conn) {
	if cc.state == stDead {
		return
	}
	if cc.state == stParked {
		w.unpark(cc)
	}
	w.unsubscribe(cc)
	w.unschedule(cc)
	w.wsDropMessage(cc)
	cc.state = stDead
	cc.x = nil
	syscall.Shutdown(evioFD(cc.ec), syscall.SHUT_RDWR)
}

// forget drops every reference to a closed client.
func (w *Worker) forget(cc *conn) {
	if cc.state == stParked {
		w.unpark(cc)
	}
	w.unsubscribe(cc)
	w.unschedule(cc)
	w.wsDropMessage(cc)
	cc.state = stDead
	cc.x = nil
}
