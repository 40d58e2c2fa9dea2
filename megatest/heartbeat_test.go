//go:build linux

package megatest

import (
	"fmt"
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The samples themselves, on a clock the test sets: what is an arrival on
// each transport, the first one after an open only starts the clock, units
// in one read are one arrival, and the uint32 clock may wrap.
func TestHeartbeatLatenessSamples(t *testing.T) {
	const none = -1
	type step struct {
		at   uint32 // e.readAt, ms
		in   string
		late int64 // the sample this read adds, ms; none: no sample
	}
	sseMsg := func(id int) string { return fmt.Sprintf("id: %d\ndata: {\"id\":%[1]d,\"data\":0}\n\n", id) }
	chunkMsg := func(id int) string {
		m := fmt.Sprintf(`{"id":%d,"data":0}`, id)
		return fmt.Sprintf("%x\r\n%s\n\r\n", len(m)+1, m)
	}
	wsMsg := func(id int) string { return string(wsServerFrame(wsText, fmt.Appendf(nil, `{"id":%d,"data":0}`, id))) }
	ping := string(wsServerFrame(wsPing, nil))
	const reopen = "reopen" // closeConn, then a fresh connection
	for _, tc := range []struct {
		tr    string
		steps []step
	}{
		{"sse", []step{
			{1000, "id: 5\n\n", none},                   // the opening cursor: not a heartbeat
			{4000, ":\n\n", none},                       // the first heartbeat only starts the clock
			{19000, ":\n\n", 0},                         // on time
			{35500, ":\n\n", 1500},                      // 1.5 s late
			{40000, sseMsg(6), 0},                       // a message is an arrival, and restarts the wait:
			{55000, ":\n\n", 0},                         // 15 s after the message is on time (19.5 s after the heartbeat)
			{70200, ":\n\n" + sseMsg(7), 200},           // two units in one read: one arrival
			{70300, "retry: 10\n\n", none},              // not a heartbeat
			{80000, "retry: 10\n: reconnect\n\n", none}, // the hand-over notice is not one either
			{0, reopen, none},
			{90000, ":\n\n", none}, // the first after a reopen only starts the clock again
			{108000, ":\n\n", 3000},
		}},
		{"stream", []step{
			{math.MaxUint32 - 5000, "1\r\n\n\r\n", none},
			{10000, "1\r\n\n\r\n", 1}, // the clock wrapped: 15,001 ms
			{20000, chunkMsg(1), 0},
			{37000, "2\r\n\n\n\r\n", 2000}, // two heartbeats in one chunk: one arrival
		}},
		{"ws", []step{
			{1000, ping, none},
			{15000, wsMsg(1), none}, // a text message is not: the server pings every interval regardless
			{17500, ping, 1500},
			{32500, ping, 0},
			{0, reopen, none},
			{60000, ping, none},
		}},
	} {
		t.Run(tc.tr, func(t *testing.T) {
			e, c := hbEngine(t, tc.tr, 15*time.Second)
			var want hist
			for i, st := range tc.steps {
				if st.in == reopen {
					e.closeConn(0, c, whyAnnounced)
					openPair(t, e, c)
					continue
				}
				e.readAt = st.at
				if !e.input(0, c, []byte(st.in), 0) {
					t.Fatalf("step %d: closed", i)
				}
				if st.late != none {
					want.add(uint64(st.late) * 1000)
				}
				if e.hbLate != want {
					t.Fatalf("step %d (%q at %d ms): %d samples, max %d µs; want %d, max %d µs",
						i, st.in, st.at, e.hbLate.n, e.hbLate.max, want.n, want.max)
				}
			}
		})
	}
}

// Long-poll and -heartbeat 0 take no samples.
func TestHeartbeatLatenessNotMeasured(t *testing.T) {
	for _, tc := range []struct {
		tr string
		hb time.Duration
	}{{"lp", 15 * time.Second}, {"sse", 0}} {
		e, _ := hbEngine(t, tc.tr, tc.hb)
		if e.hbMs != 0 {
			t.Errorf("%s -heartbeat %s: measured against %d ms", tc.tr, tc.hb, e.hbMs)
		}
	}
	f := newFake(t)
	for _, args := range []string{"-transport lp", "-heartbeat 0"} {
		s, out := runMegatest(t, f, "-n 2 -hold 100ms "+args)
		if s.HeartbeatLatenessMs != nil || strings.Contains(out, "heartbeat_lateness_ms") {
			t.Errorf("%s: heartbeat lateness reported: %+v", args, s.HeartbeatLatenessMs)
		}
	}
	// Measured, but the fake sent no heartbeat: zeros.
	s, out := runMegatest(t, f, "-n 2 -hold 100ms")
	if h := s.HeartbeatLatenessMs; h == nil || *h != (HeartbeatLatenessMs{}) || !strings.Contains(out, `"heartbeat_lateness_ms":{"p50":0,"p99":0,"max":0,"samples":0}`) {
		t.Errorf("no heartbeats: %+v\n%s", h, out)
	}
}

// hbEngine is an engine with one connection, open and streaming.
func hbEngine(t *testing.T, tr string, hb time.Duration) (*engine, *conn) {
	o := defaultOptions()
	o.Letter, o.Host, o.Transport, o.Heartbeat = "a", "127.0.0.1", tr, hb
	e, err := newEngine(&o, 0, 1, []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:1")}, nil, 0, 0, func(*Snapshot) {}, logger())
	if err != nil {
		t.Fatal(err)
	}
	c := &e.conns[0]
	openPair(t, e, c)
	t.Cleanup(func() {
		if c.state == stBody {
			unix.Close(int(c.fd)) // closeConn closed the earlier ones
		}
	})
	return e, c
}

// openPair gives c a socketpair (a pong has somewhere to go) and makes it
// an open, streaming connection.
func openPair(t *testing.T, e *engine, c *conn) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[1]) })
	c.fd, c.state, c.flags = int32(fds[0]), stBody, c.flags|fReady
	e.st.active++
	e.st.ready++
}

// End to end against the fake, on each transport, with megatest told
// -heartbeat 200ms. Timing is only ever bounded where it holds by
// construction: a server beating every 500 ms makes every gap ~500 ms, so
// the lateness is at least 300 ms less scheduling noise (p50 ≥ 250 ms);
// on time, lateness is scheduling noise only, well under the interval.
func TestHeartbeatLatenessAgainstTheFake(t *testing.T) {
	const n = 4
	beat := func(d time.Duration) func(c *fconn, _ int) {
		return func(c *fconn, _ int) { c.every(d, c.heartbeat) }
	}
	// talk sends a message every d, and a heartbeat every hbEvery-th tick
	// (0: none).
	talk := func(d time.Duration, hbEvery int) func(c *fconn, _ int) {
		return func(c *fconn, _ int) {
			k := 0
			c.every(d, func() {
				k++
				c.send(fmsg{uint64(k), fmt.Sprintf(`{"id":%d,"data":0}`, k)})
				if hbEvery > 0 && k%hbEvery == 0 {
					c.heartbeat()
				}
			})
		}
	}
	// The median, not the tail: a machine that stalls the test for a
	// moment (a CPU quota's throttling) makes a few gaps late for real.
	// Lateness that did not take the interval off would put the median at
	// ~200 ms.
	onTime := func(t *testing.T, h *HeartbeatLatenessMs) {
		if h.P50 > 50 {
			t.Errorf("on time: lateness %+v; want p50 ≤ 50 ms (a gap not less the interval is ~200 ms)", *h)
		}
	}
	late := func(t *testing.T, h *HeartbeatLatenessMs) {
		if h.P50 < 250 {
			t.Errorf("every gap ~500 ms against 200 ms: lateness %+v; want p50 ≥ 250 ms", *h)
		}
	}
	for _, tc := range []struct {
		name, tr  string
		msgsCount bool // messages are arrivals (streams) or not (ws)
		serve     func(c *fconn, n int)
		check     func(t *testing.T, h *HeartbeatLatenessMs)
	}{
		{"sse/on-time", "sse", true, beat(200 * time.Millisecond), onTime},
		{"sse/late", "sse", true, beat(500 * time.Millisecond), late},
		{"stream/late", "stream", true, beat(500 * time.Millisecond), late},
		// Messages every 50 ms and no heartbeat at all: each message
		// restarts the wait, so nothing is late — and they are counted.
		{"sse/messages-only", "sse", true, talk(50*time.Millisecond, 0), onTime},
		{"stream/messages-only", "stream", true, talk(50*time.Millisecond, 0), onTime},
		{"ws/on-time", "ws", false, beat(200 * time.Millisecond), onTime},
		{"ws/late", "ws", false, beat(500 * time.Millisecond), late},
		// Messages every 50 ms do not restart a WebSocket's wait: pings
		// every 500 ms are late.
		{"ws/messages-and-late-pings", "ws", false, talk(50*time.Millisecond, 10), late},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFake(t, func(f *fake) { f.onOpen = tc.serve })
			s, out := runMegatest(t, f, fmt.Sprintf("-n %d -transport %s -heartbeat 200ms -hold 2s", n, tc.tr))
			units := s.Heartbeats
			if tc.msgsCount {
				units += s.Messages
			}
			checkSamples(t, s, units, n, out)
			tc.check(t, s.HeartbeatLatenessMs)
		})
	}
}

// checkSamples: every arrival after a connection's first is one sample, so
// there are at most units-n (n connections, each opened once and heard
// from), and units in one read being one arrival is rare enough at these
// rates that there are at least three quarters of that.
func checkSamples(t *testing.T, s Summary, units int64, n int, out string) {
	t.Helper()
	if s.Opened != int64(n) || s.ClosedUnexpected != 0 || s.ProtocolErrors != 0 {
		t.Fatalf("opened %d closed_unexpected %d protocol_errors %d; want %d 0 0\n%s", s.Opened, s.ClosedUnexpected, s.ProtocolErrors, n, out)
	}
	h := s.HeartbeatLatenessMs
	if h == nil {
		t.Fatalf("no heartbeat_lateness_ms\n%s", out)
	}
	if most := units - int64(n); h.Samples > most || h.Samples < most*3/4 || h.Samples < int64(2*n) {
		t.Fatalf("%d samples from %d arrivals on %d connections; want %d at most, %d at least\n%s", h.Samples, units, n, most, max(most*3/4, int64(2*n)), out)
	}
	t.Logf("lateness %+v from %d arrivals", *h, units)
	if h.Max < h.P99 || h.P99 < h.P50 {
		t.Fatalf("lateness %+v", *h)
	}
}

// Split over child processes: the parent's summary has every child's
// samples, each measured against the -heartbeat it was given.
func TestHeartbeatLatenessSplitsOverChildren(t *testing.T) {
	const n = 6
	f := newFake(t, func(f *fake) {
		f.onOpen = func(c *fconn, _ int) { c.every(500*time.Millisecond, c.heartbeat) }
	})
	s, out := runMegatest(t, f, fmt.Sprintf("-n %d -procs 2 -heartbeat 200ms -hold 2s", n))
	if s.Processes != 2 {
		t.Fatalf("processes %d\n%s", s.Processes, out)
	}
	checkSamples(t, s, s.Heartbeats, n, out)
	if h := s.HeartbeatLatenessMs; h.P50 < 250 {
		t.Errorf("every gap ~500 ms against 200 ms: lateness %+v; want p50 ≥ 250 ms", *h)
	}
}
