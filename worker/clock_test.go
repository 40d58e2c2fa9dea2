package worker

import (
	"syscall"
	"testing"
	"time"
)

// The live clock follows the wall clock while ticks come when asked, and
// leaves out the time a tick came late: a stopped or starved loop does not
// age its clients' silence.
func TestLiveClockLeavesOutTheLoopsLag(t *testing.T) {
	w := &Worker{}
	now := time.Duration(0)
	step := func(d time.Duration, ask time.Duration) {
		now += d
		w.advanceClock(now)
		w.askTick(ask)
	}
	step(tickEvery, tickEvery)
	start := w.live
	for i := 0; i < 100; i++ { // a second of ticks on time
		step(tickEvery, tickEvery)
	}
	if got := w.live - start; got != 100 {
		t.Errorf("on time: live advanced %d ticks in 100, want 100", got)
	}
	if w.lagMax > 0 {
		t.Errorf("lag %v with every tick on time", w.lagMax)
	}
	before, wall := w.live, w.tick
	step(6*time.Second, tickEvery) // SIGSTOP for six seconds
	if got := w.tick - wall; got != 600 {
		t.Errorf("the wall clock moved %d ticks in 6 s", got)
	}
	if got := w.live - before; got > 2 {
		t.Errorf("live clock moved %d ticks across a 6 s stall, want at most 2", got)
	}
	if w.lagMax < 5*time.Second {
		t.Errorf("lag %v across a 6 s stall", w.lagMax)
	}
	// Quiet ticks: asked for 100 ms, came after 100 ms.
	step(tickEvery, tickQuiet)
	before = w.live
	step(tickQuiet, tickQuiet)
	if got := w.live - before; got != uint32(tickQuiet/tickEvery) {
		t.Errorf("a quiet tick on time moved live %d ticks, want %d", got, tickQuiet/tickEvery)
	}
}

// Asking a socket whether input waits unread (before a timeout or silence
// check judges a client) allocates nothing, and tells the truth.
func TestUnreadInput(t *testing.T) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fds[0])
	defer syscall.Close(fds[1])
	if unreadInput(fds[0]) {
		t.Errorf("unread input on an empty socket")
	}
	syscall.Write(fds[1], []byte("pong"))
	if !unreadInput(fds[0]) {
		t.Errorf("no unread input after the peer wrote 4 bytes")
	}
	if n := testing.AllocsPerRun(1000, func() { unreadInput(fds[0]) }); n != 0 {
		t.Errorf("%.1f allocations per check", n)
	}
}
