package bench

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/megacomet/megacomet/internal/loopback"
	"github.com/megacomet/megacomet/internal/procfs"
	"github.com/megacomet/megacomet/manager"
)

// Options are one run's settings; cmd/megabench fills them from flags.
type Options struct {
	Kind          string // c1m, bench or soak: the report's name
	Bin           string // the directory holding megacomet and megatest
	N             int
	Rate          int
	Broadcast     int
	RoundEvery    time.Duration // one broadcast round per this long (0: back to back)
	Hold          time.Duration
	Transport     string
	Heartbeat     time.Duration
	Workers       int // 0: enough for N under the open-file limit
	Pub           int // messages per second to megatest's own ids
	Sample        time.Duration
	Port, APIPort int
	Out           string   // the report's path
	MegatestFlags []string // more flags for megatest
	SysctlFile    string   // applied when root, and restored after
	FloorConns    int
	FloorRounds   int
	AuthSecret    string // client tokens required, HS256 with this secret
	AuthCompare   bool   // then connect N again with auth on: the rate it costs
	HookCompare   bool   // then connect N again with a connect hook (1 ms), and with its cache on
	HookURL       string // hooks.connect for the server (set by the hook rounds)
	HookCache     time.Duration
	EventsURL     string    // hooks.events for the server (set by the events round)
	ChatMembers   int       // then a -chat round: this many WebSocket members of one channel
	ChatRate      int       // its client publishes per second
	ClientPublish bool      // comet.client_publish (the chat round)
	Log           io.Writer // progress: megatest's lines and ours
}

// statsEvery is how often the stats socket is read while megatest runs.
const statsEvery = time.Second

// Run runs it all and returns the report, also written to o.Out.
func Run(o Options) (*Report, error) {
	say := func(f string, a ...any) { fmt.Fprintf(o.Log, "== "+f+"\n", a...) }
	r := &Report{Kind: o.Kind, Date: time.Now().UTC().Format(time.RFC3339), Host: host(), N: o.N,
		Transport: o.Transport, Heartbeat: o.Heartbeat.String(), HoldS: o.Hold.Seconds()}

	if o.SysctlFile != "" && os.Geteuid() == 0 {
		restore, err := tune(o.SysctlFile)
		if err != nil {
			return nil, err
		}
		defer restore()
		say("kernel tuned from %s (restored at the end)", o.SysctlFile)
	}

	floor, err := loopback.Floor(o.FloorConns, o.FloorRounds)
	if err != nil {
		return nil, err
	}
	r.FloorUsPerConn = float64(floor.Nanoseconds()) / 1000
	r.BroadcastFloorMs = r.FloorUsPerConn * float64(o.N) / float64(runtime.NumCPU()) / 1000
	say("loopback floor: %.2f µs of CPU per connection (%d connections × %d rounds)", r.FloorUsPerConn, o.FloorConns, o.FloorRounds)

	r.Workers = o.Workers
	if r.Workers == 0 {
		per := fileLimit() - 64 // what one worker holds (worker.fdReserve)
		// SO_REUSEPORT spreads clients by hash, not evenly: 5 % headroom.
		r.Workers = max(runtime.NumCPU(), (o.N*105/100+per-1)/per)
	}
	srv, err := startServer(o, r.Workers)
	if err != nil {
		return nil, err
	}
	r.ServerLog = strings.TrimSuffix(o.Out, ".json") + "-server.log"
	defer srv.stop(r.ServerLog)
	say("manager: %d workers (log %s, kept as %s)", r.Workers, srv.logPath, r.ServerLog)

	at0 := srv.wait(func(st manager.Stats) bool { return len(st.Workers) == r.Workers && allReady(st) }, time.Minute)
	if at0 == nil {
		return nil, fmt.Errorf("the workers did not become ready; see %s", r.ServerLog)
	}
	// The stats sample process memory once a second: let a fresh sample in.
	time.Sleep(2 * statsEvery)
	if st := srv.stats(); st != nil {
		at0 = st
	}
	r.ServerPSSAt0 = serverPSS(at0)
	slab0 := procfs.SlabBytes()
	cpu := newCPUAccount(srv.cmd.Process.Pid, at0)

	summaryPath := strings.TrimSuffix(o.Out, ".json") + "-megatest.json"
	r.MegatestJSON = summaryPath
	mt, err := startMegatest(o, summaryPath)
	if err != nil {
		return nil, err
	}
	say("megatest %s", strings.Join(mt.Args[1:], " "))

	var (
		mu      sync.Mutex
		heldAt  time.Time
		samples []Sample
	)
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() { // the server's side while megatest runs
		defer close(sampled)
		tick := time.NewTicker(statsEvery)
		defer tick.Stop()
		var nextSample time.Time
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			st := srv.stats()
			if st == nil {
				continue
			}
			cpu.add(st)
			mu.Lock()
			r.ConnectionsHeld = max(r.ConnectionsHeld, st.Connections)
			held := st.Connections >= uint64(o.N) && st.IDs >= o.N
			if held {
				if heldAt.IsZero() {
					heldAt = time.Now()
					say("the server holds %d connections", st.Connections)
				}
				// Memory at N: the last reading while all N are held.
				r.ServerPSSAtN = serverPSS(st)
				r.KernelSlabBytesDelta = int64(procfs.SlabBytes()) - int64(slab0)
			}
			if held && o.Sample > 0 && time.Now().After(nextSample) {
				nextSample = time.Now().Add(o.Sample)
				samples = append(samples, rssSample(st, srv.cmd.Process.Pid, mt.Process.Pid, time.Since(heldAt)))
			}
			mu.Unlock()
		}
	}()
	waitErr := mt.Wait()
	close(stop)
	<-sampled
	if ru, ok := mt.ProcessState.SysUsage().(*syscall.Rusage); ok { // megatest and the children it waited for
		r.CPUSeconds.Megatest = float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
	}
	r.CPUSeconds.Server = cpu.seconds()
	if waitErr != nil {
		return nil, fmt.Errorf("megatest: %v (its summary, if any: %s)", waitErr, summaryPath)
	}
	if err := r.addSummary(summaryPath); err != nil {
		return nil, err
	}
	if r.ServerPSSAtN > 0 {
		r.ServerBytesPerConn = float64(int64(r.ServerPSSAtN)-int64(r.ServerPSSAt0)) / float64(o.N)
	}
	r.Samples = samples
	r.RSSDriftPct = drift(samples, 5*time.Minute, all)
	r.ServerRSSDriftPct = drift(samples, 5*time.Minute, serverProc)
	r.MegatestRSSDriftPct = drift(samples, 5*time.Minute, megatestProc)
	srv.stop(r.ServerLog)
	if o.AuthCompare && o.AuthSecret == "" {
		if r.ConnectRateAuth, err = connectRateWithAuth(o, r.Workers); err != nil {
			return nil, err
		}
		r.AuthConnectRatio = r.ConnectRateAuth / r.ConnectRate
		say("with HS256 tokens: %.0f connects/s, %.0f %% of %.0f without", r.ConnectRateAuth, 100*r.AuthConnectRatio, r.ConnectRate)
	}
	if o.HookCompare {
		if r.ConnectRateHook, r.ConnectRateHookCached, err = connectRateWithHook(o, r.Workers); err != nil {
			return nil, err
		}
		r.HookConnectRatio = r.ConnectRateHook / r.ConnectRate
		say("with a connect hook answering in 1 ms: %.0f connects/s, %.0f %% of %.0f without; %.0f/s with hooks.cache on",
			r.ConnectRateHook, 100*r.HookConnectRatio, r.ConnectRate, r.ConnectRateHookCached)
	}
	if o.HookCompare {
		if r.Events, err = eventsRound(o, r.Workers); err != nil {
			return nil, err
		}
		say("events: %d connects and %d disconnects told, each id exactly once: %v; delay p99 %.0f ms; %.0f requests/s at the application",
			r.Events.Connects, r.Events.Disconnects, r.Events.ExactlyOnce, r.Events.DelayMs.P99, r.Events.RequestsPerSec)
	}
	if o.ChatMembers > 0 {
		if r.Chat, err = chatRound(o, r.Workers); err != nil {
			return nil, err
		}
		say("chat: %d members, %d/s: p50 %.1f p99 %.1f max %.1f ms, lost %d of %d", r.Chat.Members, r.Chat.Rate,
			r.Chat.LatencyMs.P50, r.Chat.LatencyMs.P99, r.Chat.LatencyMs.Max, r.Chat.Lost, r.Chat.Owed)
	}
	r.judge()

	b, _ := json.MarshalIndent(r, "", "  ")
	if err := os.WriteFile(o.Out, append(b, '\n'), 0o644); err != nil {
		return r, err
	}
	return r, nil
}

// megatestSummary is the part of megatest's summary the report uses.
type megatestSummary struct {
	Ready, ClosedUnexpected, ConnectFailed int64
	ConnectRate                            float64
	BroadcastMs                            []Round
	PingMs                                 *Quantiles
	Pings, PingErrors                      int64
	HeartbeatLatenessMs                    *Quantiles
	Published, Lost, Duplicates            int64
}

func (r *Report) addSummary(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("megatest's summary: %w", err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("megatest's summary %s: %w", path, err)
	}
	var s megatestSummary
	for key, dst := range map[string]any{
		"ready": &s.Ready, "closed_unexpected": &s.ClosedUnexpected, "connect_failed": &s.ConnectFailed,
		"connect_rate": &s.ConnectRate, "broadcast_ms": &s.BroadcastMs, "ping_ms": &s.PingMs, "pings": &s.Pings,
		"ping_errors": &s.PingErrors, "heartbeat_lateness_ms": &s.HeartbeatLatenessMs,
		"published": &s.Published, "lost": &s.Lost, "duplicates": &s.Duplicates,
	} {
		if v, ok := raw[key]; ok {
			json.Unmarshal(v, dst)
		}
	}
	r.Ready, r.ClosedUnexpected, r.ConnectFailed, r.ConnectRate = s.Ready, s.ClosedUnexpected, s.ConnectFailed, s.ConnectRate
	r.BroadcastMs = s.BroadcastMs
	if s.PingMs != nil {
		r.PingMs.Quantiles = *s.PingMs
	}
	r.PingMs.Pings, r.PingMs.Failures = s.Pings, s.PingErrors
	if s.HeartbeatLatenessMs != nil {
		r.HeartbeatLatenessMs = *s.HeartbeatLatenessMs
	}
	r.Published, r.Lost, r.Duplicates = s.Published, s.Lost, s.Duplicates
	for _, b := range r.BroadcastMs {
		if r.BroadcastFloorMs > 0 {
			r.BroadcastFloorRatio = max(r.BroadcastFloorRatio, b.Max/r.BroadcastFloorMs)
			r.BroadcastP50Ratio = max(r.BroadcastP50Ratio, b.P50/r.BroadcastFloorMs)
		}
	}
	return nil
}

// server is a running manager.
type server struct {
	cmd     *exec.Cmd
	dir     string
	socket  string
	logPath string
	done    chan struct{}
	stopped bool
}

// authBenchSecret signs the tokens of the run with auth on.
const authBenchSecret = "megabench: HS256 secret, 32 bytes or more"

// connectRateWithAuth connects N once more, to a server that requires a
// token, megatest minting one per connection, and returns the rate.
func connectRateWithAuth(o Options, workers int) (float64, error) {
	o.AuthSecret = authBenchSecret
	return connectRateAgain(o, workers, "auth", nil)
}

// connectRateWithHook connects N again to a server that asks a connect
// hook, served here by net/http answering {"allow":true} after 1 ms (an
// application on the LAN), then again with hooks.cache on.
func connectRateWithHook(o Options, workers int) (plain, cached float64, err error) {
	var calls atomic.Int64
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		calls.Add(1)
		time.Sleep(time.Millisecond)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"allow":true}`)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, 0, err
	}
	go app.Serve(ln)
	defer app.Close()
	o.HookURL = "http://" + ln.Addr().String() + "/connect"
	if plain, err = connectRateAgain(o, workers, "hook", nil); err != nil {
		return 0, 0, err
	}
	if calls.Load() < int64(o.N) {
		return 0, 0, fmt.Errorf("the connect hook was called %d times for %d connections", calls.Load(), o.N)
	}
	o.HookCache = time.Minute
	cached, err = connectRateAgain(o, workers, "hook-cache", nil)
	return plain, cached, err
}

// eventsBenchSecret signs the events round's batches.
const eventsBenchSecret = "megabench: the events round's secret"

// eventsRound connects N once more to a server with hooks.events (linger
// 0) posting to an application here, which checks each batch's signature
// and numbering; once megatest has let go of them all, every id must have
// been told connected and disconnected exactly once.
func eventsRound(o Options, workers int) (*EventsReport, error) {
	type tally struct{ up, down int32 }
	var (
		mu              sync.Mutex
		ids             = make(map[string]*tally, o.N)
		lastSeq         uint64
		delays          []float64
		requests        int
		first, last     time.Time
		bad             error
		connects, downs int
	)
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		now := time.Now()
		mac := hmac.New(sha256.New, []byte(eventsBenchSecret))
		mac.Write(body)
		var b struct {
			Events []struct {
				Seq      uint64
				Type, ID string
				Time     int64
			}
		}
		mu.Lock()
		defer mu.Unlock()
		if r.Header.Get("X-Megacomet-Signature") != "sha256="+hex.EncodeToString(mac.Sum(nil)) || json.Unmarshal(body, &b) != nil {
			bad = fmt.Errorf("a batch badly signed or not JSON: %.200s", body)
			w.WriteHeader(400)
			return
		}
		if requests == 0 {
			first = now
		}
		requests++
		last = now
		for _, e := range b.Events {
			if e.Seq <= lastSeq {
				continue // sent again
			}
			if e.Seq != lastSeq+1 && bad == nil {
				bad = fmt.Errorf("event %d after %d", e.Seq, lastSeq)
			}
			lastSeq = e.Seq
			delays = append(delays, float64(now.UnixMilli()-e.Time))
			t := ids[e.ID]
			if t == nil && e.ID != "" {
				t = &tally{}
				ids[e.ID] = t
			}
			switch e.Type {
			case "connect":
				t.up++
				connects++
			case "disconnect":
				t.down++
				downs++
			}
		}
		w.WriteHeader(204)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go app.Serve(ln)
	defer app.Close()
	o.EventsURL = "http://" + ln.Addr().String() + "/events"
	_, err = connectRateAgain(o, workers, "events", func() error {
		deadline := time.Now().Add(2 * time.Minute)
		for {
			mu.Lock()
			n := downs
			mu.Unlock()
			if n >= o.N || time.Now().After(deadline) {
				return nil
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	if err != nil {
		return nil, err
	}
	mu.Lock()
	defer mu.Unlock()
	if bad != nil {
		return nil, bad
	}
	rep := &EventsReport{Connects: connects, Disconnects: downs, Requests: requests, ExactlyOnce: len(ids) == o.N}
	for _, t := range ids {
		if t.up != 1 || t.down != 1 {
			rep.ExactlyOnce = false
		}
	}
	rep.DelayMs = quantiles(delays)
	if d := last.Sub(first).Seconds(); d > 0 {
		rep.RequestsPerSec = float64(requests) / d
	}
	return rep, nil
}

// connectRateAgain connects N once more, with only the connect phase, to a
// server configured by o, and returns the rate; after, if not nil, runs
// once megatest has exited, before the server stops.
func connectRateAgain(o Options, workers int, name string, after func() error) (float64, error) {
	o.Broadcast, o.Pub, o.Sample, o.Hold = 0, 0, 0, 2*time.Second
	o.MegatestFlags = append(o.MegatestFlags, "-ping", "0")
	srv, err := startServer(o, workers)
	if err != nil {
		return 0, err
	}
	defer srv.stop(strings.TrimSuffix(o.Out, ".json") + "-" + name + "-server.log")
	if srv.wait(func(st manager.Stats) bool { return len(st.Workers) == workers && allReady(st) }, time.Minute) == nil {
		return 0, fmt.Errorf("the workers (%s) did not become ready", name)
	}
	path := strings.TrimSuffix(o.Out, ".json") + "-" + name + "-megatest.json"
	mt, err := startMegatest(o, path)
	if err != nil {
		return 0, err
	}
	if err := mt.Wait(); err != nil {
		return 0, fmt.Errorf("megatest (%s): %v", name, err)
	}
	var s struct {
		ConnectRate      float64 `json:"connect_rate"`
		ClosedUnexpected int64   `json:"closed_unexpected"`
		HTTPErrors       int64   `json:"http_errors"`
	}
	b, err := os.ReadFile(path)
	if err != nil || json.Unmarshal(b, &s) != nil {
		return 0, fmt.Errorf("megatest's summary (%s): %v", name, err)
	}
	if s.HTTPErrors > 0 || s.ClosedUnexpected > 0 {
		return 0, fmt.Errorf("%s: %d http errors, %d unexpected closes (%s)", name, s.HTTPErrors, s.ClosedUnexpected, path)
	}
	if after != nil {
		if err := after(); err != nil {
			return 0, err
		}
	}
	return s.ConnectRate, nil
}

func startServer(o Options, workers int) (*server, error) {
	dir, err := os.MkdirTemp("", "megabench-")
	if err != nil {
		return nil, err
	}
	s := &server{dir: dir, socket: filepath.Join(dir, "stats.sock"), logPath: filepath.Join(dir, "server.log"), done: make(chan struct{})}
	cfg := fmt.Sprintf(`[server]
listen = "127.0.0.1:%d"
workers = %d
[api]
listen = "127.0.0.1:%d"
[manager]
socket = %q
pid_file = %q
[comet]
heartbeat = %q
`, o.Port, workers, o.APIPort, s.socket, filepath.Join(dir, "megacomet.pid"), o.Heartbeat.String())
	if o.ClientPublish {
		cfg += "client_publish = true\nclient_publish_rate = 1000\n" // under [comet]
	}
	if o.AuthSecret != "" {
		cfg += fmt.Sprintf("[auth]\nsecret = %q\n", o.AuthSecret)
	}
	if o.HookURL != "" {
		cfg += fmt.Sprintf("[hooks]\nconnect = %q\ncache = %q\n", o.HookURL, o.HookCache.String())
	}
	if o.EventsURL != "" {
		cfg += fmt.Sprintf("[hooks]\nevents = %q\nsecret = %q\nevents_linger = \"0s\"\nevents_queue = %d\n", o.EventsURL, eventsBenchSecret, 2*o.N+1000)
	}
	return s, s.launch(o.Bin, cfg)
}

// launch writes cfg into the server's dir and starts its manager, logging
// to s.logPath.
func (s *server) launch(bin, cfg string) error {
	cfgPath := filepath.Join(s.dir, "megacomet.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return err
	}
	logf, err := os.Create(s.logPath)
	if err != nil {
		return err
	}
	s.cmd = exec.Command(filepath.Join(bin, "megacomet"), "-config", cfgPath)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start the manager: %w", err)
	}
	go func() { s.cmd.Wait(); logf.Close(); close(s.done) }()
	return nil
}

func (s *server) stats() *manager.Stats {
	b, err := manager.FetchStats(s.socket, 5*time.Second)
	if err != nil {
		return nil
	}
	var st manager.Stats
	if json.Unmarshal(b, &st) != nil {
		return nil
	}
	return &st
}

// wait polls the stats until ok says yes, the manager exits, or timeout.
func (s *server) wait(ok func(manager.Stats) bool, timeout time.Duration) *manager.Stats {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return nil
		default:
		}
		if st := s.stats(); st != nil && ok(*st) {
			return st
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}

// stop stops the manager (SIGTERM; its workers hand their clients over),
// keeps its log at keepLog and removes its directory.
func (s *server) stop(keepLog string) {
	if s.stopped {
		return
	}
	s.stopped = true
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(2 * time.Minute):
		s.cmd.Process.Kill()
		<-s.done
	}
	if err := os.Rename(s.logPath, keepLog); err != nil {
		b, _ := os.ReadFile(s.logPath)
		os.WriteFile(keepLog, b, 0o644)
	}
	os.RemoveAll(s.dir)
}

func allReady(st manager.Stats) bool {
	for _, w := range st.Workers {
		if w.State != "ready" {
			return false
		}
	}
	return len(st.Workers) > 0
}

func serverPSS(st *manager.Stats) uint64 {
	n := st.Manager.PSSBytes
	for _, w := range st.Workers {
		n += w.PSSBytes
	}
	return n
}

func startMegatest(o Options, summary string) (*exec.Cmd, error) {
	args := []string{"a", "127.0.0.1", "-port", strconv.Itoa(o.Port), "-api", fmt.Sprintf("127.0.0.1:%d", o.APIPort),
		"-transport", o.Transport, "-n", strconv.Itoa(o.N), "-rate", strconv.Itoa(o.Rate),
		"-hold", o.Hold.String(), "-heartbeat", o.Heartbeat.String(), "-ping", "100ms", "-report", "5s", "-json", summary}
	if o.Broadcast > 0 {
		args = append(args, "-broadcast", strconv.Itoa(o.Broadcast), "-round-wait", "60s")
		if o.RoundEvery > 0 {
			args = append(args, "-round-every", o.RoundEvery.String())
		}
	}
	if o.Pub > 0 {
		args = append(args, "-pub", strconv.Itoa(o.Pub))
	}
	cmd := exec.Command(filepath.Join(o.Bin, "megatest"), append(args, o.MegatestFlags...)...)
	cmd.Stdout, cmd.Stderr = o.Log, o.Log
	if o.AuthSecret != "" {
		cmd.Env = append(os.Environ(), "MEGATEST_TOKEN_SECRET="+o.AuthSecret) // not where ps shows it
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start megatest: %w", err)
	}
	return cmd, nil
}

// cpuAccount adds up the CPU time of every server process seen: the
// manager and each worker pid, from its first reading to its last.
type cpuAccount struct {
	mu          sync.Mutex
	first, last map[int]int64 // CPU ticks by pid
	managerPID  int
}

func newCPUAccount(managerPID int, st *manager.Stats) *cpuAccount {
	c := &cpuAccount{first: map[int]int64{}, last: map[int]int64{}, managerPID: managerPID}
	c.add(st)
	return c
}

func (c *cpuAccount) add(st *manager.Stats) {
	c.mu.Lock()
	defer c.mu.Unlock()
	pids := []int{c.managerPID}
	for _, w := range st.Workers {
		pids = append(pids, w.PID)
	}
	for _, pid := range pids {
		t := procfs.CPUTicks(pid)
		if t < 0 {
			continue
		}
		if _, ok := c.first[pid]; !ok {
			c.first[pid] = t
		}
		c.last[pid] = t
	}
}

func (c *cpuAccount) seconds() float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ticks int64
	for pid, f := range c.first {
		ticks += c.last[pid] - f
	}
	return float64(ticks) / procfs.TicksPerSecond
}

// rssSample reads the RSS of every process of both sides.
func rssSample(st *manager.Stats, managerPID, megatestPID int, at time.Duration) Sample {
	s := Sample{AtS: at.Seconds(), RSSBytes: map[string]uint64{}}
	put := func(name string, pid int) {
		if rss := procfs.RSS(pid); rss > 0 {
			s.RSSBytes[name] = rss
			s.Total += rss
		}
	}
	put("manager", managerPID)
	for _, w := range st.Workers {
		put("worker"+strconv.Itoa(w.Slot), w.PID)
	}
	put("megatest", megatestPID)
	kids := procfs.Children(megatestPID)
	sort.Ints(kids)
	for i, pid := range kids {
		put("megatest"+strconv.Itoa(i+1), pid)
	}
	return s
}

// drift is the change in the RSS of the processes which picks, in
// percent, from the first sample at or after from to the last one (from
// the first when the run was shorter).
func drift(samples []Sample, from time.Duration, which func(name string) bool) float64 {
	if len(samples) < 2 {
		return 0
	}
	start := samples[0]
	for _, s := range samples {
		if s.AtS >= from.Seconds() {
			start = s
			break
		}
	}
	a, b := start.sum(which), samples[len(samples)-1].sum(which)
	if a == 0 {
		return 0
	}
	return 100 * (float64(b) - float64(a)) / float64(a)
}

// sum is the RSS of the processes which picks.
func (s Sample) sum(which func(name string) bool) uint64 {
	var t uint64
	for name, b := range s.RSSBytes {
		if which(name) {
			t += b
		}
	}
	return t
}

func all(string) bool               { return true }
func megatestProc(name string) bool { return strings.HasPrefix(name, "megatest") }
func serverProc(name string) bool   { return !megatestProc(name) }

// tune applies a sysctl.d file and returns what puts the old values back.
func tune(path string) (func(), error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	old := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		key, _, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		key = strings.TrimSpace(key)
		b, err := os.ReadFile("/proc/sys/" + strings.ReplaceAll(key, ".", "/"))
		if err == nil {
			old[key] = strings.Join(strings.Fields(string(b)), " ")
		}
	}
	if out, err := exec.Command("sysctl", "-q", "-p", path).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("sysctl -p %s: %v: %s", path, err, out)
	}
	return func() {
		for key, v := range old {
			os.WriteFile("/proc/sys/"+strings.ReplaceAll(key, ".", "/"), []byte(v), 0o644)
		}
	}, nil
}

func fileLimit() int {
	var rl syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl) != nil {
		return 1024
	}
	return int(min(rl.Max, 1<<30))
}

func host() string {
	var u syscall.Utsname
	syscall.Uname(&u)
	release := make([]byte, 0, len(u.Release))
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		release = append(release, byte(c))
	}
	mem := procfs.MemTotal()
	return fmt.Sprintf("Linux %s, %d CPUs, %.0f GiB", release, runtime.NumCPU(), float64(mem)/(1<<30))
}

// ChatReport is the -chat round: WebSocket members of one channel publish
// to it from random members (issue 16's chat), every message checked at
// every member.
type ChatReport struct {
	Members    int       `json:"members"`
	Rate       int       `json:"rate_per_s"`
	Sent       int64     `json:"sent"`
	Owed       int64     `json:"owed"` // deliveries: acked messages × members
	Deliveries int64     `json:"deliveries"`
	Lost       int64     `json:"lost"`
	Duplicates int64     `json:"duplicates"`
	LatencyMs  Quantiles `json:"latency_ms"` // send → each member
}

// chatRound holds o.ChatMembers WebSocket connections in one channel for
// 15 s while they publish o.ChatRate messages a second.
func chatRound(o Options, workers int) (*ChatReport, error) {
	o.N, o.Transport, o.Broadcast, o.Pub, o.Sample, o.Hold = o.ChatMembers, "ws", 0, 0, 0, 15*time.Second
	o.AuthSecret, o.ClientPublish = "", true
	o.MegatestFlags = append(o.MegatestFlags, "-ping", "0", "-chat", strconv.Itoa(o.ChatRate))
	srv, err := startServer(o, workers)
	if err != nil {
		return nil, err
	}
	defer srv.stop(strings.TrimSuffix(o.Out, ".json") + "-chat-server.log")
	if srv.wait(func(st manager.Stats) bool { return len(st.Workers) == workers && allReady(st) }, time.Minute) == nil {
		return nil, fmt.Errorf("the workers for the chat round did not become ready")
	}
	path := strings.TrimSuffix(o.Out, ".json") + "-chat-megatest.json"
	mt, err := startMegatest(o, path)
	if err != nil {
		return nil, err
	}
	if err := mt.Wait(); err != nil {
		return nil, fmt.Errorf("megatest -chat: %v", err)
	}
	var s struct {
		Duplicates int64 `json:"duplicates"`
		Chat       struct {
			Sent, Owed, Deliveries, Lost int64
			LatencyMs                    Quantiles `json:"latency_ms"`
		} `json:"chat"`
	}
	b, err := os.ReadFile(path)
	if err != nil || json.Unmarshal(b, &s) != nil {
		return nil, fmt.Errorf("megatest's -chat summary: %v", err)
	}
	return &ChatReport{Members: o.ChatMembers, Rate: o.ChatRate, Sent: s.Chat.Sent, Owed: s.Chat.Owed, Deliveries: s.Chat.Deliveries,
		Lost: s.Chat.Lost, Duplicates: s.Duplicates, LatencyMs: s.Chat.LatencyMs}, nil
}
