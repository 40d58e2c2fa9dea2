package worker

import "time"

// Per-connection rate limits, in loop ticks: no clock read, no timer.

// Each command that changes something makes the connection join again,
// which costs the manager a history lookup, so a client may send
// wsCommandBurst of those at once and then wsCommandRate a second.
const (
	wsCommandRate  = 10
	wsCommandBurst = 32
)

// Each ping a client sends costs its worker a pong: a client may send
// wsPingBurst at once, then comet.ws_ping_rate a second. (Pongs cost
// nothing but the read, and answer the worker's own pings: not limited, so
// an idle connection keeps no limiter state.)
const wsPingBurst = 32

func (w *Worker) wsCommandAllowed(cc *conn) bool {
	return w.allow(&cc.extra().cmdAt, wsCommandRate, wsCommandBurst)
}

func (w *Worker) wsControlAllowed(cc *conn) bool {
	return w.allow(&cc.extra().ctlAt, uint32(w.opts.Comet.WSPingRate), wsPingBurst)
}

// allow is a rate limit, a GCRA in ticks: *at is the tick by which the
// client will have earned back its whole burst (0: never used); an event
// is refused when that is more than a burst ahead.
func (w *Worker) allow(at *uint32, rate, burst uint32) bool {
	every := uint32(time.Second / tickEvery / time.Duration(rate))
	t := *at
	if t == 0 || int32(t-w.tick) < 0 {
		t = w.tick
	}
	if t-w.tick > (burst-1)*every {
		return false
	}
	*at = t + every
	return true
}
