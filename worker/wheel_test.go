package worker

import (
	"testing"
	"time"
	"unsafe"
)

// Heartbeats of connections that all arrive at once are spread over the
// interval: no tick carries much more than its share.
func TestHeartbeatsSpreadOverTheInterval(t *testing.T) {
	w := &Worker{hbTicks: 1500, rng: 12345, tick: 100000, wheelAt: 100000}
	const n = 150000 // one tick's worth of connect storm
	perTick := map[uint32]int{}
	for i := 0; i < n; i++ {
		cc := &conn{state: stStreaming}
		w.startHeartbeats(cc)
		if d := cc.due - w.tick; d < 1 || d > w.hbTicks {
			t.Fatalf("first heartbeat %d ticks away, interval %d", d, w.hbTicks)
		}
		perTick[cc.due]++
	}
	share, worst := n/int(w.hbTicks), 0
	for _, c := range perTick {
		worst = max(worst, c)
	}
	if len(perTick) < int(w.hbTicks)*9/10 || worst > 2*share {
		t.Errorf("%d connections over %d ticks: %d ticks used, worst tick %d (share %d)", n, w.hbTicks, len(perTick), worst, share)
	}
}

// A timer fires at its tick, once, whatever else shares its slot, and
// unscheduling removes it.
func TestWheelFiresDueTimersOnly(t *testing.T) {
	w := &Worker{}
	// Dead connections: firing their timers (expire -> kill) does nothing
	// else, so only the wheel's bookkeeping is under test.
	a, b, c := &conn{state: stDead}, &conn{state: stDead}, &conn{state: stDead}
	w.schedule(a, 5)
	w.schedule(b, 5+wheelSize) // same slot, next round
	w.schedule(c, 7)
	w.unschedule(c)
	linked := func(cc *conn) bool { return cc.flags&fWheel != 0 }
	w.advance(4)
	if !linked(a) || !linked(b) {
		t.Fatal("fired early")
	}
	w.advance(5)
	if linked(a) || !linked(b) {
		t.Fatalf("at tick 5: a linked %v, b linked %v; want a fired, b waiting a round", linked(a), linked(b))
	}
	w.advance(4 + wheelSize)
	if !linked(b) {
		t.Fatal("b fired a tick early")
	}
	w.advance(5 + wheelSize)
	if linked(b) || w.wheel[5&wheelMask] != nil || w.wheel[7&wheelMask] != nil {
		t.Error("wheel not empty after every timer fired")
	}
}

// An idle connection costs this struct; it fits Go's 80-byte size class.
// Growing it past 80 bytes costs 16 more per connection (the next class is
// 96): 16 MB at a million.
func TestConnStaysSmall(t *testing.T) {
	if n := unsafe.Sizeof(conn{}); n > 80 {
		t.Errorf("conn is %d bytes, past the 80-byte size class", n)
	}
}

// A worker whose clients are only being held ticks every tickQuiet, not
// every tickEvery: each tick wakes its threads about ten times, which 53
// workers on two CPUs feel.
func TestIdleWorkerTicksQuietly(t *testing.T) {
	h := startWorker(t, nil)
	h.openSSE("quiet")
	time.Sleep(presenceQuiet + 3*tickQuiet) // the subscription's busy second, then a quiet tick or two
	n0 := h.w.ticks.Load()
	time.Sleep(time.Second)
	if n := h.w.ticks.Load() - n0; n > uint32(time.Second/tickQuiet)+3 {
		t.Fatalf("%d ticks in a quiet second, want at most %d", n, time.Second/tickQuiet+3)
	}
}
