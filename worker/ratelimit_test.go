package worker

import (
	"bytes"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/megacomet/megacomet/config"
)

// The ranges config/config.go accepts (check): comet.ws_ping_rate 1 to 100
// pings a second, comet.client_publish_rate 1 to 10,000 publishes a second.
// Commands are fixed: wsCommandRate a second after wsCommandBurst.
const (
	minPingRate, maxPingRate       = 1, 100
	minPublishRate, maxPublishRate = 1, 10000
)

// The config accepts exactly the ranges the table below covers: a wider
// one needs rows for it.
func TestRateLimitRangesAreTheConfigs(t *testing.T) {
	for _, tc := range []struct {
		key    string
		set    func(*config.Options, int)
		lo, hi int
	}{
		{"comet.ws_ping_rate", func(o *config.Options, r int) { o.Comet.WSPingRate = r }, minPingRate, maxPingRate},
		{"comet.client_publish_rate", func(o *config.Options, r int) { o.Comet.ClientPublishRate = r }, minPublishRate, maxPublishRate},
	} {
		for r, ok := range map[int]bool{tc.lo - 1: false, tc.lo: true, tc.hi: true, tc.hi + 1: false} {
			o := config.Default()
			tc.set(&o, r)
			if err := o.Validate(); (err == nil) != ok || err != nil && !strings.Contains(err.Error(), tc.key) {
				t.Errorf("%s = %d: %v", tc.key, r, err)
			}
		}
	}
}

// Each limiter admits exactly its burst at once, then its rate a second
// (within one event), for every rate the config accepts - also rates that
// are not a whole number of ticks apart (99, 101, 9999), and more than one
// a tick (past 100) - and wherever the tick counter is, its wrap included.
// The clock is simulated: w.tick, as the loop sets it before each event.
func TestRateLimitsExact(t *testing.T) {
	const seconds = 3
	ticksPerSecond := uint32(time.Second / tickEvery)
	kinds := []struct {
		name  string
		rates []int
		burst func(rate int) int
		set   func(o *config.Options, rate int)
		allow func(w *Worker, cc *conn) bool
	}{
		{"commands", []int{wsCommandRate}, func(int) int { return wsCommandBurst },
			func(*config.Options, int) {}, (*Worker).wsCommandAllowed},
		{"pings", []int{minPingRate, 2, 3, 7, 10, 33, 99, maxPingRate}, func(int) int { return wsPingBurst },
			func(o *config.Options, r int) { o.Comet.WSPingRate = r }, (*Worker).wsControlAllowed},
		{"publishes", []int{minPublishRate, 2, 3, 99, 100, 101, 150, 1000, 3333, 9999, maxPublishRate}, func(r int) int { return 2 * r },
			func(o *config.Options, r int) { o.Comet.ClientPublishRate = r }, (*Worker).wsPublishAllowed},
	}
	starts := []uint32{1, 1<<31 - 7, ^uint32(0) - ticksPerSecond} // the last wraps the tick counter
	for _, k := range kinds {
		for _, rate := range k.rates {
			for _, start := range starts {
				t.Run(fmt.Sprintf("%s/%d/tick%d", k.name, rate, start), func(t *testing.T) {
					o := config.Default()
					k.set(&o, rate)
					w := &Worker{opts: &o, tick: start}
					cc := &conn{}
					burst := k.burst(rate)
					limit := burst + rate*seconds + 10 // a limiter that admits everything still ends
					admit := func() (n int) {
						for n < limit && k.allow(w, cc) {
							n++
						}
						return n
					}
					if n := admit(); n != burst {
						t.Fatalf("%d admitted at once, want the burst, %d", n, burst)
					}
					total := 0
					for range seconds * ticksPerSecond {
						w.tick++
						total += admit()
					}
					if want := rate * seconds; total < want-1 || total > want+1 {
						t.Fatalf("%d admitted in %d s after the burst, want %d (%d a second)", total, seconds, want, rate)
					}
					// Idle for ten minutes: the whole burst again, no more.
					w.tick += 600 * ticksPerSecond
					if n := admit(); n != burst {
						t.Fatalf("%d admitted after an idle while, want the burst, %d", n, burst)
					}
				})
			}
		}
	}
}

// A client publishing faster than comet.client_publish_rate - here 150 a
// second, over 100, a rate that once switched the limit off - is told
// so, and closed with 1008 once a burst's worth of refusals came in a row.
func TestWSClientPublishRateOver100(t *testing.T) {
	const rate = 150
	h := startWorker(t, func(o *config.Options) {
		noHeartbeat(o)
		o.Comet.ClientPublish = true
		o.Comet.ClientPublishRate = rate
	})
	c := h.openWS("/ws/pub")
	h.waitJoins(1)
	// Ten bursts' worth in one go: the worker reads them within a few
	// ticks, far less than the ten seconds they would need.
	var in []byte
	for range 20 * rate {
		in = append(in, text(`{"publish":"news","data":1}`)...)
	}
	done := make(chan struct{})
	go func() { // the server closes while the rest is still coming
		defer close(done)
		for len(in) > 0 {
			n, err := syscall.Write(c.fd, in)
			if err == syscall.EINTR {
				continue
			}
			if err != nil {
				return
			}
			in = in[n:]
		}
	}()
	defer func() { <-done }() // before the fd is closed
	refused := 0
	for {
		hd, p := c.mustNext()
		if hd.OpCode == ws.OpClose {
			if code, reason := ws.ParseCloseFrameData(p); code != ws.StatusPolicyViolation || !strings.Contains(reason, "too many publishes") {
				t.Fatalf("closed with %d %q", code, reason)
			}
			break
		}
		if !bytes.Contains(p, []byte(`"publish rate exceeded"`)) {
			t.Fatalf("got %q", p)
		}
		refused++
	}
	if refused < 2*rate {
		t.Errorf("%d publishes refused before the close, want a burst's worth, %d", refused, 2*rate)
	}
}
