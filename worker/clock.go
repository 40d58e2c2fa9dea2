package worker

import "time"

// The loop's clocks. now and tick are wall time since the worker started
// (tick in tickEvery units; the timing wheel runs on it). They are brought
// up to date by every tick and every event (syncClock), so a timer set by
// an event counts from the event, not from the last tick - which a quiet
// worker takes only every tickQuiet - and never fires early.
//
// live is the time the loop kept up, in ticks: a tick that comes later
// than the loop asked for - the worker was stopped (SIGSTOP), starved of
// CPU, or busy with a long batch of events - adds only the period it asked
// for (and one tick of slack), not the delay. Judgments of a client's
// silence are made on live time, so a worker that is itself behind never
// blames its clients for the time it was not reading them (ws.go
// wsHeartbeat). lagMax is the worst lateness of a tick since the last
// counts report (stats: loop_lag_ms).

// syncClock sets now and tick (now: time since w.start).
func (w *Worker) syncClock(now time.Duration) {
	w.now = now
	w.tick = uint32(now / tickEvery)
}

// advanceClock is the tick's: it syncs the wall clock and moves live.
func (w *Worker) advanceClock(now time.Duration) {
	w.syncClock(now)
	if w.tickAt == 0 {
		w.tickAt, w.liveFor = now, now
		w.live = w.tick
		return
	}
	elapsed, asked := now-w.tickAt, time.Duration(w.asked)*tickEvery
	w.tickAt = now
	w.liveFor += min(elapsed, asked+tickEvery)
	w.live = uint32(w.liveFor / tickEvery)
	if late := elapsed - asked; late > w.lagMax {
		w.lagMax = late
	}
}

// askTick records the period the loop asks evio for and returns it.
func (w *Worker) askTick(d time.Duration) time.Duration {
	w.asked = max(1, uint32(d/tickEvery))
	return d
}
