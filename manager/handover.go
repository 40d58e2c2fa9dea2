package manager

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/megacomet/megacomet/config"
	"github.com/megacomet/megacomet/ipc"
	"golang.org/x/sys/unix"
)

// Zero-downtime reload (SIGHUP), the manager's side. tableflip re-executes
// the binary now on disk with the same arguments, passing the listeners
// (API, stats socket), the client-port reservation and a handover socket.
//
//	old manager                         new manager
//	config re-read and checked
//	Upgrade() ───────────────────────►  starts its workers (they join the
//	                                    port's SO_REUSEPORT group), Ready()
//	stops its API and stats socket;
//	stops reading its workers at a
//	frame boundary, flushes what it
//	queued for them
//	handover: every worker's IPC     ─►  adopts them: routes to them, tells
//	socket (SCM_RIGHTS), the bytes       them to drain (stop accepting, hand
//	read but not parsed, who holds       clients over spread over
//	which ids and channels, the id       server.drain); restores the id
//	sequence and the history             sequence and history; only then
//	exits                                serves the API and answers replays
//
// Clients keep their connections until their worker hands them over, and
// come back to a new worker with their cursor; publishes wait in the API
// listener's backlog for the few milliseconds nobody accepts.

// generationEnv tells the new manager its generation.
const generationEnv = "MEGACOMET_GENERATION"

// handoverTimeout bounds how long a new manager waits for its
// predecessor's state before serving without it.
const handoverTimeout = 30 * time.Second

// reloads performs the reloads SIGHUP asks for, one at a time; a SIGHUP
// during a reload is queued (and several collapse into one).
func (m *Manager) reloads(cfgPath string, req <-chan struct{}) {
	for range req {
		if err := m.reload(cfgPath); err != nil {
			m.log.Error("reload failed; still serving", "err", err)
			continue
		}
		return // the new manager runs; Run sees upg.Exit()
	}
}

func (m *Manager) reload(cfgPath string) error {
	if _, err := config.Load(cfgPath); err != nil {
		return err
	}
	// A manager that is itself fresh from an upgrade must wait for its
	// predecessor to exit before it can upgrade.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := m.upg.WaitForParent(ctx); err != nil {
		return fmt.Errorf("previous manager still running: %w", err)
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	theirs := os.NewFile(uintptr(fds[1]), "handover")
	mine := os.NewFile(uintptr(fds[0]), "handover")
	err = m.upg.Fds.AddFile(handoverName, theirs)
	theirs.Close()
	if err != nil {
		mine.Close()
		return err
	}
	os.Setenv(generationEnv, strconv.FormatUint(m.gen+1, 10))
	m.log.Info("reloading: starting the new manager", "binary", os.Args[0], "new_generation", m.gen+1)
	// Before Upgrade: tableflip closes Exit() as soon as the new manager
	// is ready, possibly before Upgrade returns here.
	m.mu.Lock()
	m.handover = mine
	m.mu.Unlock()
	if err := m.upg.Upgrade(); err != nil {
		m.mu.Lock()
		m.handover = nil
		m.mu.Unlock()
		mine.Close()
		return err
	}
	return nil
}

const handoverName = "handover"

// workerState describes one worker handed to the next manager; its IPC
// socket travels alongside, in the same order.
type workerState struct {
	Slot     int         `json:"slot"`
	CPU      int         `json:"cpu"`
	PID      int         `json:"pid"`
	Gen      uint64      `json:"gen"`
	Restarts int         `json:"restarts"`
	MaxConns uint64      `json:"max_conns"`
	Leftover []byte      `json:"leftover,omitempty"`
	IDs      []hashCount `json:"ids,omitempty"`
	Channels []hashCount `json:"channels,omitempty"`
}

type handoverState struct {
	Hub     hubState      `json:"hub"`
	Workers []workerState `json:"workers"`
	// IPC is the workers' ipc.Version; 0 (absent) is version 1, which
	// did not write it.
	IPC int `json:"ipc,omitempty"`
}

// handoverIPCEnv makes a manager claim another IPC version when it hands
// its workers over: the test of a reload across versions.
const handoverIPCEnv = "MEGACOMET_TEST_HANDOVER_IPC"

func handoverIPC() int {
	if v, err := strconv.Atoi(os.Getenv(handoverIPCEnv)); err == nil {
		return v
	}
	return ipc.Version
}

// handOver gives every worker and the hub's state to the new manager.
// The API and stats socket are already closed, so nothing changes meanwhile.
func (m *Manager) handOver(sock *os.File) error {
	defer sock.Close()
	m.mu.Lock()
	m.handedOver = true
	procs := m.allProcs()
	m.mu.Unlock()

	// Stop reading at a frame boundary and flush what is queued, so the
	// new manager continues both byte streams exactly where we stop.
	for _, p := range procs {
		p.handing.Store(true)
		p.conn.SetReadDeadline(time.Now())
		p.out.Close()
	}
	var live []*proc
	for _, p := range procs {
		<-p.readDone
		select {
		case <-p.outDone:
			if p.foreign {
				// Already draining. Our exit closes its IPC: it finishes
				// the drain and exits without a manager.
				continue
			}
			live = append(live, p)
		case <-time.After(5 * time.Second):
			m.log.Error("worker does not read its IPC; not handing it over", "slot", p.slot.idx, "pid", p.pid)
			p.kill()
		}
	}
	links := make([]linkID, len(live))
	for i, p := range live {
		links[i] = p.link
	}
	hs, names := m.hub.snapshot(links)
	if m.events != nil && hs.Events != nil {
		hs.Events.Sender, hs.Events.On = m.events.Stop(), true // what it had not delivered, the next one sends
	}
	st := handoverState{Hub: hs, IPC: handoverIPC()}
	fds := make([]int, 0, len(live))
	m.mu.Lock()
	for _, p := range live {
		n := names[p.link]
		st.Workers = append(st.Workers, workerState{
			Slot: p.slot.idx, CPU: p.slot.cpu, PID: p.pid, Gen: p.gen, Restarts: p.slot.restarts,
			MaxConns: p.hello.MaxConns, Leftover: p.leftover, IDs: n[0], Channels: n[1],
		})
		fds = append(fds, connFD(p.conn))
	}
	m.mu.Unlock()

	uc, err := net.FileConn(sock)
	if err != nil {
		return err
	}
	defer uc.Close()
	c := uc.(*net.UnixConn)
	c.SetDeadline(time.Now().Add(handoverTimeout))
	if err := sendFDs(c, fds); err != nil {
		return fmt.Errorf("hand over worker sockets: %w", err)
	}
	b, err := json.Marshal(&st)
	if err != nil {
		return err
	}
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(b)))
	if _, err := c.Write(append(n[:], b...)); err != nil {
		return fmt.Errorf("hand over state: %w", err)
	}
	m.log.Info("handed over", "workers", len(live), "messages", len(hs.Messages), "last_id", hs.LastID)
	return nil
}

// connFD is the descriptor of an IPC connection (valid while it is open).
func connFD(c net.Conn) int {
	fd := -1
	if sc, ok := c.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			rc.Control(func(f uintptr) { fd = int(f) })
		}
	}
	return fd
}

// fdsPerMsg stays under the kernel's SCM_MAX_FD (253).
const fdsPerMsg = 200

// sendFDs sends descriptors in chunks: each a 4-byte count (high bit set
// when more chunks follow) carrying the descriptors as SCM_RIGHTS.
func sendFDs(c *net.UnixConn, fds []int) error {
	for {
		chunk := fds[:min(len(fds), fdsPerMsg)]
		fds = fds[len(chunk):]
		head := uint32(len(chunk))
		if len(fds) > 0 {
			head |= 1 << 31
		}
		var b [4]byte
		binary.LittleEndian.PutUint32(b[:], head)
		var oob []byte
		if len(chunk) > 0 {
			oob = unix.UnixRights(chunk...)
		}
		if _, _, err := c.WriteMsgUnix(b[:], oob, nil); err != nil {
			return err
		}
		if len(fds) == 0 {
			return nil
		}
	}
}

func recvFDs(c *net.UnixConn) ([]int, error) {
	var fds []int
	for {
		var b [4]byte
		oob := make([]byte, unix.CmsgSpace(fdsPerMsg*4))
		n, oobn, _, _, err := c.ReadMsgUnix(b[:], oob)
		if err != nil {
			return fds, err
		}
		if n != 4 {
			return fds, errors.New("short descriptor header")
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return fds, err
		}
		for _, msg := range msgs {
			got, err := unix.ParseUnixRights(&msg)
			if err != nil {
				return fds, err
			}
			fds = append(fds, got...)
		}
		head := binary.LittleEndian.Uint32(b[:])
		if head&(1<<31) == 0 {
			return fds, nil
		}
	}
}

// receiveHandover reads the predecessor's state and adopts its workers.
func (m *Manager) receiveHandover(f *os.File) error {
	defer f.Close()
	uc, err := net.FileConn(f)
	if err != nil {
		return err
	}
	defer uc.Close()
	c := uc.(*net.UnixConn)
	c.SetDeadline(time.Now().Add(handoverTimeout))
	fds, err := recvFDs(c)
	if err != nil {
		closeAll(fds)
		return fmt.Errorf("receive worker sockets: %w", err)
	}
	var n [8]byte
	if _, err := io.ReadFull(c, n[:]); err != nil {
		closeAll(fds)
		return fmt.Errorf("receive state: %w", err)
	}
	b := make([]byte, binary.LittleEndian.Uint64(n[:]))
	if _, err := io.ReadFull(c, b); err != nil {
		closeAll(fds)
		return fmt.Errorf("receive state: %w", err)
	}
	var st handoverState
	if err := json.Unmarshal(b, &st); err != nil || len(st.Workers) != len(fds) {
		closeAll(fds)
		return fmt.Errorf("bad state from the previous manager (%d workers, %d sockets): %v", len(st.Workers), len(fds), err)
	}
	m.hub.restore(&st.Hub)
	version := st.IPC
	if version == 0 {
		version = 1
	}
	foreign := version != ipc.Version
	if foreign && len(st.Workers) > 0 {
		m.log.Warn("the previous workers speak another IPC version: draining them without routing to them; their clients come back here with their cursors",
			"their_version", version, "ours", ipc.Version, "workers", len(st.Workers))
	}
	drain := ipc.AppendUvarint(nil, uint64(m.opts.Server.Drain.D()/time.Millisecond))
	adopted := make(map[int]linkID, len(st.Workers))
	for i, ws := range st.Workers {
		p, err := m.adopt(ws, fds[i], foreign)
		if err != nil {
			m.log.Error("cannot adopt worker", "slot", ws.Slot, "pid", ws.PID, "err", err)
			continue
		}
		if !foreign {
			adopted[i] = p.link
		}
		m.tell(p, func(dst []byte) []byte { return ipc.AppendFrame(dst, ipc.TypeDrain, drain) })
	}
	m.mu.Lock()
	var ours []*proc
	for _, s := range m.slots {
		if s.proc != nil && s.proc.state != stateExited {
			ours = append(ours, s.proc)
		}
	}
	m.mu.Unlock()
	for _, p := range ours {
		m.tellState(p) // they started before the bans and revocations came
	}
	if st.Hub.Events != nil {
		m.hub.restoreEvents(st.Hub.Events, adopted)
		if m.events != nil && st.Hub.Events.On {
			m.events.Restore(st.Hub.Events.Sender)
			m.eventsRestored = true
		}
	}
	m.log.Info("took over", "workers", len(st.Workers), "messages", len(st.Hub.Messages), "last_id", st.Hub.LastID)
	return nil
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// adopt takes over a predecessor's worker: it routes to it until the
// worker has drained and exits. A foreign worker (another IPC version) is
// only told to drain: nothing is routed to it and what it sends is
// discarded, its frames being of a format this build may not know.
func (m *Manager) adopt(ws workerState, fd int, foreign bool) (*proc, error) {
	f := os.NewFile(uintptr(fd), "ipc")
	conn, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	p := newProc(&slot{idx: ws.Slot, cpu: ws.CPU, restarts: ws.Restarts}, ws.PID, ws.Gen, conn)
	p.state = stateDraining
	p.hello = ipc.Hello{PID: uint64(ws.PID), Slot: uint64(ws.Slot), Generation: ws.Gen, MaxConns: ws.MaxConns}
	close(p.readyc)
	p.foreign = foreign
	m.mu.Lock()
	m.retiring = append(m.retiring, p)
	m.mu.Unlock()
	if foreign {
		runLink(p, func() { io.Copy(io.Discard, p.conn) })
		go m.watchAdopted(p)
		return p, nil
	}
	// Presence frames wait for the hub to be primed, so the routing
	// table can be filled after the reader starts.
	m.startLink(p, ws.Leftover)
	m.hub.setPresence(p.link, ws.IDs, ws.Channels)
	go m.watchAdopted(p)
	return p, nil
}
