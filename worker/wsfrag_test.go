package worker

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/megacomet/megacomet/config"
	"github.com/megacomet/megacomet/ipc"
)

// Unfinished fragmented messages (§5.4) are bounded in time and, all of a
// worker's together, in bytes; past either, the client is closed with
// 1008 and counted in ws_fragment_closed.

// begin is the first fragment of a text message of n bytes, {"since":5
// padded with spaces: its end, "}", makes it a command.
func begin(n int) []byte {
	return clientFrame(false, 0, ws.OpText, []byte(`{"since":5`+strings.Repeat(" ", n-len(`{"since":5`))))
}

var finish = clientFrame(true, 0, ws.OpContinuation, []byte("}"))

// heldBytes reads the worker's count of unfinished messages' bytes.
func (h *harness) heldBytes() (n int) {
	h.onLoop(func() { n = h.w.wsHeld })
	return n
}

// A client that begins a message and never finishes it - while answering
// every ping - is closed once comet.ws_fragment_timeout has passed; one
// that finishes in time keeps its heartbeats and stays.
func TestWSUnfinishedMessageTimesOut(t *testing.T) {
	const timeout = 300 * time.Millisecond
	h := startWorker(t, func(o *config.Options) {
		o.Comet.Heartbeat = config.Duration(100 * time.Millisecond)
		o.Comet.WSFragmentTimeout = config.Duration(timeout)
	})
	c := h.openWS("/ws/frag")
	h.waitJoins(1)
	start := time.Now()
	c.write(begin(100))
	pings := 0
	for {
		if time.Since(start) > timeout+5*time.Second {
			t.Fatalf("still open %s after an unfinished message, %d pings answered", time.Since(start), pings)
		}
		hd, p := c.mustNext()
		if hd.OpCode == ws.OpPing {
			pings++
			c.write(clientFrame(true, 0, ws.OpPong, p))
			continue
		}
		code, reason := ws.ParseCloseFrameData(p)
		if hd.OpCode != ws.OpClose || code != ws.StatusPolicyViolation || !strings.Contains(reason, "comet.ws_fragment_timeout") {
			t.Fatalf("got %v %q, want close 1008", hd.OpCode, p)
		}
		break
	}
	// Live time is counted in ticks (10 ms), from the tick before the
	// frame came: the deadline may come up to two ticks early.
	if d := time.Since(start); d < timeout-2*tickEvery || pings == 0 {
		t.Errorf("closed after %s and %d pings answered, want after %s, pinged meanwhile", d, pings, timeout)
	}
	h.countsWhere(func(c ipc.Counts) bool { return c.WSFragmentClosed == 1 })

	// Finished within the timeout: the timer goes back to the heartbeat,
	// and the connection outlives twice the timeout.
	stays := h.openWS("/ws/stays")
	stays.write(begin(100))
	stays.write(clientFrame(false, 0, ws.OpContinuation, []byte("  ")))
	stays.write(finish)
	for until := time.Now().Add(2 * timeout); time.Now().Before(until); {
		hd, p := stays.mustNext()
		if hd.OpCode != ws.OpPing {
			t.Fatalf("got %v %q, want pings", hd.OpCode, p)
		}
		stays.write(clientFrame(true, 0, ws.OpPong, p))
	}
	stays.alive()
	if n := h.heldBytes(); n != 0 {
		t.Errorf("%d bytes of unfinished messages counted after all were done", n)
	}
}

// The bytes of every unfinished message on a worker are bounded: a
// message that would pass the bound closes its connection (1008), the
// others go on, and bytes are given back when a message finishes or its
// connection goes.
func TestWSUnfinishedMessagesBoundPerWorker(t *testing.T) {
	h := startWorker(t, noHeartbeat)
	h.onLoop(func() { h.w.wsHeldMax = 1000 })
	a, b := h.openWS("/ws/a"), h.openWS("/ws/b")
	h.waitJoins(2)
	a.write(begin(400))
	a.write(clientFrame(false, 0, ws.OpContinuation, []byte(strings.Repeat(" ", 300))))
	a.alive() // 700 held
	b.write(begin(400))
	if reason := b.expectClose(ws.StatusPolicyViolation); !strings.Contains(reason, "unfinished messages") {
		t.Errorf("closed with %q", reason)
	}
	a.alive()
	if n := h.heldBytes(); n != 700 {
		t.Errorf("%d bytes held, want a's 700", n)
	}
	a.write(finish) // {"since":5 ...}: a command, taken
	a.alive()
	c := h.openWS("/ws/c")
	c.write(begin(900)) // room again
	c.alive()
	syscall.Close(c.fd) // gone mid-message: its bytes too
	for deadline := time.Now().Add(5 * time.Second); h.heldBytes() != 0; {
		if time.Now().After(deadline) {
			t.Fatalf("%d bytes still held after every message ended", h.heldBytes())
		}
		time.Sleep(10 * time.Millisecond)
	}
	h.countsWhere(func(c ipc.Counts) bool { return c.WSFragmentClosed == 1 })
}

// The fragment deadline rides on the connection's one timer, so what a
// message left unfinished adds to the loop's work allocates nothing: its
// timer firing as a heartbeat (a ping, the deadline checked, the timer set
// again) and the frames that continue it. Measured on the loop itself, on a
// real connection: a test client blocked in a read costs the race
// detector's runtime allocations of its own.
func TestWSFragmentTimerAllocatesNothing(t *testing.T) {
	h := startWorker(t, func(o *config.Options) {
		noHeartbeat(o)
		o.Comet.WSFragmentTimeout = config.Duration(time.Hour)
	})
	c := h.openWS("/ws/a")
	h.waitJoins(1)
	c.write(begin(20))
	c.alive()
	more := clientFrame(false, 0, ws.OpContinuation, nil)
	in := make([]byte, len(more))
	var timer, frames float64
	h.onLoop(func() {
		w := h.w
		cc := w.byID.getString("a")
		if cc == nil || cc.x == nil || cc.x.ws == nil {
			t.Error("no unfinished message on the loop")
			return
		}
		fire := func() { // as the wheel fires it
			w.unschedule(cc)
			w.expire(cc)
		}
		early := testing.AllocsPerRun(100, fire) // for the deadline, the heartbeat later: set again
		beat := testing.AllocsPerRun(100, func() {
			cc.x.ws.hbDue = w.tick // the heartbeat's turn: a ping, and the timer set again
			fire()
		})
		timer = max(early, beat)
		frames = testing.AllocsPerRun(100, func() { w.wsData(cc, in[:copy(in, more)]) })
	})
	if timer != 0 || frames != 0 {
		t.Errorf("%.2f allocations per timer firing, %.2f per continuation frame, with a message unfinished", timer, frames)
	}
	for range 101 { // the pings the heartbeats sent
		if hd, p := c.mustNext(); hd.OpCode != ws.OpPing {
			t.Fatalf("got %v %q, want a ping", hd.OpCode, p)
		}
	}
	c.write(finish)
	c.alive()
}
