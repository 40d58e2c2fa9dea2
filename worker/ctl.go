package worker

import (
	"bytes"

	"github.com/megacomet/megacomet/ipc"
	"github.com/tidwall/evio"
)

// ctlData reads IPC frames from the control connection (see bridge.go).
func (w *Worker) ctlData(cc *conn, in []byte) evio.Action {
	if cc.kind == kindCtlPending {
		x := cc.extra()
		x.in = append(x.in, in...)
		if len(x.in) < len(w.nonce) {
			return evio.None
		}
		if !bytes.Equal(x.in[:len(w.nonce)], w.nonce[:]) {
			return evio.Close
		}
		in = x.in[len(w.nonce):]
		cc.x = nil
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
	// Whatever the frames made (replies, presence) goes out now.
	w.flushPresence()
	w.flushIPC()
	return evio.None
}
