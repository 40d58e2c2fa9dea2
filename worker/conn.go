package worker

import (
	"bytes"
	"syscall"

	"github.com/megacomet/megacomet/ipc"
	"github.com/tidwall/evio"
)

type connKind uint8

const (
	kindClient connKind = iota
	kindCtlPending
	kindCtl
)

type connState uint8

const (
	stReading   connState = iota // waiting for a request head
	stHeld                       // a request is being held open
	stLingering                  // answered and half-closed; input is discarded
	stDead                       // shut down; evio will report the close
)

// conn is the loop's state for one connection, kept small: an idle client
// costs this struct and nothing else (no goroutine, no buffers).
type conn struct {
	ec       evio.Conn
	fd       int32
	idx      int32 // position in Worker.clients, -1 once killed
	kind     connKind
	state    connState
	woke     bool   // a Wake is outstanding
	queued   bool   // on Worker.backlogged
	in       []byte // an incomplete request head (nil almost always)
	pending  []byte // output the socket did not take, in order after evio's own
	deadline int64  // lingering: when to give up (ns since worker start)
}

var (
	respPong     = []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\nCache-Control: no-store\r\n\r\npong")
	respPongHead = respPong[:len(respPong)-4]
	strPing      = []byte("/ping")
)

// clientData handles bytes read from a client.
func (w *Worker) clientData(cc *conn, in []byte) evio.Action {
	if cc.state != stReading {
		return evio.None // held, lingering or dead: input is discarded
	}
	buf := in
	if len(cc.in) > 0 {
		cc.in = append(cc.in, in...)
		buf = cc.in
	}
	for len(buf) > 0 && cc.state == stReading {
		n, err := parseRequest(buf, &w.req)
		if err == errNeedMore {
			break
		}
		if err != nil {
			w.reject(cc, err.(*httpError))
			break
		}
		w.counts.Requests++
		buf = buf[n:]
		w.route(cc, &w.req)
	}
	switch {
	case cc.state != stReading || len(buf) == 0:
		cc.in = nil
	case len(cc.in) > 0:
		cc.in = append(cc.in[:0], buf...)
	default:
		cc.in = append([]byte(nil), buf...) // a head split across reads: rare
	}
	return evio.None
}

// route answers one parsed request.
func (w *Worker) route(cc *conn, r *request) {
	head := bytes.Equal(r.method, strHEAD)
	if !head && !bytes.Equal(r.method, strGET) {
		w.reject(cc, errMethod)
		return
	}
	if bytes.Equal(r.path, strPing) {
		resp := respPong
		if head {
			resp = respPongHead
		}
		w.send(cc, resp)
		if r.close {
			w.linger(cc)
		}
		return
	}
	// Any other request is held open: an idle comet connection.
	cc.state = stHeld
}

// reject answers with a prebuilt error and closes gracefully.
func (w *Worker) reject(cc *conn, e *httpError) {
	w.counts.BadRequests++
	w.send(cc, e.resp)
	w.linger(cc)
}

// linger half-closes after the answer and discards input until the client
// closes or lingerFor passes: closing with unread input would reset the
// connection and could destroy the answer before the client reads it.
func (w *Worker) linger(cc *conn) {
	if cc.state == stDead || cc.state == stLingering {
		return
	}
	cc.state = stLingering
	cc.in = nil
	if len(cc.pending) == 0 && evioUnsent(cc.ec) == 0 {
		syscall.Shutdown(int(cc.fd), syscall.SHUT_WR)
	}
	cc.deadline = int64(w.now + lingerFor)
	w.lingering = append(w.lingering, cc)
}

func (w *Worker) expireLingering() {
	keep := w.lingering[:0]
	for _, cc := range w.lingering {
		switch {
		case cc.state != stLingering:
		case int64(w.now) >= cc.deadline:
			w.kill(cc)
		default:
			if len(cc.pending) == 0 && evioUnsent(cc.ec) == 0 {
				syscall.Shutdown(int(cc.fd), syscall.SHUT_WR) // the answer is out now
			}
			keep = append(keep, cc)
		}
	}
	clear(w.lingering[len(keep):])
	w.lingering = keep
}

// send writes b to a client: straight to the socket when nothing is queued
// ahead of it, else behind what is queued. Bytes the socket does not take
// wait in cc.pending, bounded by comet.max_pending; a client over the bound
// is a slow consumer and is dropped.
func (w *Worker) send(cc *conn, b []byte) {
	if cc.state == stDead {
		return
	}
	if len(cc.pending) == 0 && evioUnsent(cc.ec) == 0 {
		for len(b) > 0 {
			n, err := syscall.Write(int(cc.fd), b)
			if err == syscall.EINTR {
				continue
			}
			if err == syscall.EAGAIN {
				break
			}
			if err != nil {
				w.kill(cc)
				return
			}
			b = b[n:]
		}
		if len(b) == 0 {
			return
		}
	}
	if len(cc.pending)+len(b) > w.opts.Comet.MaxPending {
		w.counts.SlowConsumers++
		w.kill(cc)
		return
	}
	cc.pending = append(cc.pending, b...)
	w.handOver(cc)
}

// handOver gets cc.pending written. evio's own output buffer is replaced
// (not appended to) when a woken Data callback returns bytes - upstream
// issue #72 - so the hand-over happens only while that buffer is empty;
// otherwise the connection waits on Worker.backlogged and the tick retries.
func (w *Worker) handOver(cc *conn) {
	if evioUnsent(cc.ec) == 0 {
		if !cc.woke {
			cc.woke = true
			cc.ec.Wake()
		}
		return
	}
	if !cc.queued {
		cc.queued = true
		w.backlogged = append(w.backlogged, cc)
	}
}

// woken is Data(c, nil): evio's answer to our Wake.
func (w *Worker) woken(cc *conn) ([]byte, evio.Action) {
	cc.woke = false
	if cc.state == stDead {
		return nil, evio.Close
	}
	if len(cc.pending) == 0 {
		return nil, evio.None
	}
	if evioUnsent(cc.ec) > 0 {
		w.handOver(cc) // evio got more output since the Wake: wait for it
		return nil, evio.None
	}
	out := cc.pending // evio copies it
	cc.pending = nil
	return out, evio.None
}

func (w *Worker) retryBacklogged() {
	keep := w.backlogged[:0]
	for _, cc := range w.backlogged {
		switch {
		case cc.state == stDead || len(cc.pending) == 0:
			cc.queued = false
		case evioUnsent(cc.ec) == 0:
			cc.queued = false
			pending := cc.pending
			cc.pending = nil
			w.send(cc, pending) // straight to the socket if it takes it now
		default:
			keep = append(keep, cc)
		}
	}
	clear(w.backlogged[len(keep):])
	w.backlogged = keep
}

// kill closes a client from inside the loop: shutdown makes evio's next
// read (or write) fail, and evio then closes the socket and calls Closed.
func (w *Worker) kill(cc *conn) {
	if cc.state == stDead {
		return
	}
	cc.state = stDead
	cc.pending, cc.in = nil, nil
	syscall.Shutdown(int(cc.fd), syscall.SHUT_RDWR)
	w.unlist(cc)
}

// unlist removes cc from Worker.clients.
func (w *Worker) unlist(cc *conn) {
	i := int(cc.idx)
	if i < 0 {
		return
	}
	last := len(w.clients) - 1
	w.clients[i] = w.clients[last]
	w.clients[i].idx = int32(i)
	w.clients[last] = nil
	w.clients = w.clients[:last]
	cc.idx = -1
}

// forget drops every reference to a closed client.
func (w *Worker) forget(cc *conn) {
	w.unlist(cc)
	cc.state = stDead
	cc.pending, cc.in = nil, nil
}

// ctlData reads IPC frames from the control connection.
func (w *Worker) ctlData(cc *conn, in []byte) evio.Action {
	if cc.kind == kindCtlPending {
		cc.in = append(cc.in, in...)
		if len(cc.in) < len(w.nonce) {
			return evio.None
		}
		if !bytes.Equal(cc.in[:len(w.nonce)], w.nonce[:]) {
			return evio.Close
		}
		in = cc.in[len(w.nonce):]
		cc.in = nil
		cc.kind = kindCtl
		w.ctl = cc
	}
	buf := in
	if len(w.ctlIn) > 0 {
		w.ctlIn = append(w.ctlIn, in...)
		buf = w.ctlIn
	}
	for {
		t, p, n, err := ipc.Parse(buf)
		if err == ipc.ErrNeedMore {
			break
		}
		if err != nil {
			w.log.Error("corrupt IPC stream from the manager", "err", err)
			return evio.Close
		}
		w.handleFrame(t, p)
		buf = buf[n:]
	}
	w.ctlIn = append(w.ctlIn[:0], buf...)
	if len(w.ctlIn) == 0 && cap(w.ctlIn) > 1<<20 {
		w.ctlIn = nil
	}
	return evio.None
}
