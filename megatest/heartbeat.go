//go:build linux

package megatest

// Heartbeat lateness: how much longer than the server's comet.heartbeat
// (-heartbeat) a connection went without hearing from it, the measure of a
// server that keeps up with its heartbeat timers.
//
// What restarts the wait is what restarts the server's: on a stream (SSE,
// chunked) the server writes a heartbeat once an interval has passed with
// nothing sent, so a heartbeat or a message; on a WebSocket it pings every
// interval whatever else went out, so a ping only. A long-poll's heartbeat
// is the empty answer after poll_timeout, a request timeout rather than a
// beat: not measured (Options.measuresHeartbeat).
//
// One sample per arrival, an arrival being a read that carried at least one
// of those: units that came in the same read are one arrival, so a replay
// of a hundred messages after a reopen is one and not 99 zero gaps that
// would pull the percentiles down. The sample is the gap since the
// connection's previous arrival minus the interval, clamped at 0, into a
// histogram like latency_ms. The first arrival after an open (or reopen)
// only starts the clock: the server starts a stream's heartbeats at a
// random phase of the interval.
//
// Times are ms since the engine's start on the monotonic clock, taken once
// per read, in a uint32 per connection (it wraps after 49 days; the
// subtraction is modular). The gap includes our own delay in reading, so a
// megatest process short of CPU shows up here as lateness too.

// heard records an arrival on c at e.readAt.
func (e *engine) heard(c *conn) {
	if c.flags&fHeard != 0 {
		late := int64(e.readAt-c.heardAt) - e.hbMs
		e.hbLate.add(uint64(max(late, 0)) * 1000)
		e.hbLateV++
	}
	c.heardAt = e.readAt
	c.flags |= fHeard
}
