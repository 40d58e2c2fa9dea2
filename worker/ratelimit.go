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

// wsPublishAllowed: comet.client_publish_rate a second, after a burst of
// twice that (publish.go).
func (w *Worker) wsPublishAllowed(cc *conn) bool {
	rate := uint32(w.opts.Comet.ClientPublishRate)
	return w.allow(&cc.extra().pubAt, rate, 2*rate)
}

// eventCost is what one event costs a limiter, in its units (allow).
const eventCost = 2 * uint32(time.Second/tickEvery)

// allow is a rate limit, a GCRA. *at is the time by which the client will
// have earned back its whole burst, counted in units of 1/(2*rate) of a
// tick: a tick is 2*rate units and an event eventCost, exactly, for every
// rate the config accepts (up to 10,000 a second, 100 events a tick).
// Times are even, so a used state is odd (its time |1) and 0 is "never
// used". The clock, 2*rate*w.tick, wraps (every 36 minutes at 10,000 a
// second), so only differences count: *at is at most a burst ahead of the
// clock, and a difference past that means *at is behind it and the
// client has its whole burst. (A state idle for a multiple of the wrap,
// give or take a burst, reads as used: the client waits at most
// burst/rate seconds, never more.)
func (w *Worker) allow(at *uint32, rate, burst uint32) bool {
	now := 2 * rate * w.tick
	t := *at &^ 1
	if *at == 0 || t-now > burst*eventCost {
		t = now
	}
	if t-now > (burst-1)*eventCost {
		return false
	}
	*at = (t + eventCost) | 1
	return true
}
