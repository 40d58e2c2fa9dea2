package bench

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// The soak's drift is from the first sample at or after the 5th minute to
// the last one; a shorter run measures from its first sample.
func TestDrift(t *testing.T) {
	s := func(at time.Duration, worker, megatest uint64) Sample {
		return Sample{AtS: at.Seconds(), RSSBytes: map[string]uint64{"manager": 10, "worker0": worker - 10, "megatest1": megatest}}
	}
	samples := []Sample{s(0, 50, 5), s(4*time.Minute, 90, 9), s(5*time.Minute, 100, 10), s(20*time.Minute, 100, 10), s(30*time.Minute, 101, 11)}
	if got := drift(samples, 5*time.Minute, serverProc); got < 0.99 || got > 1.01 {
		t.Errorf("server drift %.3f %%, want 1 %%", got)
	}
	if got := drift(samples, 5*time.Minute, megatestProc); got < 9.99 || got > 10.01 {
		t.Errorf("megatest drift %.3f %%, want 10 %%", got)
	}
	if got := drift(samples, 5*time.Minute, all); got < 1.81 || got > 1.82 {
		t.Errorf("total drift %.3f %%, want 2/110", got)
	}
	if got := drift(samples[:2], 5*time.Minute, serverProc); got < 79 || got > 81 {
		t.Errorf("a run shorter than 5 minutes: drift %.3f %%, want 80 %% from its first sample", got)
	}
	if got := drift(nil, 5*time.Minute, all); got != 0 {
		t.Errorf("no samples: %v", got)
	}
}

// Every target gets a verdict from the figures, and the table shows each
// figure and verdict.
func TestJudgeAndTable(t *testing.T) {
	r := &Report{Kind: "c1m", N: 1000, Ready: 1000, ConnectRate: 20000, ServerBytesPerConn: 390,
		FloorUsPerConn: 10, BroadcastFloorMs: 5, BroadcastMs: []Round{{Quantiles: Quantiles{P50: 5, P99: 6, Max: 6}, Received: 1000, Expected: 1000}},
		BroadcastFloorRatio: 1.2, BroadcastP50Ratio: 1.0, PingMs: Ping{Quantiles: Quantiles{P99: 30}, Pings: 10},
		HeartbeatLatenessMs: Quantiles{P99: 200}}
	r.judge()
	met := map[string]bool{}
	for _, tg := range r.Targets {
		met[tg.Name] = tg.Met
	}
	for name, want := range map[string]bool{"answered": true, "heartbeat lateness p99": true, "/ping p99 while held": false,
		"broadcast max / floor": true, "broadcast p50 / floor": true, "server memory": true, "connect rate": true} {
		if got, ok := met[name]; !ok || got != want {
			t.Errorf("target %q: met %v (present %v), want %v", name, got, ok, want)
		}
	}
	var b bytes.Buffer
	r.Table(&b)
	for _, want := range []string{"390 B/conn", "1.20× floor", "NOT MET", "p99 30.0"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}
