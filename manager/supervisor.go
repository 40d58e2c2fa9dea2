package manager

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/megacomet/megacomet/ipc"
	"github.com/shirou/gopsutil/v3/process"
	"golang.org/x/sys/unix"
)

// Restart budget: a slot restarts at once up to crashBudget times within
// crashWindow; past that each restart waits twice as long as the last, up
// to maxRestartDelay, so a worker that crashes on start does not spin.
const (
	crashBudget     = 5
	crashWindow     = time.Minute
	maxRestartDelay = 30 * time.Second
	startTimeout    = 10 * time.Second
	stopTimeout     = 10 * time.Second
	// ipcOutboxLimit: a worker with this much unread IPC is killed (and
	// restarted): the manager holds no more for it. Long before that, past
	// ipcHighWater, the API answers publishes 503 until the worker catches
	// up, and past joinBacklog (hub.go) joins wait, so what fills an outbox
	// is bounded well below the limit. A worker is killed otherwise only
	// when it is stuck: bytes wait for it and it has taken none for
	// manager.worker_stall_timeout. One that reads, however slowly, is
	// busy, not stuck.
	ipcOutboxLimit = 256 << 20
)

// ipcHighWater is 64 MiB; the test knob MEGACOMET_FAULT_IPC_HIGH_WATER
// (bytes, above joinBacklog) lowers it, for a test that must fill it on a
// race-built manager.
var ipcHighWater = func() int {
	if n, err := strconv.Atoi(os.Getenv("MEGACOMET_FAULT_IPC_HIGH_WATER")); err == nil && n > joinBacklog {
		return n
	}
	return 64 << 20
}()

// tableflipEnv is the variable tableflip uses to tell a process it is an
// upgrade child. Workers must not see it: they are never tableflip children.
const tableflipEnv = "TABLEFLIP_HAS_PARENT_7DIU3"

// slot is one worker position; its process is replaced when it dies.
// Guarded by Manager.mu.
type slot struct {
	idx      int
	cpu      int // -1 = not pinned
	proc     *proc
	restarts int
	crashes  []time.Time
}

type procState int

const (
	stateStarting procState = iota
	stateReady
	stateDraining
	stateStopping
	stateExited
)

func (s procState) String() string {
	return [...]string{"starting", "ready", "draining", "stopping", "exited"}[s]
}

// proc is one worker process: a child this manager started, or one it
// adopted from the manager it upgraded (cmd == nil; it drains and is never
// restarted). Fields after the first block are guarded by Manager.mu.
type proc struct {
	slot     *slot
	pid      int
	gen      uint64
	cmd      *exec.Cmd // nil for an adopted worker
	conn     net.Conn
	out      *ipc.Outbox
	link     linkID        // the hub's routing id, while it lives
	readyc   chan struct{} // closed on Hello
	exited   chan struct{} // closed once the process is gone
	readDone chan struct{} // closed when readLink returns
	outDone  chan struct{} // closed when the outbox writer returns
	handing  atomic.Bool   // reading stops at a frame boundary: hand-over
	killed   atomic.Bool   // the manager killed it (killWorker): once
	// readSince: when readLink began waiting for the worker's next bytes
	// (unix ns; 0 while it handles what came). A worker sends its counts
	// every second, so a long wait means its event loop is stuck.
	readSince atomic.Int64
	leftover  []byte // bytes read but not parsed when reading stopped
	foreign   bool   // adopted from a manager of another IPC version
	started   time.Time

	state  procState
	hello  ipc.Hello
	counts ipc.Counts
	fatal  string // the last Fatal frame
	ps     *process.Process
	rss    uint64
	pss    uint64
	cpuPct float64
	behind time.Time      // since when its outbox is past ipcHighWater (zero: not)
	idle   time.Time      // since when bytes wait for it and it has taken none (zero: not)
	taken  uint64         // its outbox's Written when last sampled
	pubs   chan clientPub // its clients' publishes, in order (clientpub.go)
}

func newProc(s *slot, pid int, gen uint64, conn net.Conn) *proc {
	p := &proc{
		slot: s, pid: pid, gen: gen, conn: conn,
		out:    ipc.NewOutbox(ipcOutboxLimit),
		readyc: make(chan struct{}), exited: make(chan struct{}),
		readDone: make(chan struct{}), outDone: make(chan struct{}),
		started: time.Now(), pubs: make(chan clientPub, clientPubQueue),
	}
	p.ps, _ = process.NewProcess(int32(pid))
	return p
}

// kill sends SIGKILL.
func (p *proc) kill() {
	if p.cmd != nil {
		p.cmd.Process.Kill()
		return
	}
	syscall.Kill(p.pid, syscall.SIGKILL)
}

// startLink starts routing to p and its IPC reader and writer.
func (m *Manager) startLink(p *proc, leftover []byte) {
	m.hub.addLink(p)
	runLink(p, func() { m.readLink(p, leftover) })
	go m.runClientPublishes(p)
}

// runLink starts p's outbox writer and its reader, read.
func runLink(p *proc, read func()) {
	go func() {
		p.out.Run(p.conn)
		close(p.outDone)
	}()
	go func() {
		read()
		close(p.readDone)
	}()
}

// spawn starts a worker for s. The caller holds m.mu.
func (m *Manager) spawn(s *slot) (*proc, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("start worker %d: socketpair: %w", s.idx, err)
	}
	mine := os.NewFile(uintptr(fds[0]), "ipc")
	theirs := os.NewFile(uintptr(fds[1]), "ipc-worker")
	defer theirs.Close()
	conn, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		return nil, fmt.Errorf("start worker %d: %w", s.idx, err)
	}
	// /proc/self/exe is this very binary even after a deploy replaced the
	// file, so a manager's workers always match it.
	cmd := exec.Command("/proc/self/exe", "worker")
	cmd.Args = []string{"megacomet", "worker", "-slot", strconv.Itoa(s.idx)}
	cmd.Env = workerEnv()
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{theirs} // fd 3 = ipc.WorkerFD
	// Own process group: a terminal's Ctrl-C reaches the manager only, and
	// the manager decides how workers wind down.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := startPinned(cmd, s.cpu); err != nil {
		conn.Close()
		return nil, fmt.Errorf("start worker %d: %w", s.idx, err)
	}
	p := newProc(s, cmd.Process.Pid, m.gen, conn)
	p.cmd = cmd
	opts := m.opts
	opts.API.Token = "" // a worker never uses it: it does not go where it is not needed
	cfg, _ := json.Marshal(ipc.WorkerConfig{Slot: s.idx, Generation: m.gen, CPU: s.cpu, Listen: m.listen, Options: opts,
		LastID: max(m.hub.last(), m.clusterLast()), IDClockUs: m.skew.Microseconds(), SeqIDs: m.cluster != nil,
		Bans: m.hub.bansInForce(), Revocations: m.hub.revocationsInForce()})
	p.out.Append(func(dst []byte) []byte { return ipc.AppendFrame(dst, ipc.TypeConfig, cfg) })
	s.proc = p
	m.startLink(p, nil)
	go m.reap(p)
	m.log.Debug("worker started", "slot", s.idx, "pid", p.pid, "cpu", s.cpu)
	return p, nil
}

func workerEnv() []string {
	env := os.Environ()
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, tableflipEnv+"=") && !strings.HasPrefix(kv, generationEnv+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// reap waits for a child worker to exit and restarts its slot unless the
// exit was asked for.
func (m *Manager) reap(p *proc) {
	err := p.cmd.Wait()
	if m.finish(p) {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	s := p.slot
	if m.stopping || m.handedOver || s.proc != p {
		return
	}
	var delay time.Duration
	s.crashes, delay = restartDelay(s.crashes, time.Now())
	attrs := []any{"slot", s.idx, "pid", p.pid, "status", exitStatus(err), "restart_in", delay}
	if p.fatal != "" {
		attrs = append(attrs, "error", p.fatal)
	}
	if delay > 0 {
		m.log.Error("worker crash loop: restart delayed", attrs...)
	} else {
		m.log.Warn("worker died: restarting", attrs...)
	}
	time.AfterFunc(delay, func() { m.restart(s, p) })
}

// watchAdopted treats an adopted worker as gone once its IPC socket
// closes: it is not our child, so it cannot be waited for.
func (m *Manager) watchAdopted(p *proc) {
	<-p.readDone
	if !m.finish(p) {
		m.log.Info("adopted worker exited", "slot", p.slot.idx, "pid", p.pid, "generation", p.gen)
	}
}

// finish records that p is gone. It reports whether p's exit was the
// expected end of a hand-over (then nothing else is to be done).
func (m *Manager) finish(p *proc) (handedOver bool) {
	if p.handing.Load() {
		return true // another manager owns it now
	}
	p.conn.Close()
	p.out.Close()
	m.hub.dropLink(p)
	m.mu.Lock()
	wanted := p.state == stateDraining || p.state == stateStopping || m.stopping
	p.state = stateExited
	close(p.exited)
	for i, r := range m.retiring {
		if r == p {
			m.retiring = append(m.retiring[:i], m.retiring[i+1:]...)
			break
		}
	}
	m.mu.Unlock()
	if wanted && p.cmd != nil {
		m.log.Debug("worker exited", "slot", p.slot.idx, "pid", p.pid)
	}
	return false
}

// restartDelay records a crash at now in the slot's recent crashes and
// returns them with how long to wait before the restart: nothing within the
// budget, then 1s, 2s, 4s ... up to maxRestartDelay.
func restartDelay(crashes []time.Time, now time.Time) ([]time.Time, time.Duration) {
	crashes = append(crashes, now)
	for len(crashes) > 0 && now.Sub(crashes[0]) > crashWindow {
		crashes = crashes[1:]
	}
	over := len(crashes) - crashBudget
	if over <= 0 {
		return crashes, 0
	}
	return crashes, min(maxRestartDelay, time.Second<<min(over-1, 10))
}

func (m *Manager) restart(s *slot, dead *proc) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopping || m.handedOver || s.proc != dead {
		return
	}
	if _, err := m.spawn(s); err != nil {
		m.log.Error("cannot restart worker", "slot", s.idx, "err", err)
		time.AfterFunc(time.Second, func() { m.restart(s, dead) })
		return
	}
	s.restarts++
}

func exitStatus(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return "killed by " + unix.SignalName(ws.Signal())
		}
		return "exit " + strconv.Itoa(ee.ExitCode())
	}
	if err != nil {
		return err.Error()
	}
	return "exit 0"
}

// readLink reads a worker's frames until its socket closes, or until a
// hand-over stops it at a frame boundary (p.leftover then holds what was
// read but not yet parsed, for the next manager).
func (m *Manager) readLink(p *proc, leftover []byte) {
	buf := append(make([]byte, 0, 64<<10), leftover...)
	for {
		for {
			t, payload, n, err := ipc.Parse(buf)
			if err == ipc.ErrNeedMore {
				break
			}
			if err != nil {
				m.log.Error("corrupt IPC from worker; killing it", "slot", p.slot.idx, "pid", p.pid, "err", err)
				p.kill()
				return
			}
			m.handleFrame(p, t, payload)
			buf = buf[:copy(buf, buf[n:])]
		}
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		p.readSince.Store(time.Now().UnixNano())
		n, err := p.conn.Read(buf[len(buf):cap(buf)])
		p.readSince.Store(0)
		buf = buf[:len(buf)+n]
		if err != nil {
			if p.handing.Load() {
				p.leftover = buf
			}
			return
		}
	}
}

func (m *Manager) handleFrame(p *proc, t ipc.Type, payload []byte) {
	switch t {
	case ipc.TypeHello:
		h, err := ipc.DecodeHello(payload)
		if err != nil {
			m.log.Error("bad hello from worker", "slot", p.slot.idx, "err", err)
			return
		}
		m.mu.Lock()
		first := p.hello.PID == 0
		p.hello = h
		if p.state == stateStarting {
			p.state = stateReady
		}
		m.mu.Unlock()
		if !first {
			return
		}
		close(p.readyc)
		m.log.Info("worker ready", "slot", p.slot.idx, "pid", p.pid, "cpu", p.slot.cpu, "max_conns", h.MaxConns)
	case ipc.TypeCounts:
		c, err := ipc.DecodeCounts(payload)
		if err != nil {
			return
		}
		m.mu.Lock()
		p.counts = c
		m.mu.Unlock()
	case ipc.TypeFatal:
		m.mu.Lock()
		p.fatal = string(payload)
		m.mu.Unlock()
	case ipc.TypePublish:
		m.takeClientPublish(p, payload)
	case ipc.TypePresence:
		<-m.hub.primed // replays need the history a hand-over brings
		if err := m.hub.presence(p, payload); err != nil {
			m.log.Error("bad presence frame from worker", "slot", p.slot.idx, "pid", p.pid, "err", err)
		}
	default:
		m.log.Warn("ignoring IPC frame from worker", "slot", p.slot.idx, "type", t.String())
	}
}

// tell queues a frame for a worker; one whose queue passes ipcOutboxLimit
// is killed and restarted rather than allowed to hold more memory here
// (its clients come back with their cursors).
func (m *Manager) tell(p *proc, fn func([]byte) []byte) {
	if err := p.out.Append(fn); errors.Is(err, ipc.ErrOutboxFull) {
		m.killWorker(p, "worker's IPC queue is full; killing it", "queued_mib", ipcOutboxLimit>>20)
	}
}

// killWorker kills p, once: it is logged and counted (workers_killed)
// once however many reasons come up before it is gone.
func (m *Manager) killWorker(p *proc, msg string, args ...any) {
	if !p.killed.CompareAndSwap(false, true) {
		return
	}
	m.log.Error(msg, append([]any{"slot", p.slot.idx, "pid", p.pid}, args...)...)
	m.workersKilled.Add(1)
	p.kill()
}

// behind returns a live worker whose outbox is past ipcHighWater, if one
// is, and how much it has queued: the API takes no more publishes then.
func (m *Manager) behind() (*proc, int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range m.allProcs() {
		if n := p.out.Len(); n > ipcHighWater {
			return p, n
		}
	}
	return nil, 0
}

// killStuck kills a worker that is stuck: for manager.worker_stall_timeout
// it has sent nothing (not even its counts, due every second) while the
// manager waited to read, or bytes have waited for it and it has taken
// none of them. It also notes when a worker falls behind (publishing waits
// for it then) and catches up. The sampler calls this every second.
func (m *Manager) killStuck(now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	stall := m.opts.Manager.WorkerStallTimeout.D()
	for _, p := range m.allProcs() {
		if since := p.readSince.Load(); since != 0 && p.state != stateStarting && !p.foreign && now.Sub(time.Unix(0, since)) >= stall {
			m.killWorker(p, "worker has sent nothing, not even its counts; killing it", "silent_s", int(now.Sub(time.Unix(0, since)).Seconds()))
			continue
		}
		n, taken := p.out.Len(), p.out.Written()
		switch {
		case n <= ipcHighWater && !p.behind.IsZero():
			p.behind = time.Time{}
			m.log.Info("worker caught up on its IPC", "slot", p.slot.idx, "pid", p.pid)
		case n > ipcHighWater && p.behind.IsZero():
			p.behind = now
			m.log.Warn("worker is behind on its IPC: publishes get 503 until it catches up", "slot", p.slot.idx, "pid", p.pid, "queued_mib", n>>20)
		}
		switch {
		case n == 0 || taken != p.taken:
			p.idle, p.taken = time.Time{}, taken // nothing waits, or it reads: busy at most
		case p.idle.IsZero():
			p.idle = now
		case now.Sub(p.idle) >= stall:
			m.killWorker(p, "worker has taken none of its IPC; killing it", "queued_mib", n>>20, "stuck_s", int(now.Sub(p.idle).Seconds()))
		}
	}
}
