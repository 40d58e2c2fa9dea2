package test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/megacomet/megacomet/internal/testutil"
	"github.com/megacomet/megacomet/manager"
)

// These tests run the real megatest binary against the real manager and
// workers on loopback: the "done when" checks.

// megatestRun is one megatest process and its output.
type megatestRun struct {
	cmd     *exec.Cmd
	out     *testutil.SyncBuffer // stdout: progress lines, then the summary line
	errs    *testutil.SyncBuffer // stderr: logs
	summary string               // -json file
	done    chan struct{}
}

// runMegatest starts `megatest LETTER 127.0.0.1 -port … -api … -report 1s args…`.
func runMegatest(t *testing.T, s *testutil.Server, letter string, args ...string) *megatestRun {
	t.Helper()
	_, port, _ := strings.Cut(s.Listen, ":")
	return runMegatestOn(t, "127.0.0.1", s.API, letter, append([]string{"-port", port}, args...)...)
}

// runMegatestOn starts `megatest LETTER HOSTS -api API -report 1s args…`.
func runMegatestOn(t *testing.T, hosts, api, letter string, args ...string) *megatestRun {
	t.Helper()
	return startMegatest(t, 0, append([]string{letter, hosts, "-api", api}, args...))
}

// startMegatest starts megatest with args, under an open-file limit of
// nofile when it is not 0, with its summary in a temp file and progress
// every second (args may say otherwise): tests poll it.
func startMegatest(t *testing.T, nofile int, args []string) *megatestRun {
	t.Helper()
	bin := testutil.Binary(t, "megatest")
	r := &megatestRun{out: &testutil.SyncBuffer{}, errs: &testutil.SyncBuffer{}, done: make(chan struct{}),
		summary: filepath.Join(t.TempDir(), "summary.json")}
	args = append(append(args[:2:2], "-json", r.summary, "-report", "1s"), args[2:]...)
	if nofile > 0 {
		r.cmd = exec.Command("sh", append([]string{"-c", `ulimit -n "$0" && exec "$@"`, strconv.Itoa(nofile), bin}, args...)...)
	} else {
		r.cmd = exec.Command(bin, args...)
	}
	r.cmd.Stdout, r.cmd.Stderr = r.out, r.errs
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.cmd.Wait(); close(r.done) }()
	t.Cleanup(func() {
		select {
		case <-r.done:
		default:
			r.cmd.Process.Kill()
			<-r.done
		}
		if t.Failed() {
			t.Logf("megatest stdout:\n%s\nstderr:\n%s", r.out.String(), r.errs.String())
		}
		if strings.Contains(r.errs.String(), "WARNING: DATA RACE") {
			t.Errorf("data race in megatest:\n%s", r.errs.String())
		}
	})
	return r
}

// stop interrupts megatest (Ctrl-C: it stops publishing, waits -grace for
// what is owed, and writes its summary) and waits for it like wait.
func (r *megatestRun) stop(t *testing.T, timeout time.Duration) (map[string]any, summary) {
	t.Helper()
	r.cmd.Process.Signal(syscall.SIGINT)
	return r.wait(t, timeout)
}

// progress is a field (hb, msgs, active…) of megatest's latest progress
// line, 0 before the first.
func (r *megatestRun) progress(field string) int64 {
	lines := strings.Split(strings.TrimSpace(r.out.String()), "\n")
	for _, f := range strings.Fields(lines[len(lines)-1]) {
		if k, v, _ := strings.Cut(f, "="); k == field {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}

// waitMessages waits until megatest has received n messages: publishing
// is under way.
func (r *megatestRun) waitMessages(t *testing.T, n int64) {
	t.Helper()
	testutil.CheckFor(t, 3*time.Minute, func() error {
		if got := r.progress("msgs"); got < n {
			return fmt.Errorf("megatest received %d messages, want %d", got, n)
		}
		return nil
	})
}

// waitHeld waits until the server holds n connections, each subscribed (the
// manager knows n ids): every one has been answered. A loaded or slow
// machine only makes this take longer, hence the generous deadlines.
func waitHeld(t *testing.T, s *testutil.Server, n int, wait time.Duration) manager.Stats {
	t.Helper()
	return s.WaitStats(t, wait, func(st manager.Stats) error {
		if st.Connections != uint64(n) || st.IDs != n {
			return fmt.Errorf("the server holds %d of %d connections, %d subscribed", st.Connections, n, st.IDs)
		}
		return nil
	})
}

// heartbeats is how many heartbeats the server's workers have written.
func heartbeats(st manager.Stats) uint64 {
	return workerSum(st, func(w manager.WorkerStats) uint64 { return w.Heartbeats })
}

// workerSum adds up one figure over the workers.
func workerSum(st manager.Stats, field func(manager.WorkerStats) uint64) (n uint64) {
	for _, w := range st.Workers {
		n += field(w)
	}
	return n
}

// wait waits for megatest to exit 0 and returns its summary, raw (every
// key) and decoded.
func (r *megatestRun) wait(t *testing.T, timeout time.Duration) (map[string]any, summary) {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(timeout):
		r.cmd.Process.Signal(syscall.SIGINT)
		<-r.done
		t.Fatalf("megatest ran past %s", timeout)
	}
	if code := r.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("megatest exit %d", code)
	}
	b, err := os.ReadFile(r.summary)
	if err != nil {
		t.Fatalf("no summary file: %v", err)
	}
	var raw map[string]any
	var s summary
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatalf("summary: %v\n%s", err, b)
	}
	json.Unmarshal(b, &s)
	// The last line of stdout is the same summary.
	lines := strings.Split(strings.TrimSpace(r.out.String()), "\n")
	var last map[string]any
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil || fmt.Sprint(last) != fmt.Sprint(raw) {
		t.Errorf("last stdout line is not the summary: %q", lines[len(lines)-1])
	}
	return raw, s
}

type summary struct {
	Letter           string  `json:"letter"`
	Target           string  `json:"target"`
	Transport        string  `json:"transport"`
	Connections      int64   `json:"connections"`
	PeakActive       int64   `json:"peak_active"`
	ConnectFailed    int64   `json:"connect_failed"`
	ClosedUnexpected int64   `json:"closed_unexpected"`
	Reconnects       int64   `json:"reconnects"`
	TokensExpired    int64   `json:"tokens_expired"`
	Disconnected     int64   `json:"disconnected"`
	ChannelNotices   int64   `json:"channel_notices"`
	Gaps             int64   `json:"gaps"`
	Messages         int64   `json:"messages"`
	Lost             int64   `json:"lost"`
	Duplicates       int64   `json:"duplicates"`
	Heartbeats       int64   `json:"heartbeats"`
	ConnectRate      float64 `json:"connect_rate"`
	LatencyMs        latency `json:"latency_ms"`
	BroadcastMs      []struct {
		latency
		Received int64 `json:"received"`
		Expected int64 `json:"expected"`
	} `json:"broadcast_ms"`
	Active         int64    `json:"active"`
	Ready          int64    `json:"ready"`
	ProtocolErrors int64    `json:"protocol_errors"`
	HTTPErrors     int64    `json:"http_errors"`
	Published      int64    `json:"published"`
	PublishErrors  int64    `json:"publish_errors"`
	Processes      int      `json:"processes"`
	RSSBytes       int64    `json:"rss_bytes"`
	RSSPerConn     float64  `json:"rss_per_conn"`
	PingMs         *latency `json:"ping_ms"`
	Pings          int64    `json:"pings"`
	PingErrors     int64    `json:"ping_errors"`
}

type latency struct {
	P50 float64 `json:"p50"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// contractFields are the summary keys ../shared/CONTRACT.md promises.
var contractFields = []string{"letter", "target", "transport", "connections", "peak_active",
	"connect_failed", "closed_unexpected", "reconnects", "messages", "lost", "duplicates",
	"heartbeats", "connect_rate", "latency_ms", "broadcast_ms"}

func checkContractFields(t *testing.T, raw map[string]any) {
	t.Helper()
	for _, k := range contractFields {
		if _, ok := raw[k]; !ok {
			t.Errorf("summary has no %q", k)
		}
	}
	lat, _ := raw["latency_ms"].(map[string]any)
	for _, k := range []string{"p50", "p99", "max"} {
		if _, ok := lat[k]; !ok {
			t.Errorf("latency_ms has no %q", k)
		}
	}
	rounds, ok := raw["broadcast_ms"].([]any)
	if !ok {
		t.Errorf("broadcast_ms is %T, want an array", raw["broadcast_ms"])
	}
	for i, r := range rounds {
		m, _ := r.(map[string]any)
		for _, k := range []string{"p50", "p99", "max", "received", "expected"} {
			if _, ok := m[k]; !ok {
				t.Errorf("broadcast_ms[%d] has no %q", i, k)
			}
		}
	}
}

var progressLine = regexp.MustCompile(`^t=[0-9.]+s active=\d+ opened=\d+ closed=\d+ failed=\d+ msgs=\d+ hb=\d+ p50=(-|[0-9.]+ms) p99=(-|[0-9.]+ms) gaps=\d+$`)

// checkProgress requires at least min progress lines, each well formed.
func checkProgress(t *testing.T, out string, min int) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	lines = lines[:len(lines)-1] // the summary
	if len(lines) < min {
		t.Errorf("%d progress lines, want ≥ %d", len(lines), min)
	}
	for _, l := range lines {
		if !progressLine.MatchString(l) {
			t.Errorf("malformed progress line %q", l)
		}
	}
}

// The issues' check: one `megatest a 127.0.0.1 -n N` holds N SSE (and
// WebSocket) connections, more than one process may hold - it splits
// itself over two, as it would at 30,000 under this machine's 20,000-file
// limit; here 3,000 under a 2,048-file limit - none closes unexpectedly,
// every one gets heartbeats, and the summary has every contract field.
// Every wait is for a state (the server holds them all; the heartbeats of
// two intervals went out), never for a time, so a slower machine (the race
// detector, a busy neighbour) makes it slower, not red.
func TestMegatestHoldsMoreThanAProcess(t *testing.T) {
	for _, tr := range []string{"sse", "ws"} {
		t.Run(tr, func(t *testing.T) { holdsMany(t, tr, false) })
	}
	// With auth required: a token minted for every connection and checked
	// by the server once per connection.
	t.Run("sse+auth", func(t *testing.T) { holdsMany(t, "sse", true) })
}

func holdsMany(t *testing.T, tr string, withAuth bool) {
	testutil.Sysctl(t, testutil.DefaultKernel) // as on a fresh machine
	cfg := map[string]string{"server": "workers = 2", "comet": `heartbeat = "1s"`}
	if withAuth {
		cfg["auth"] = fmt.Sprintf("secret = %q", clientSecret)
		t.Setenv("MEGATEST_TOKEN_SECRET", clientSecret)
	}
	s := testutil.Start(t, cfg)
	const n, nofile = 3000, 2048
	_, port, _ := strings.Cut(s.Listen, ":")
	r := startMegatest(t, nofile, []string{"a", "127.0.0.1", "-api", s.API, "-port", port, "-transport", tr, "-n", fmt.Sprint(n)})
	st := waitHeld(t, s, n, 3*time.Minute)
	// Held: two intervals of heartbeats for every connection.
	hb0 := heartbeats(st)
	testutil.CheckFor(t, 3*time.Minute, func() error {
		if hb := heartbeats(s.MustStats()); hb < hb0+2*n {
			return fmt.Errorf("%d heartbeats while held, want %d", hb-hb0, 2*n)
		}
		return nil
	})
	// ... and megatest has read them.
	testutil.CheckFor(t, 3*time.Minute, func() error {
		if hb := r.progress("hb"); hb < 2*n {
			return fmt.Errorf("megatest read %d heartbeats, want %d", hb, 2*n)
		}
		return nil
	})
	raw, sum := r.stop(t, 2*time.Minute)
	checkContractFields(t, raw)
	checkProgress(t, r.out.String(), 2)
	t.Logf("%d %s: connect rate %.0f/s, %d processes, megatest RSS %d bytes (%.0f per connection), %d heartbeats",
		n, tr, sum.ConnectRate, sum.Processes, sum.RSSBytes, sum.RSSPerConn, sum.Heartbeats)
	if sum.Processes != 2 {
		t.Errorf("%d processes, want 2", sum.Processes)
	}
	if sum.Letter != "a" || sum.Transport != tr || sum.Connections != n || sum.Target != s.Listen {
		t.Errorf("letter %q transport %q connections %d target %q", sum.Letter, sum.Transport, sum.Connections, sum.Target)
	}
	if sum.PeakActive != n || sum.Active != n || sum.Ready != n {
		t.Errorf("peak_active %d, active %d and ready %d at the end; want %d", sum.PeakActive, sum.Active, sum.Ready, n)
	}
	if st := s.MustStats(); workerSum(st, func(w manager.WorkerStats) uint64 { return w.SilentClosed }) != 0 {
		t.Errorf("the server closed answering clients as silent: %+v", st.Workers)
	}
	if sum.ClosedUnexpected != 0 || sum.ConnectFailed != 0 || sum.ProtocolErrors != 0 || sum.HTTPErrors != 0 || sum.Reconnects != 0 {
		t.Errorf("closed_unexpected %d connect_failed %d protocol_errors %d http_errors %d reconnects %d; want 0",
			sum.ClosedUnexpected, sum.ConnectFailed, sum.ProtocolErrors, sum.HTTPErrors, sum.Reconnects)
	}
	// megatest read the two intervals' heartbeats the server wrote.
	if sum.Heartbeats < 2*n {
		t.Errorf("%d heartbeats read for %d connections held two intervals", sum.Heartbeats, n)
	}
	if sum.ConnectRate <= 0 {
		t.Errorf("connect_rate %v", sum.ConnectRate)
	}
	if len(sum.BroadcastMs) != 0 || sum.Lost != 0 || sum.Duplicates != 0 {
		t.Errorf("broadcast_ms %v lost %d duplicates %d", sum.BroadcastMs, sum.Lost, sum.Duplicates)
	}
}

// -pub and -broadcast with a few thousand connections on every transport:
// every published id arrives exactly once, every broadcast reaches every
// connection, and the latencies are sane.
func TestMegatestPublishAndBroadcast(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 2", "comet": `poll_timeout = "1s"`})
	for _, tc := range []struct {
		tr string
		n  int
	}{{"sse", 3000}, {"stream", 1000}, {"lp", 1000}, {"ws", 1000}} {
		t.Run(tc.tr, func(t *testing.T) {
			r := runMegatest(t, s, "p"+tc.tr, "-transport", tc.tr, "-n", fmt.Sprint(tc.n), "-pub", "400", "-broadcast", "3", "-hold", "3s", "-report", "1s")
			raw, sum := r.wait(t, 60*time.Second)
			checkContractFields(t, raw)
			checkProgress(t, r.out.String(), 2)
			t.Logf("%s: %d published, latency p50 %.2f ms p99 %.2f ms max %.2f ms; broadcasts %+v",
				tc.tr, sum.Published, sum.LatencyMs.P50, sum.LatencyMs.P99, sum.LatencyMs.Max, sum.BroadcastMs)
			if sum.Published < 400 || sum.PublishErrors != 0 {
				t.Errorf("published %d, publish errors %d", sum.Published, sum.PublishErrors)
			}
			if sum.Lost != 0 || sum.Duplicates != 0 || sum.ClosedUnexpected != 0 {
				t.Errorf("lost %d duplicates %d closed_unexpected %d", sum.Lost, sum.Duplicates, sum.ClosedUnexpected)
			}
			l := sum.LatencyMs
			if !(l.P50 > 0 && l.P50 <= l.P99 && l.P99 <= l.Max) {
				t.Errorf("latency %+v", l)
			}
			if len(sum.BroadcastMs) != 3 {
				t.Fatalf("%d broadcast rounds, want 3", len(sum.BroadcastMs))
			}
			var bcast int64
			for i, b := range sum.BroadcastMs {
				bcast += b.Received
				if b.Expected != int64(tc.n) || b.Received != b.Expected {
					t.Errorf("round %d: received %d of %d, want %d", i+1, b.Received, b.Expected, tc.n)
				}
				if !(b.P50 > 0 && b.P50 <= b.P99 && b.P99 <= b.Max) {
					t.Errorf("round %d latency %+v", i+1, b.latency)
				}
			}
			if sum.Messages != sum.Published+bcast {
				t.Errorf("%d messages, want %d published + %d broadcast", sum.Messages, sum.Published, bcast)
			}
		})
	}
}

// -channels N puts each connection on one of N channels, and each round is
// one message to every channel: every connection gets exactly one, over
// SSE and WebSocket alike, and the server holds N channels meanwhile.
func TestMegatestChannels(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 2"})
	for _, tr := range []string{"sse", "ws"} {
		t.Run(tr, func(t *testing.T) {
			const n, channels = 1200, 7
			r := runMegatest(t, s, "ch"+tr, "-transport", tr, "-n", fmt.Sprint(n), "-channels", fmt.Sprint(channels),
				"-broadcast", "2", "-hold", "2s")
			testutil.CheckFor(t, 30*time.Second, func() error {
				st, err := s.Stats()
				if err != nil {
					return err
				}
				if st.Channels != channels || st.Connections != n {
					return fmt.Errorf("%d channels, %d connections", st.Channels, st.Connections)
				}
				return nil
			})
			_, sum := r.wait(t, 60*time.Second)
			if len(sum.BroadcastMs) != 2 {
				t.Fatalf("%d rounds, want 2", len(sum.BroadcastMs))
			}
			for i, b := range sum.BroadcastMs {
				if b.Expected != n || b.Received != n {
					t.Errorf("round %d: received %d of %d, want %d", i+1, b.Received, b.Expected, n)
				}
			}
			if sum.Messages != 2*n || sum.Duplicates != 0 || sum.ClosedUnexpected != 0 {
				t.Errorf("messages %d duplicates %d closed_unexpected %d, want %d 0 0", sum.Messages, sum.Duplicates, sum.ClosedUnexpected, 2*n)
			}
		})
	}
}

// A server that silently drops every 40th delivery (the workers' test
// hook) shows up as loss: published ids never checked off and broadcast
// rounds short of their count, about one in forty.
func TestMegatestReportsDroppedMessages(t *testing.T) {
	t.Setenv("MEGACOMET_FAULT_DROP_EVERY", "40")
	s := testutil.Start(t, map[string]string{"server": "workers = 2"})
	const n = 400
	r := runMegatest(t, s, "d", "-n", fmt.Sprint(n), "-pub", "400", "-broadcast", "2", "-round-wait", "2s", "-hold", "3s", "-grace", "2s", "-report", "1s")
	_, sum := r.wait(t, 60*time.Second)
	var expected, received int64
	for _, b := range sum.BroadcastMs {
		expected += b.Expected
		received += b.Received
	}
	deliveries := sum.Published + expected
	missing := sum.Lost + expected - received
	t.Logf("published %d, lost %d; broadcast %d of %d; missing %d of %d deliveries", sum.Published, sum.Lost, received, expected, missing, deliveries)
	if sum.Lost == 0 || received == expected {
		t.Fatalf("a dropping server went unnoticed: lost %d, broadcast %d of %d", sum.Lost, received, expected)
	}
	// Each worker drops every 40th of its own deliveries.
	if want := deliveries / 40; missing < want-2 || missing > want+2 {
		t.Errorf("%d missing, want about %d", missing, want)
	}
	if sum.Duplicates != 0 || sum.ClosedUnexpected != 0 {
		t.Errorf("duplicates %d closed_unexpected %d", sum.Duplicates, sum.ClosedUnexpected)
	}
}

// Ctrl-C stops megatest early with the summary, like -hold does.
func TestMegatestInterruptWritesSummary(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 1"})
	r := runMegatest(t, s, "i", "-n", "100", "-report", "1s")
	testutil.CheckFor(t, 20*time.Second, func() error {
		if c := s.MustStats().Connections; c != 100 {
			return fmt.Errorf("%d connections", c)
		}
		return nil
	})
	r.cmd.Process.Signal(syscall.SIGINT)
	raw, sum := r.wait(t, 30*time.Second)
	checkContractFields(t, raw)
	if sum.PeakActive != 100 || sum.ClosedUnexpected != 0 {
		t.Errorf("peak_active %d closed_unexpected %d", sum.PeakActive, sum.ClosedUnexpected)
	}
}

// -ping measures GET /ping while the connections are held.
func TestMegatestPing(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 2"})
	_, sum := runMegatest(t, s, "p", "-n", "2000", "-hold", "2s", "-ping", "50ms").wait(t, time.Minute)
	if sum.PingMs == nil || sum.Pings < 10 || sum.PingErrors != 0 || sum.PingMs.P99 <= 0 {
		t.Errorf("ping: %+v over %d pings, %d errors", sum.PingMs, sum.Pings, sum.PingErrors)
	}
}
