package worker

import "time"

// The delivery queue. A Deliver frame is fanned out at once when nothing
// waits ahead of it; a broadcast that takes longer than fanOutBudget
// pauses (deliver.go) and the rest of its frame, and every Deliver frame
// after it, wait here in order - a later message must never reach a
// connection before an earlier one. The tick goes on with the queue, a
// budget at a time (wakeCtl: at evio's next turn; the tick is the
// backstop), and evio serves the loop's other events (new connections,
// requests, /ping) in between: a broadcast to a full worker no longer holds
// them up for its whole length.
//
// While frames wait they are copies (the control connection's buffer is
// reused); the common case - nothing waiting - copies nothing.

const (
	// fanOutBudget is how long one callback may fan out before it lets
	// the loop's other events in.
	fanOutBudget = 2 * time.Millisecond
	// fanOutCheck is how many pushes go between two looks at the clock.
	fanOutCheck = 32
)

// deliver runs a Deliver payload now, or queues it behind what waits.
func (w *Worker) deliver(p []byte) {
	if w.bcast.active || len(w.delivQ) > 0 {
		w.delivQ = append(w.delivQ, append([]byte(nil), p...))
		return
	}
	w.deliverFrame(p, time.Now().Add(fanOutBudget))
}

// pauseFrame keeps the paused broadcast's body and the rest of its frame
// at the head of the queue, and asks the loop to come back to it.
func (w *Worker) pauseFrame(rest []byte) {
	w.bcast.body = append([]byte(nil), w.bcast.body...)
	w.counts.FanOutPauses++
	if len(rest) > 0 {
		w.delivQ = append(w.delivQ, nil)
		copy(w.delivQ[1:], w.delivQ)
		w.delivQ[0] = append([]byte(nil), rest...)
	}
	w.wakeCtl()
}

// wakeCtl has evio call Data(ctl, nil) at its next turn: after the events
// it is working through, before it sleeps - a paused fan-out goes on at
// once instead of at the next tick (up to tickQuiet away, since the ticker
// is asleep for the period the last tick asked for).
func (w *Worker) wakeCtl() {
	if cc := w.ctl; cc != nil && cc.flags&fWoke == 0 {
		cc.flags |= fWoke
		cc.ec.Wake()
	}
}

// ctlWoken is Data(ctl, nil): evio's answer to wakeCtl. It goes on with
// the queue and wakes itself again only until a tick has taken over: the
// tick then comes every tickBehind, and the loop sleeps that long between
// slices, which leaves the CPU to the rest of the box for a moment - on a
// box shared with its clients that keeps /ping fast (waking without a
// pause made its p99 six times longer here).
func (w *Worker) ctlWoken(cc *conn) {
	cc.flags &^= fWoke
	if w.deliverQueued() && !w.behindAsked {
		w.wakeCtl()
	}
	w.flushPresence()
	w.flushIPC()
}

// deliverQueued goes on with the queue for one budget; it reports whether
// anything still waits.
func (w *Worker) deliverQueued() bool {
	if !w.bcast.active && len(w.delivQ) == 0 {
		return false
	}
	deadline := time.Now().Add(fanOutBudget)
	if w.bcast.active && !w.broadcastOn(deadline) {
		return true
	}
	for len(w.delivQ) > 0 {
		p := w.delivQ[0]
		w.delivQ[0] = nil
		w.delivQ = w.delivQ[1:]
		if !w.deliverFrame(p, deadline) {
			return true
		}
	}
	w.delivQ = nil
	return false
}
