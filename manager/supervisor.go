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
	"syscall"
	"time"

	"github.com/megacomet/megacomet/ipc"
	"github.com/megacomet/megacomet/worker"
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
	// ipcOutboxLimit: a worker with this much unread IPC is stuck.
	ipcOutboxLimit = 256 << 20
)

// tableflipEnv is the variable tableflip uses to tell a process it is an
// upgrade child. Workers must not see it: they are never tableflip children.
const tableflipEnv = "TABLEFLIP_HAS_PARENT_7DIU3"

// slot is one worker position; its process is replaced when it dies.
// Guarded by Manager.mu.
type slot struct {
	idx            int
	cpu            int // -1 = not pinned
	proc           *proc
	restarts       int
	crashes        []time.Time
	pendingRestart bool
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

// proc is one worker process. Fields after the first block are guarded by
// Manager.mu.
type proc struct {
	slot    *slot
	pid     int
	gen     uint64
	cmd     *exec.Cmd
	conn    net.Conn
	out     *ipc.Outbox
	link    linkID        // the hub's routing id, while it lives
	readyc  chan struct{} // closed on Hello
	exited  chan struct{} // closed when the process has been reaped
	started time.Time

	state  procState
	hello  ipc.Hello
	counts ipc.Counts
	fatal  string // the last Fatal frame
	ps     *process.Process
	rss    uint64
	pss    uint64
	cpuPct float64
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
	cmd.ExtraFiles = []*os.File{theirs} // fd 3 = worker.IPCFD
	// Own process group: a terminal's Ctrl-C reaches the manager only, and
	// the manager decides how workers wind down.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := startPinned(cmd, s.cpu); err != nil {
		conn.Close()
		return nil, fmt.Errorf("start worker %d: %w", s.idx, err)
	}
	p := &proc{
		slot: s, pid: cmd.Process.Pid, gen: m.gen, cmd: cmd, conn: conn,
		out:    ipc.NewOutbox(ipcOutboxLimit),
		readyc: make(chan struct{}), exited: make(chan struct{}),
		started: time.Now(),
	}
	p.ps, _ = process.NewProcess(int32(p.pid))
	cfg, _ := json.Marshal(worker.Config{Slot: s.idx, Generation: m.gen, CPU: s.cpu, Listen: m.listen, Options: m.opts})
	p.out.Append(func(dst []byte) []byte { return ipc.AppendFrame(dst, ipc.TypeConfig, cfg) })
	s.proc = p
	m.hub.addLink(p)
	go p.out.Run(conn)
	go m.readLink(p)
	go m.reap(p)
	m.log.Debug("worker started", "slot", s.idx, "pid", p.pid, "cpu", s.cpu)
	return p, nil
}

func workerEnv() []string {
	env := os.Environ()
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, tableflipEnv+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// reap waits for a worker to exit and restarts its slot unless the exit
// was asked for.
func (m *Manager) reap(p *proc) {
	err := p.cmd.Wait()
	p.conn.Close()
	p.out.Close()
	m.hub.dropLink(p)
	m.mu.Lock()
	defer m.mu.Unlock()
	wanted := p.state == stateDraining || p.state == stateStopping || m.stopping
	p.state = stateExited
	close(p.exited)
	s := p.slot
	if wanted || s.proc != p {
		m.log.Debug("worker exited", "slot", s.idx, "pid", p.pid, "status", exitStatus(err))
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
	s.pendingRestart = true
	time.AfterFunc(delay, func() { m.restart(s, p) })
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
	s.pendingRestart = false
	if m.stopping || s.proc != dead {
		return
	}
	if _, err := m.spawn(s); err != nil {
		m.log.Error("cannot restart worker", "slot", s.idx, "err", err)
		s.pendingRestart = true
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

// readLink reads a worker's frames until its socket closes.
func (m *Manager) readLink(p *proc) {
	buf := make([]byte, 0, 64<<10)
	for {
		for {
			t, payload, n, err := ipc.Parse(buf)
			if err == ipc.ErrNeedMore {
				break
			}
			if err != nil {
				m.log.Error("corrupt IPC from worker; killing it", "slot", p.slot.idx, "pid", p.pid, "err", err)
				p.cmd.Process.Kill()
				return
			}
			m.handleFrame(p, t, payload)
			buf = buf[:copy(buf, buf[n:])]
		}
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := p.conn.Read(buf[len(buf):cap(buf)])
		if err != nil {
			return
		}
		buf = buf[:len(buf)+n]
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
	case ipc.TypePresence:
		if err := m.hub.presence(p, payload); err != nil {
			m.log.Error("bad presence frame from worker", "slot", p.slot.idx, "pid", p.pid, "err", err)
		}
	default:
		m.log.Warn("ignoring IPC frame from worker", "slot", p.slot.idx, "type", t.String())
	}
}

// tell queues a frame for a worker; a worker that stopped reading is killed
// and restarted rather than allowed to hold unbounded memory here.
func (m *Manager) tell(p *proc, fn func([]byte) []byte) {
	if err := p.out.Append(fn); errors.Is(err, ipc.ErrOutboxFull) {
		m.log.Error("worker stopped reading IPC; killing it", "slot", p.slot.idx, "pid", p.pid)
		p.cmd.Process.Kill()
	}
}
