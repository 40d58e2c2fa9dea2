package manager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cloudflare/tableflip"
	"github.com/megacomet/megacomet/cluster"
	"github.com/megacomet/megacomet/config"
	"github.com/megacomet/megacomet/hooks"
	"github.com/megacomet/megacomet/internal/rlimit"
	"golang.org/x/net/netutil"
)

// The API server's limits: a request's head, its whole body, its answer,
// and an idle keep-alive connection each have this long; a head this many
// bytes. api.max_conns bounds the connections.
const (
	apiHeaderTimeout  = 10 * time.Second
	apiReadTimeout    = 60 * time.Second
	apiWriteTimeout   = 60 * time.Second
	apiIdleTimeout    = 120 * time.Second
	apiMaxHeaderBytes = 64 << 10
)

// managerGCPercent is the manager's GC target (GOGC overrides it). Its
// biggest part, the routing table, holds no pointers, so collections stay
// cheap at a million ids.
const managerGCPercent = 25

// Manager owns the worker processes, the client port reservation, the stats
// socket and the API. Fields below mu are guarded by it.
type Manager struct {
	opts    config.Options
	log     *slog.Logger
	upg     *tableflip.Upgrader
	gen     uint64
	listen  string // client address the workers bind, port resolved
	apiAddr string
	cpus    []int
	started time.Time
	sampler *sampler
	status  *statusFeed
	hub     *hub
	// events posts hooks.events (hooks/events.go; the hub's side in
	// events.go); nil when off. eventsRestored: a predecessor's numbering
	// and queue were taken over.
	events         *hooks.Sender
	eventsRestored bool
	// cluster is the link to the other nodes ([cluster] nats), nil when
	// alone; idMark the state_dir mark it must start a new stream above.
	cluster *cluster.Node
	idMark  uint64

	mu         sync.Mutex
	slots      []*slot
	retiring   []*proc // workers of older generations, draining
	stopping   bool
	handedOver bool     // an upgraded manager owns the workers now
	handover   *os.File // the socket to the new manager, once Upgrade succeeded

	skew           time.Duration // MEGACOMET_CLOCK_SKEW: the manager's clock less the real one
	publishRefused atomic.Uint64 // publishes answered 503: a worker was behind
	historyReads   atomic.Uint64 // GET /history answers
	disconnects    atomic.Uint64 // POST /disconnect answers
	channelReads   atomic.Uint64 // GET /channels answers
	channelChanges atomic.Uint64 // POST /subscribe and /unsubscribe answers
	revokes        atomic.Uint64 // POST /revoke answers
	revMu          sync.Mutex    // one writer of revocations.json at a time
	workersKilled  atomic.Uint64 // workers killed for not reading their IPC
	// clientPublished / clientPubRefused: WebSocket client publishes
	// published, and refused here (busy, or the publish failed).
	clientPublished, clientPubRefused atomic.Uint64
}

// startIDs makes ids continue above the high-water mark in
// manager.state_dir, on the manager's clock (MEGACOMET_CLOCK_SKEW moves it,
// for tests).
func (m *Manager) startIDs() error {
	skew, err := clockSkew()
	if err != nil {
		return err
	}
	m.skew = skew
	if skew != 0 {
		m.log.Warn("the manager's clock is moved by MEGACOMET_CLOCK_SKEW", "skew", skew.String())
		m.hub.now = func() time.Time { return time.Now().Add(skew) }
	}
	k, err := newIDMark(m.opts.Manager.StateDir)
	if err != nil {
		return err
	}
	mark, err := k.load()
	if err != nil {
		return err
	}
	if m.opts.Cluster.On() {
		// Ids come from the cluster stream, created above the mark.
		m.idMark = mark
		return nil
	}
	if now := uint64(m.hub.now().UnixMicro()); mark > now {
		m.log.Info("message ids continue above the last mark, ahead of the clock", "mark", mark, "ahead", time.Duration(mark-now)*time.Microsecond)
	}
	var logged time.Time
	// Ids up to the mark may have been issued before, and history of them
	// is gone unless a clean stop kept it (loadHistory).
	m.hub.lastID, m.hub.mark, m.hub.store = mark, mark, k.store
	m.hub.hist.horizon = mark
	m.hub.markErr = func(err error) {
		if time.Since(logged) >= 10*time.Second {
			m.log.Error("cannot record the message id high-water mark: after a crash ids could go back", "state_dir", m.opts.Manager.StateDir, "err", err)
			logged = time.Now()
		}
	}
	return nil
}

// Run starts a manager with opts (read from cfgPath, "" = built-in
// defaults) and blocks until it stops or hands over to an upgraded one.
// Every start-up error is one line naming what failed.
func Run(opts config.Options, cfgPath string, log *slog.Logger) error {
	runtime.MemProfileRate = 0 // nothing reads heap profiles; their buckets cost a megabyte
	if os.Getenv("GOGC") == "" {
		// The routing table and history are most of the manager's heap
		// and change slowly; less headroom is memory kept for clients.
		debug.SetGCPercent(managerGCPercent)
	}
	m := &Manager{opts: opts, log: log, gen: 1, started: time.Now(), sampler: newSampler(), status: newStatusFeed()}
	m.hub = newHub(opts.Comet.HistorySize, opts.Comet.HistoryTTL.D(), m.tell)
	if opts.Comet.MaxReplay > 0 {
		m.hub.maxReplay = opts.Comet.MaxReplay
	}
	m.hub.replayBytes = opts.Comet.MaxPending / 2
	if opts.Hooks.Events != "" {
		m.events = hooks.NewSender(opts.Hooks, log)
		m.hub.ev = newEvents(m.events, opts.Hooks.EventsLinger.D(), opts.Hooks.EventsPublish)
	}
	if opts.Comet.HistoryMaxBytes > 0 {
		m.hub.hist.maxBytes = opts.Comet.HistoryMaxBytes
	}
	// Before anything in it is read or made: see ownfile.go.
	if err := checkRuntimeDir(&opts); err != nil {
		return err
	}
	if err := m.startIDs(); err != nil {
		return err
	}
	if err := m.loadRevocations(); err != nil { // revoke.go
		return err
	}
	if err := m.startCluster(); err != nil {
		return err
	}
	if m.cluster != nil {
		defer m.cluster.Close()
	}
	// First, so a signal during start-up is handled, not fatal.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	rlimit.RaiseNoFile()
	if w := checkMigrateReq(); w != "" {
		log.Warn(w)
	}
	upg, err := tableflip.New(tableflip.Options{PIDFile: opts.Manager.PidFile})
	if err != nil {
		return fmt.Errorf("tableflip: %w", err)
	}
	m.upg = upg
	defer upg.Stop()
	var handover *os.File
	if upg.HasParent() {
		if g, err := strconv.ParseUint(os.Getenv(generationEnv), 10, 64); err == nil && g > 0 {
			m.gen = g
		}
		if handover, err = upg.Fds.File(handoverName); err != nil || handover == nil {
			return fmt.Errorf("upgrade: no handover socket from the previous manager (%v)", err)
		}
		m.log = log.With("generation", m.gen)
		m.log.Info("upgrading: taking over from the previous manager")
	} else if m.cluster != nil {
		m.readCluster(false) // the stream is the history
	} else {
		if err := m.loadHistory(); err != nil {
			return err
		}
		close(m.hub.primed)
	}

	portFile, err := m.clientPort()
	if err != nil {
		return fmt.Errorf("server.listen %s: %w", opts.Server.Listen, err)
	}
	defer portFile.Close()
	statsLn, err := m.statsListener()
	if err != nil {
		return fmt.Errorf("manager.socket %s: %w", opts.Manager.Socket, err)
	}
	apiLn, err := upg.Fds.Listen("tcp", opts.API.Listen)
	if err != nil {
		return fmt.Errorf("api.listen %s: %w", opts.API.Listen, cleanListenErr(err))
	}
	m.apiAddr = apiLn.Addr().String()

	stop := make(chan struct{})
	defer close(stop)
	go m.runSampler(stop)
	go m.runStatus(stop)
	if len(opts.Comet.PresenceEvents) > 0 {
		go m.announceMembers(stop)
	}
	api := &http.Server{
		Handler: m.apiHandler(), ReadHeaderTimeout: apiHeaderTimeout, ReadTimeout: apiReadTimeout,
		WriteTimeout: apiWriteTimeout, IdleTimeout: apiIdleTimeout, MaxHeaderBytes: apiMaxHeaderBytes,
		ErrorLog: slog.NewLogLogger(m.log.Handler(), slog.LevelDebug),
	}
	serve := func() {
		go m.serveStats(statsLn)
		go api.Serve(netutil.LimitListener(apiLn, opts.API.MaxConns))
	}
	if handover == nil {
		serve()
	}
	m.awaitCluster()
	if err := m.startWorkers(); err != nil {
		m.stopWorkers()
		return err
	}
	if err := upg.Ready(); err != nil {
		m.stopWorkers()
		return fmt.Errorf("manager.pid_file %s: %w", opts.Manager.PidFile, err)
	}
	if handover != nil {
		// The previous manager stops serving once it sees Ready; the
		// listeners queue connections until we serve them below.
		err := m.receiveHandover(handover)
		if err != nil {
			m.log.Error("no state from the previous manager: serving without its history", "err", err)
		}
		if m.cluster != nil {
			// Without the predecessor's history, read all the stream has.
			m.readCluster(err == nil)
		}
		if m.cluster == nil || err == nil {
			close(m.hub.primed)
		}
		serve()
	}
	m.startControl() // control.go
	if m.events != nil {
		m.startEvents(stop)
		defer m.stopEvents()
	}
	m.log.Info("megacomet ready",
		"listen", m.listen, "api", m.apiAddr, "socket", opts.Manager.Socket,
		"workers", len(m.slots), "capacity", m.Snapshot().Capacity)

	reloadReq := make(chan struct{}, 1)
	go m.reloads(cfgPath, reloadReq)
	for {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				select {
				case reloadReq <- struct{}{}:
					m.log.Info("SIGHUP: reload requested")
				default:
					m.log.Info("SIGHUP: a reload is already queued")
				}
				continue
			}
			m.log.Info("stopping", "signal", sig.String())
			m.shutdownAPI(api, statsLn)
			m.stopWorkers()
			m.flushEvents()
			if m.cluster == nil {
				m.saveHistory() // else the stream keeps it
			}
			// tableflip's Stop unlinks the socket too, but from its own
			// goroutine, which may not run before the process exits.
			os.Remove(opts.Manager.Socket)
			os.Remove(opts.Manager.PidFile)
			m.log.Info("stopped")
			return nil
		case <-upg.Exit():
			m.shutdownAPI(api, statsLn)
			m.mu.Lock()
			sock := m.handover
			m.mu.Unlock()
			if sock == nil {
				return errors.New("upgraded without a handover socket")
			}
			if err := m.handOver(sock); err != nil {
				m.log.Error("hand-over failed: the new manager starts without this one's workers", "err", err)
			}
			if m.cluster != nil {
				m.cluster.StopControl() // the new manager answers the other nodes
			}
			return nil
		}
	}
}

// shutdownAPI stops accepting on the API and the stats socket and lets
// requests in progress finish.
func (m *Manager) shutdownAPI(api *http.Server, statsLn net.Listener) {
	statsLn.Close()
	m.status.close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	api.Shutdown(ctx)
	cancel()
}

// clientPort reserves the client port (see holdPort), or takes over the
// reservation from the manager this one upgrades.
func (m *Manager) clientPort() (*os.File, error) {
	const name = "client-port"
	f, err := m.upg.Fds.File(name)
	if err != nil {
		return nil, err
	}
	if f == nil {
		if f, m.listen, err = holdPort(m.opts.Server.Listen); err != nil {
			return nil, err
		}
		if err := m.upg.Fds.AddFile(name, f); err != nil {
			f.Close()
			return nil, err
		}
		return f, nil
	}
	m.listen, err = boundAddr(f)
	return f, err
}

// statsListener listens on manager.socket. A socket file left by a manager
// that died is removed; one a live manager answers on is an error.
func (m *Manager) statsListener() (net.Listener, error) {
	path := m.opts.Manager.Socket
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, cleanPathErr(err)
	}
	// Whoever can write the directory can put another socket in its place.
	if fi, err := os.Stat(dir); err == nil && fi.Mode().Perm()&0o022 != 0 {
		return nil, fmt.Errorf("manager.socket: %s is writable by others (mode %v): use a directory only its owner can write", dir, fi.Mode().Perm())
	}
	if !m.upg.HasParent() {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, errors.New("another megacomet manager is serving this socket")
		}
		if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			os.Remove(path)
		}
	}
	ln, err := m.upg.Fds.Listen("unix", path)
	if err != nil {
		return nil, cleanListenErr(err)
	}
	// The stats name every worker and the API; only the owner reads them.
	// Set here, not left to the umask.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("manager.socket: %w", cleanPathErr(err))
	}
	return ln, nil
}

func cleanPathErr(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s %s: %w", pe.Op, pe.Path, pe.Err)
	}
	return err
}

// startWorkers starts every slot and waits until each serves.
func (m *Manager) startWorkers() error {
	n := m.opts.WorkerCount()
	m.cpus = usableCPUs()
	m.mu.Lock()
	for i := 0; i < n; i++ {
		cpu := -1
		if m.opts.Server.PinCPUs && len(m.cpus) > 0 {
			cpu = m.cpus[i%len(m.cpus)]
		}
		m.slots = append(m.slots, &slot{idx: i, cpu: cpu})
	}
	var procs []*proc
	for _, s := range m.slots {
		p, err := m.spawn(s)
		if err != nil {
			m.mu.Unlock()
			return err
		}
		procs = append(procs, p)
	}
	m.mu.Unlock()
	deadline := time.After(startTimeout)
	for _, p := range procs {
		select {
		case <-p.readyc:
		case <-p.exited:
			m.mu.Lock()
			why := p.fatal
			m.mu.Unlock()
			if why == "" {
				why = "exited during start-up"
			}
			return fmt.Errorf("worker %d: %s", p.slot.idx, why)
		case <-deadline:
			return fmt.Errorf("worker %d: not serving after %s", p.slot.idx, startTimeout)
		}
	}
	return nil
}

// stopWorkers tells every worker to close its clients and exit, and kills
// those that have not after stopTimeout.
func (m *Manager) stopWorkers() {
	m.mu.Lock()
	m.stopping = true
	procs := m.allProcs()
	for _, p := range procs {
		p.state = stateStopping
		m.tell(p, stopFrame)
	}
	m.mu.Unlock()
	deadline := time.After(stopTimeout)
	for _, p := range procs {
		select {
		case <-p.exited:
		case <-deadline:
			m.log.Warn("worker did not stop; killing it", "slot", p.slot.idx, "pid", p.pid)
			p.cmd.Process.Kill()
			<-p.exited
		}
	}
}
