package worker

import "time"

// The loop's clocks. tick is wall time in ticks since the worker started;
// the timing wheel runs on it. live is the time the loop kept up, in the
// same ticks: a tick that comes later than the loop asked for - the worker
// was stopped (SIGSTOP), starved of CPU, or busy with a long batch of
// events - adds only the period it asked for (and one tick of slack), not
// the delay. Judgments of a client's silence are made on live time, so a
// worker that is itself behind never blames its clients for the time it
// was not reading them (ws.go wsHeartbeat). lagMax is the worst lateness
// since the last counts report (stats: loop_lag_ms).

// advanceClock moves the clocks to now (time since w.start).
func (w *Worker) advanceClock(now time.Duration) {
	prev := w.now
	w.now = now
	tick := uint32(now / tickEvery)
	step := tick - w.tick
	w.tick = tick
	if prev == 0 {
		w.live = tick
		return
	}
	allowed := w.asked + 1
	w.live += min(step, allowed)
	if late := now - prev - time.Duration(w.asked)*tickEvery; late > w.lagMax {
		w.lagMax = late
	}
}

// askTick records the period the loop asks evio for and returns it.
func (w *Worker) askTick(d time.Duration) time.Duration {
	w.asked = max(1, uint32(d/tickEvery))
	return d
}
