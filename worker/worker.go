package worker

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/megacomet/megacomet/auth"
	"github.com/megacomet/megacomet/config"
	"github.com/megacomet/megacomet/hooks"
	"github.com/megacomet/megacomet/internal/memtrim"
	"github.com/megacomet/megacomet/internal/rlimit"
	"github.com/megacomet/megacomet/ipc"
	"github.com/tidwall/evio"
)

// Config is the first IPC frame a worker receives (ipc.WorkerConfig).
type Config = ipc.WorkerConfig

// IPCFD is the descriptor the manager hands the worker its IPC socket on.
const IPCFD = ipc.WorkerFD

// fdReserve is how many descriptors a worker keeps for itself (listeners,
// epoll, eventfd, IPC, stdio, /proc reads) below RLIMIT_NOFILE. evio stops
// its loop on an accept error, so a worker must refuse connections before
// the kernel refuses the accept.
const fdReserve = 64

// tickEvery is the loop's housekeeping period while housekeeping is due
// soon: IPC flushes, retries of backlogged clients, the drain schedule. It
// is also the timing wheel's resolution.
const tickEvery = 10 * time.Millisecond

// tickQuiet is the period when nothing waits for a tick and no client came
// or went for presenceQuiet (at most a tenth of comet.heartbeat and
// comet.poll_timeout): timers are then late by up to this much. Each
// tick wakes the worker's threads about ten times (evio's ticker goroutine,
// its eventfd, the runtime's sysmon), so 53 idle workers ticking at 10 ms
// took 55,000 context switches and 17% of this 2-CPU box; at 100 ms, 5,800
// and 2%.
const tickQuiet = 100 * time.Millisecond

// presenceQuiet is how long after the last subscription the loop keeps
// ticking every tickEvery, so a burst of connections reports itself
// promptly.
const presenceQuiet = time.Second

// workerGCPercent is the GC target of worker processes (GOGC overrides it).
// Workers allocate only when connections come and go (about six objects a
// connection; delivering and heartbeats allocate nothing), so a low target
// costs a short collection every ~2,000 connects and keeps ~15% less heap
// resident per connection than 25 did.
const workerGCPercent = 10

// countsEvery is how often a worker reports its counters.
const countsEvery = time.Second

// lingerFor bounds how long a rejected client may keep sending before its
// socket is closed (we read and discard meanwhile, so the answer is not
// destroyed by a reset).
const lingerFor = 2 * time.Second

// Indices of the listeners handed to evio.Serve.
const (
	clientListener = 0
	ctlListener    = 1
)

// Worker is one worker process: a single evio loop. Every field is owned by
// the loop goroutine unless marked otherwise.
//
// Ways in from other goroutines - the only ones:
//   - the control connection: bridge.go copies IPC frames from the manager
//     (and frames it makes on signals) into a Unix socket the loop serves;
//   - evio's Tick, which runs on the loop itself.
//
// No other goroutine touches loop state or calls Wake.
type Worker struct {
	cfg      Config
	opts     *config.Options
	log      *slog.Logger
	ipcFD    int    // the manager socket; the loop writes frames to it
	ipcOut   []byte // frames the socket has not taken yet
	bridge   *bridge
	ctl      *conn  // the authenticated control connection
	ctlIn    []byte // an incomplete IPC frame from ctl
	nonce    [16]byte
	maxConns int
	fdLimit  int

	open   int // connections evio has open, whatever their state
	counts ipc.Counts

	byID         idIndex                       // subscribed connections by client id (subs.go)
	byChan       map[string]map[*conn]struct{} // subscribed connections by channel
	awaiting     map[uint32]awaiter            // subscriptions whose replay is on its way
	rejoins      []rejoin                      // joins the manager deferred, to ask again (subs.go)
	perIP        map[netip.Addr]uint32         // connections per address, with server.max_conns_per_ip
	realIP       map[*conn]netip.Addr          // with perIP: addresses PROXY headers or trusted proxies named, where not the peer's
	trustedNets  []netip.Prefix                // server.trusted_proxies
	awaitingPeak int
	pollMsgs     int                // messages in the long-poll answer being built (deliver.go)
	lastSeen     uint64             // the newest message id this worker knows was issued (subs.go)
	pubs         map[uint32]pubWait // client publishes waiting for the manager (publish.go)
	pubSeq       uint32
	fresh        bool // the subscription being made came without a cursor (route.go)
	nextToken    uint32
	presOut      []byte // presence records not yet framed
	// bye is why the connection being ended now goes (its OpBye), set
	// around the call that ends it; ByeClosed otherwise.
	bye ipc.Reason
	// bans are the ids refused until a time; revoked, the tokens (kick.go).
	bans        map[string]ban
	revoked     revocations
	presFlushed time.Duration
	tickQuiet   time.Duration          // the period when quiet (tickQuiet or less)
	ticks       atomic.Uint32          // onTick calls, for tests
	tickHook    atomic.Pointer[func()] // tests: runs at the start of each tick, on the loop

	wheel       [wheelSize]*conn // timers (wheel.go)
	wheelAt     uint32           // last tick the wheel has fired
	tick        uint32           // now, in ticks
	live        uint32           // ticks the loop kept up: tick minus the loop's own lag (clock.go)
	liveFor     time.Duration    // live, exactly
	tickAt      time.Duration    // when the last tick ran
	asked       uint32           // the tick period last asked of evio, in ticks
	behindAsked bool             // the last tick asked for tickBehind: work is left over
	lagMax      time.Duration    // the worst lateness of a tick since the last counts
	hbTicks     uint32
	pollTicks   uint32
	reqTicks    uint32 // server.header_timeout
	fragTicks   uint32 // comet.ws_fragment_timeout
	rng         uint32

	wsHeld    int // bytes of unfinished WebSocket messages, all connections (ws.go)
	wsHeldMax int // wsHeldMax; tests lower it

	auth  *auth.Verifier // client tokens; nil = auth off (authz.go)
	grant grant          // what the request being served was granted
	head  []byte         // the raw head of the request being served

	hooks     *hooks.Caller      // the application's hooks; nil = none (park.go)
	parked    map[uint32]*parked // connections waiting for a hook's answer
	parkSeq   uint32
	parkTicks uint32       // a parked connection's backstop timer
	hookMu    sync.Mutex   // guards hookDone: Caller goroutines append
	hookDone  []hookResult // answers for the loop
	hookSpare []hookResult

	// Scratch buffers reused by every request and message.
	req     request
	q       query
	scratch []byte
	body    []byte
	renders [renders]rendered

	bcast  broadcast // a broadcast fanning out (deliver.go)
	delivQ [][]byte  // Deliver payloads waiting behind it (queue.go)

	pong, pongHead []byte // /ping's answers, with this config's CORS header
	corsAny        bool
	off            [len(transportNames)]bool // transports server.transports leaves out
	origins        map[string]struct{}
	dropEvery      uint64 // test fault: drop every Nth delivery (0 = never)
	dropped        uint64

	trim memtrim.Trimmer

	start      time.Time
	now        time.Duration // since start, refreshed every tick
	nextCounts time.Duration
	backlogged []*conn // clients whose pending output evio must take later

	drainStart, drainEnd time.Duration
	drainList            []*conn // who to hand over, in order (drainStep)
	drained              int     // how many of drainList are handed over
	draining, stopping   bool
	left                 bool          // no longer accepting (leave)
	port                 int           // the client port, once bound
	exitAt               time.Duration // hard deadline once stopping or draining
}

// Main runs the worker role and returns the process exit code. The manager
// starts `megacomet worker` with the IPC socket on fd 3.
func Main() int {
	// The runtime samples allocations for heap profiles and keeps their
	// stacks (over a megabyte per process here); workers are never profiled.
	runtime.MemProfileRate = 0
	if os.Getenv("GOGC") == "" {
		// An idle worker allocates next to nothing, so headroom above the
		// live heap would only be resident memory per connection.
		debug.SetGCPercent(workerGCPercent)
	}
	w, err := newWorker(IPCFD)
	if err != nil {
		fmt.Fprintln(os.Stderr, "megacomet worker:", err)
		return 1
	}
	go w.signals()
	if err := w.serve(); err != nil {
		w.log.Error("worker failed", "err", err)
		w.sendFatal(err)
		return 1
	}
	w.log.Debug("worker exiting")
	return 0
}

// newWorker sets up a worker whose manager is at the other end of the Unix
// socket ipcFD, reading its Config frame.
func newWorker(ipcFD int) (*Worker, error) {
	var st syscall.Stat_t
	if err := syscall.Fstat(ipcFD, &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFSOCK {
		return nil, fmt.Errorf("fd %d is not the manager's IPC socket: workers are started by the manager", ipcFD)
	}
	// Non-blocking before os.NewFile, so the bridge's reads park in the
	// runtime poller and the loop's writes never block.
	if err := syscall.SetNonblock(ipcFD, true); err != nil {
		return nil, fmt.Errorf("ipc socket: %w", err)
	}
	f := os.NewFile(uintptr(ipcFD), "ipc")
	cfg, rest, err := readConfig(f)
	if err != nil {
		return nil, fmt.Errorf("read config from manager: %w", err)
	}
	w := &Worker{cfg: cfg, opts: &cfg.Options, ipcFD: ipcFD, start: time.Now()}
	w.trim = memtrim.Trimmer{Settle: 5 * time.Second, Min: 512}
	w.log = newLogger(&cfg.Options).With("role", "worker", "slot", cfg.Slot, "pid", os.Getpid())
	if _, err := rand.Read(w.nonce[:]); err != nil {
		return nil, err
	}
	w.fdLimit = rlimit.RaiseNoFile()
	w.maxConns = w.fdLimit - fdReserve
	if m := cfg.Options.Server.MaxConns; m > 0 && m < w.maxConns {
		w.maxConns = m
	}
	if w.maxConns < 1 {
		return nil, fmt.Errorf("open-file limit %d leaves no room for connections", w.fdLimit)
	}
	w.bridge = &bridge{src: f, pending: rest, log: w.log}
	w.initComet()
	if w.auth, err = auth.New(&cfg.Options.Auth); err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	if cfg.Options.Hooks.Deciding() {
		w.hooks = hooks.New(cfg.Options.Hooks, w.log)
		w.parked = make(map[uint32]*parked)
		// The Caller answers within hooks.timeout; this only catches a
		// verdict that never came.
		w.parkTicks = ticksOf(2*cfg.Options.Hooks.Timeout.D() + time.Second)
	}
	return w, nil
}

// initComet prepares delivery state from the options.
func (w *Worker) initComet() {
	o := w.opts
	w.byChan = make(map[string]map[*conn]struct{})
	w.awaiting = make(map[uint32]awaiter)
	w.lastSeen = w.cfg.LastID
	w.inForce(w.cfg.Bans, w.cfg.Revocations) // kick.go
	if o.Server.MaxConnsPerIP > 0 || o.Hooks.Deciding() {
		// Hooks are told the client's address: kept as for the cap.
		w.perIP = make(map[netip.Addr]uint32)
		w.realIP = make(map[*conn]netip.Addr)
	}
	w.hbTicks = ticksOf(o.Comet.Heartbeat.D())
	w.pollTicks = ticksOf(o.Comet.PollTimeout.D())
	w.reqTicks = ticksOf(o.Server.HeaderTimeout.D())
	w.fragTicks = ticksOf(o.Comet.WSFragmentTimeout.D())
	w.wsHeldMax = wsHeldMax
	// Quiet ticks make timers late by up to a tenth of the shortest one.
	w.tickQuiet = min(tickQuiet, max(tickEvery, min(o.Comet.Heartbeat.D(), o.Comet.PollTimeout.D())/10))
	w.rng = uint32(time.Now().UnixNano()) | 1
	w.off = transportsOff(o)
	w.trustedNets, _ = config.ParsePrefixes(o.Server.TrustedProxies) // checked with the config
	w.origins = make(map[string]struct{})
	for _, origin := range o.Server.AllowedOrigins {
		if origin == "*" {
			w.corsAny = true
		}
		w.origins[origin] = struct{}{}
	}
	head := w.appendCORS([]byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\nCache-Control: no-store\r\n"), nil)
	head = append(head, "\r\n"...)
	w.pongHead = head
	w.pong = append(head[:len(head):len(head)], "pong"...)
	if n, err := strconv.ParseUint(os.Getenv("MEGACOMET_FAULT_DROP_EVERY"), 10, 64); err == nil && n > 0 {
		w.dropEvery = n
		w.log.Warn("fault injection: dropping deliveries", "every", n)
	}
}

// readConfig reads the Config frame the manager sends first. Bytes after it
// belong to later frames and go to the loop.
func readConfig(f *os.File) (Config, []byte, error) {
	var cfg Config
	buf := make([]byte, 0, 16<<10)
	f.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer f.SetReadDeadline(time.Time{})
	for {
		t, p, n, err := ipc.Parse(buf)
		if err == nil {
			if t != ipc.TypeConfig {
				return cfg, nil, fmt.Errorf("first frame is %v, want config", t)
			}
			if err := json.Unmarshal(p, &cfg); err != nil {
				return cfg, nil, err
			}
			return cfg, buf[n:], nil
		}
		if err != ipc.ErrNeedMore {
			return cfg, nil, err
		}
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		m, err := f.Read(buf[len(buf):cap(buf)])
		if err != nil {
			return cfg, nil, err
		}
		buf = buf[:len(buf)+m]
	}
}

func newLogger(o *config.Options) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(o.Manager.LogLevel))
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
}

func (w *Worker) serve() error {
	ctlAddr := fmt.Sprintf("@megacomet-worker-%d-%s", os.Getpid(), hex.EncodeToString(w.nonce[:4]))
	ev := evio.Events{
		NumLoops: 1,
		Serving:  func(s evio.Server) evio.Action { return w.serving(s, ctlAddr) },
		Opened:   w.opened,
		Closed:   w.closed,
		Data:     w.data,
		Tick:     w.onTick,
	}
	err := evio.Serve(ev, "tcp://"+w.cfg.Listen+"?reuseport=true", "unix://"+ctlAddr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", w.cfg.Listen, err)
	}
	w.flushIPC()
	return nil
}

// signals turns SIGTERM into a Stop frame on the loop's control connection.
// The worker runs in its own process group, so a terminal's Ctrl-C reaches
// only the manager, which tells its workers what to do.
func (w *Worker) signals() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM)
	for range ch {
		w.log.Info("SIGTERM: stopping")
		w.bridge.inject(ipc.AppendFrame(nil, ipc.TypeStop, nil))
	}
}

// serving runs once the listeners are bound, before the loop starts.
func (w *Worker) serving(s evio.Server, ctlAddr string) evio.Action {
	w.log.Info("worker serving", "listen", s.Addrs[clientListener].String(), "max_conns", w.maxConns, "cpu", w.cfg.CPU)
	if a, ok := s.Addrs[clientListener].(*net.TCPAddr); ok {
		w.port = a.Port
	}
	if k := w.opts.Server.TCPKeepalive.D(); k > 0 {
		if err := keepalive(w.port, k); err != nil {
			w.log.Error("cannot serve", "err", err)
			w.sendFatal(err)
			return evio.Shutdown
		}
	}
	w.ipcOut = ipc.AppendHello(w.ipcOut, &ipc.Hello{
		PID:        uint64(os.Getpid()),
		Slot:       uint64(w.cfg.Slot),
		Generation: w.cfg.Generation,
		MaxConns:   uint64(w.maxConns),
		FDLimit:    uint64(w.fdLimit),
		Listen:     s.Addrs[clientListener].String(),
	})
	w.flushIPC()
	go w.bridge.run(ctlAddr, w.nonce[:])
	return evio.None
}

func (w *Worker) opened(c evio.Conn) ([]byte, evio.Options, evio.Action) {
	w.syncClock(time.Since(w.start))
	opts := evio.Options{ReuseInputBuffer: true}
	if c.AddrIndex() == ctlListener {
		if w.ctl != nil {
			return nil, opts, evio.Close // one control connection only
		}
		c.SetContext(&conn{ec: c, kind: kindCtlPending})
		return nil, opts, evio.None
	}
	if err := learnLayout(c); err != nil {
		w.log.Error("cannot serve", "err", err)
		w.sendFatal(err)
		return nil, opts, evio.Shutdown
	}
	w.open++
	if w.open > w.maxConns {
		w.counts.Refused++
		return nil, opts, evio.Close
	}
	w.counts.Accepted++
	cc := &conn{ec: c}
	c.SetContext(cc)
	switch {
	case w.opts.Server.ProxyProtocol:
		cc.kind = kindProxy // counted against its address once its header names it (proxy.go)
		if w.perIP == nil {
			evioForgetPeer(c)
		}
	case w.perIP != nil && w.trusted(peerIP(c)):
		cc.kind = kindForwarded // counted once its first request names its client (forwarded.go)
	case w.perIP != nil:
		if !w.admitAs(cc, peerIP(c)) {
			return nil, opts, evio.None
		}
	default:
		evioForgetPeer(c)
	}
	if w.draining || w.stopping {
		// Accepted although the worker has left the port (it was already
		// queued): a real answer, never a bare close.
		w.handOff(cc)
		return nil, opts, evio.None
	}
	w.schedule(cc, w.tick+w.reqTicks)
	return nil, opts, evio.None
}

func (w *Worker) closed(c evio.Conn, err error) evio.Action {
	cc, _ := c.Context().(*conn)
	if cc == nil { // refused at open
		w.open--
		return evio.None
	}
	switch cc.kind {
	case kindCtl:
		w.ctl = nil
		if !w.stopping {
			w.log.Warn("manager is gone: draining", "connections", w.open)
			w.startDrain(w.opts.Server.Drain.D())
		}
		return evio.None
	case kindCtlPending:
		return evio.None
	}
	w.open--
	if w.perIP != nil {
		if cc.kind == kindClient {
			w.leaveIP(cc)
		} else {
			delete(w.realIP, cc) // never counted
		}
	}
	if err == syscall.ETIMEDOUT {
		w.counts.KeepaliveClosed++ // TCP keepalive: the peer is gone
		w.bye = ipc.ByeTimeout
	}
	w.forget(cc)
	w.bye = ipc.ByeClosed
	return evio.None
}

// admitIP counts a new connection against its address's
// server.max_conns_per_ip; false when it is one too many (it is still
// counted: leaveIP undoes it at the close, as for every other).
func (w *Worker) admitIP(a netip.Addr) bool {
	n := w.perIP[a] + 1
	w.perIP[a] = n
	return w.opts.Server.MaxConnsPerIP == 0 || int(n) <= w.opts.Server.MaxConnsPerIP
}

// admitAs counts cc against addr - its peer's, or the one a PROXY header
// or a trusted proxy named, then kept in w.realIP for leaveIP; false when
// that is one too many, and the client has its 429.
func (w *Worker) admitAs(cc *conn, addr netip.Addr) bool {
	if addr != peerIP(cc.ec) {
		w.realIP[cc] = addr
	}
	if !w.admitIP(addr) {
		w.counts.PerIPRefused++
		w.reject(cc, errPerIP)
		return false
	}
	return true
}

// leaveIP uncounts a connection: its address is its peer's, or the one
// its PROXY header named (w.realIP).
func (w *Worker) leaveIP(cc *conn) {
	a, ok := w.realIP[cc]
	if ok {
		delete(w.realIP, cc)
	} else {
		a = peerIP(cc.ec)
	}
	if n := w.perIP[a]; n > 1 {
		w.perIP[a] = n - 1
	} else {
		delete(w.perIP, a)
	}
}

// peerIP is a client's address, IPv4 unmapped.
func peerIP(c evio.Conn) netip.Addr {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

func (w *Worker) data(c evio.Conn, in []byte) ([]byte, evio.Action) {
	w.syncClock(time.Since(w.start))
	cc, _ := c.Context().(*conn)
	if cc == nil {
		return nil, evio.Close
	}
	switch cc.kind {
	case kindCtl, kindCtlPending:
		if in == nil {
			w.ctlWoken(cc) // queue.go
			return nil, evio.None
		}
		return nil, w.ctlData(cc, in)
	}
	if in == nil {
		return w.woken(cc)
	}
	return nil, w.clientData(cc, in)
}

// onTick is the loop's housekeeping; evio runs it on the loop goroutine.
func (w *Worker) onTick() (time.Duration, evio.Action) {
	w.ticks.Add(1)
	if hook := w.tickHook.Load(); hook != nil {
		(*hook)()
	}
	w.advanceClock(time.Since(w.start))
	w.retryBacklogged()
	if len(w.rejoins) > 0 {
		w.rejoinDue()
	}
	// While a broadcast fans out, the timers wait for it: it reaches the
	// connections in the order their heartbeats fall due and stands for
	// them, so firing heartbeats meanwhile would write most connections
	// twice and slow the broadcast by as much (at a million on this box,
	// rounds took 2-3 times longer). The other timers are late-tolerant.
	behind := false
	if !w.bcast.active {
		behind = w.advance(w.tick)
	}
	if w.deliverQueued() { // a backstop: wakeCtl normally comes first
		behind = true
		w.flushPresence()
	}
	if w.draining {
		w.drainStep()
	}
	if len(w.presOut) > 0 {
		w.presFlushed = w.now
	}
	w.flushPresence()
	if w.now >= w.nextCounts {
		w.nextCounts = w.now + countsEvery
		if len(w.pubs) > 0 {
			w.sweepPublishes()
		}
		w.queueCounts()
		// After a connection storm, return its garbage's pages.
		w.trim.Observe(w.now, w.open)
	}
	w.flushIPC()
	if (w.draining || w.stopping) && (w.open == 0 || w.now >= w.exitAt) {
		w.queueCounts()
		w.flushIPC()
		return 0, evio.Shutdown
	}
	w.behindAsked = behind
	if behind {
		return w.askTick(tickBehind), evio.None
	}
	if w.quiet() {
		return w.askTick(w.tickQuiet), evio.None
	}
	return w.askTick(tickEvery), evio.None
}

// quiet: nothing waits for the next tick (presence, IPC output, backlogged
// clients, a drain or stop, the control connection) and no client
// subscribed or left within presenceQuiet.
func (w *Worker) quiet() bool {
	return len(w.presOut) == 0 && len(w.ipcOut) == 0 && len(w.backlogged) == 0 && len(w.rejoins) == 0 &&
		!w.draining && !w.stopping && w.ctl != nil && w.now-w.presFlushed >= presenceQuiet
}

// memSamples are read with runtime/metrics, which does not stop the world.
var memSamples = []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/total:bytes"}}

func (w *Worker) queueCounts() {
	w.counts.Conns = uint64(w.open)
	w.counts.LoopLagMs = uint64(w.lagMax / time.Millisecond)
	w.lagMax = 0
	metrics.Read(memSamples)
	w.counts.HeapBytes, w.counts.GoBytes = memSamples[0].Value.Uint64(), memSamples[1].Value.Uint64()
	if w.hooks != nil {
		w.counts.HookWaiting = uint64(len(w.parked))
		for k, s := range w.hooks.Stats() {
			w.counts.Hooks[k] = ipc.HookCounts{Calls: s.Calls, Allowed: s.Allowed, Denied: s.Denied, Failed: s.Failed, CacheHits: s.CacheHits, Latency: s.Latency}
		}
	}
	w.ipcOut = ipc.AppendCounts(w.ipcOut, &w.counts)
}

// flushIPC writes queued frames to the manager without blocking; what the
// socket does not take waits for the next tick.
func (w *Worker) flushIPC() {
	for len(w.ipcOut) > 0 {
		n, err := syscall.Write(w.ipcFD, w.ipcOut)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			if err != syscall.EAGAIN {
				w.ipcOut = w.ipcOut[:0] // the manager is gone; ctl closing tells the loop
			}
			return
		}
		w.ipcOut = w.ipcOut[:copy(w.ipcOut, w.ipcOut[n:])]
	}
	if cap(w.ipcOut) > 1<<20 {
		w.ipcOut = nil
	}
}

// sendFatal tells the manager why this worker is about to exit.
func (w *Worker) sendFatal(err error) {
	f := ipc.AppendFrame(nil, ipc.TypeFatal, []byte(err.Error()))
	w.ipcOut = append(w.ipcOut, f...)
	syscall.SetNonblock(w.ipcFD, false)
	w.flushIPC()
}

// handleFrame acts on one frame from the manager.
func (w *Worker) handleFrame(t ipc.Type, p []byte) {
	switch t {
	case ipc.TypeDeliver:
		w.deliver(p)
	case ipc.TypeStop:
		w.stop()
	case ipc.TypeHooksAnswered:
		w.hooksAnswered() // park.go
	case ipc.TypeDisconnect:
		w.disconnect(p) // kick.go
	case ipc.TypeChannel:
		w.channelChange(p) // kick.go
	case ipc.TypeRevoke:
		w.revoke(p) // kick.go
	case ipc.TypeDrain:
		r := ipc.NewReader(p)
		ms := r.Uvarint()
		if r.Err() != nil {
			ms = uint64(w.opts.Server.Drain.D() / time.Millisecond)
		}
		w.startDrain(time.Duration(ms) * time.Millisecond)
	default:
		w.log.Warn("ignoring IPC frame", "type", t.String())
	}
}

// stop hands every client over now and exits once evio has closed them.
func (w *Worker) stop() {
	if w.stopping {
		return
	}
	w.stopping = true
	w.leave("stopping")
	w.exitAt = w.now + 5*time.Second
	w.log.Info("stopping", "connections", w.open)
	for _, cc := range w.liveConns() {
		w.handOff(cc)
	}
}

// liveConns lists the connections a drain or stop hands over: every one
// in the timing wheel (all but the dead) that is not already lingering.
func (w *Worker) liveConns() []*conn {
	var live []*conn
	for i := range w.wheel {
		for cc := w.wheel[i]; cc != nil; cc = cc.wnext {
			if cc.state != stLingering {
				live = append(live, cc)
			}
		}
	}
	return live
}

// leave stops accepting: the port's other workers get the new connections.
func (w *Worker) leave(why string) {
	if w.left {
		return
	}
	w.left = true
	if err := leaveReusePortGroup(w.port); err != nil {
		w.log.Error("cannot stop accepting; "+why+" anyway", "err", err)
	}
}

// startDrain leaves the port's SO_REUSEPORT group, so new connections go to
// the other workers, and hands the clients over evenly over d so they do
// not all reconnect at once.
func (w *Worker) startDrain(d time.Duration) {
	if w.draining || w.stopping {
		return
	}
	w.draining = true
	w.leave("draining")
	w.drainStart, w.drainEnd = w.now, w.now+d
	w.drainList = w.liveConns()
	w.drained = 0
	w.exitAt = w.drainEnd + 5*time.Second
	w.log.Info("draining", "clients", len(w.drainList), "over", d)
}

// drainStep hands over the share of the drain list due by now. A
// connection that closed meanwhile is skipped by handOff (dead) and the
// list holds it only until the drain ends.
func (w *Worker) drainStep() {
	due := len(w.drainList)
	if span := w.drainEnd - w.drainStart; w.now < w.drainEnd && span > 0 {
		due = int(int64(due) * int64(w.now-w.drainStart) / int64(span))
	}
	for ; w.drained < due; w.drained++ {
		w.handOff(w.drainList[w.drained])
		w.drainList[w.drained] = nil
	}
}
