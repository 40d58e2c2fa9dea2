package worker

import (
	"bytes"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/megacomet/megacomet/config"
	"github.com/megacomet/megacomet/internal/check"
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

// A worker whose clients are only being held goes quiet: it ticks every
// tickQuiet, not every tickEvery. Each tick wakes its threads about ten
// times, which 53 workers on two CPUs feel.
func TestIdleWorkerTicksQuietly(t *testing.T) {
	h := startWorker(t, nil) // default heartbeat and poll_timeout: quiet ticks are tickQuiet
	h.openSSE("quiet")
	h.waitQuiet()
}

// A quiet worker still fires its timers, and never before they are due: a
// long-poll that arrives while the loop ticks every tickQuiet is answered
// with [] once poll_timeout has passed on the loop's clock, not sooner.
func TestQuietWorkerFiresTimersWhenDue(t *testing.T) {
	// Longer than presenceQuiet, so the timer comes due when the loop is
	// quiet again after the poll's subscription; a tenth of it is more
	// than tickQuiet, so quiet ticks stay tickQuiet.
	const pollTimeout = 3 * time.Second
	h := startWorker(t, func(o *config.Options) { o.Comet.PollTimeout = config.Duration(pollTimeout) })
	h.openSSE("quiet")

	// The loop's clock is brought up to date by each event, not only by
	// its ticks (a quiet loop ticks every tickQuiet): a timer set between
	// two ticks counts from the request, less the clock's 10 ms
	// resolution, and so never fires early. A clock that stood still
	// between ticks would answer a poll early by however long ago the last
	// quiet tick was; three polls, each sent when the loop is quiet again,
	// land at three points between two ticks.
	type poll struct {
		c    *rawConn
		sent time.Time
	}
	var polls []poll
	for i := 0; i < 3; i++ {
		h.waitQuiet() // the previous poll's subscription made it busy for presenceQuiet
		c := h.dialRaw()
		tv := syscall.NsecToTimeval((10 * pollTimeout).Nanoseconds())
		syscall.SetsockoptTimeval(c.fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
		polls = append(polls, poll{c, time.Now()})
		c.write([]byte(fmt.Sprintf("GET /lp/timer%d HTTP/1.1\r\nHost: x\r\n\r\n", i)))
	}
	for i, p := range polls {
		answer := p.c.readUntil([]byte("\r\n\r\n[]"))
		held := time.Since(p.sent)
		if !bytes.HasPrefix(answer, []byte("HTTP/1.1 200 ")) {
			t.Fatalf("poll %d answered %q", i, answer)
		}
		if held < pollTimeout-tickEvery {
			t.Errorf("poll %d, held for poll_timeout = %s, was answered after %s", i, pollTimeout, held)
		}
	}
}

// waitQuiet waits until the worker ticks no more often than a quiet loop
// can. evio sleeps the period onTick asks for between one tick and the
// next, so a quiet loop's ticks are at least tickQuiet apart and those in a
// span of time number at most span/tickQuiet + 1, however slow the machine;
// a loop ticking every tickEvery makes ten times that.
func (h *harness) waitQuiet() {
	h.t.Helper()
	type sample struct {
		before, after time.Time // around reading ticks
		ticks         uint32
	}
	var samples []sample
	check.For(h.t, 30*time.Second, func() error {
		s := sample{before: time.Now()}
		s.ticks = h.w.ticks.Load()
		s.after = time.Now()
		samples = append(samples, s)
		// the span from the newest sample at least a second before this
		first := -1
		for i, p := range samples {
			if s.before.Sub(p.after) >= time.Second {
				first = i
			}
		}
		if first < 0 {
			return fmt.Errorf("%d ticks, not yet a second measured", s.ticks)
		}
		samples = samples[first:]
		span, n := s.after.Sub(samples[0].before), s.ticks-samples[0].ticks
		if most := uint32(span/tickQuiet) + 1; n > most {
			return fmt.Errorf("%d ticks in %s, where a loop ticking every %s makes at most %d", n, span.Round(time.Millisecond), tickQuiet, most)
		}
		return nil
	})
}

// A request that was sent is never timed out unread: the loop is held up
// (inside a tick, as by a long batch of other work) past the client's
// header timeout while the request sits in the socket; when the loop goes
// on, the expired timer sees the bytes, lets the loop read them first, and
// the request is answered.
func TestRequestSentIsNeverTimedOutUnread(t *testing.T) {
	const timeout = 200 * time.Millisecond
	h := startWorker(t, func(o *config.Options) { o.Server.HeaderTimeout = config.Duration(timeout) })
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	hold := func() { // on the loop: hold the first tick after the accept
		if h.w.open > 0 {
			once.Do(func() { close(entered); <-release })
		}
	}
	h.w.tickHook.Store(&hold)
	c := h.dialRaw()
	<-entered // accepted, its timer set, and the loop stuck in a tick
	stuck := time.Now()
	c.write(pingReq)
	for time.Since(stuck) < 2*timeout { // the scenario: held up past the timeout
		time.Sleep(timeout / 4)
	}
	h.w.tickHook.Store(nil)
	close(release)
	if got := c.readN(len(h.w.pong)); !bytes.Equal(got, h.w.pong) {
		t.Fatalf("got %q, want the pong", got)
	}
}
