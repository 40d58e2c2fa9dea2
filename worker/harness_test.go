package worker

import (
	"encoding/json"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/megacomet/megacomet/config"
	"github.com/megacomet/megacomet/ipc"
)

// harness runs a real worker loop inside the test process. The test plays
// the manager on the other end of its IPC socketpair.
type harness struct {
	t      testing.TB
	w      *Worker
	mgr    net.Conn
	addr   string
	port   int
	done   chan error
	mu     sync.Mutex
	frames []frame      // frames the worker sent
	joins  atomic.Int64 // subscriptions answered
	// gapAt, when set, makes every replay announce a gap before it and
	// carry one message with that id (body "r"), as a manager does for a
	// join past comet.max_replay.
	gapAt atomic.Uint64
}

type frame struct {
	t ipc.Type
	p []byte
}

func startWorker(t testing.TB, mut func(*config.Options)) *harness {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	mf := os.NewFile(uintptr(fds[0]), "mgr")
	mgr, err := net.FileConn(mf)
	mf.Close()
	if err != nil {
		t.Fatal(err)
	}
	opts := config.Default()
	opts.Manager.LogLevel = "warn"
	if mut != nil {
		mut(&opts)
	}
	cfg, _ := json.Marshal(Config{Slot: 0, Generation: 1, CPU: -1, Listen: "127.0.0.1:0", Options: opts})
	if _, err := mgr.Write(ipc.AppendFrame(nil, ipc.TypeConfig, cfg)); err != nil {
		t.Fatal(err)
	}
	w, err := newWorker(fds[1])
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, w: w, mgr: mgr, done: make(chan error, 1)}
	go func() { h.done <- w.serve() }()
	go h.readFrames()
	hello := h.waitFrame(ipc.TypeHello)
	hl, err := ipc.DecodeHello(hello)
	if err != nil {
		t.Fatal(err)
	}
	h.addr = hl.Listen
	_, port, _ := net.SplitHostPort(h.addr)
	h.port, _ = strconv.Atoi(port)
	t.Cleanup(h.stop)
	return h
}

func (h *harness) readFrames() {
	buf := make([]byte, 0, 64<<10)
	for {
		for {
			t, p, n, err := ipc.Parse(buf)
			if err != nil {
				break
			}
			if t == ipc.TypePresence {
				h.answerJoins(p)
				buf = buf[:copy(buf, buf[n:])]
				continue
			}
			h.mu.Lock()
			h.frames = append(h.frames, frame{t, append([]byte(nil), p...)})
			h.mu.Unlock()
			buf = buf[:copy(buf, buf[n:])]
		}
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := h.mgr.Read(buf[len(buf):cap(buf)])
		if err != nil {
			return
		}
		buf = buf[:len(buf)+n]
	}
}

// answerJoins plays the manager's part of a subscription: an empty replay,
// after which the connection takes live messages.
func (h *harness) answerJoins(p []byte) {
	out, start := ipc.Begin(nil, ipc.TypeDeliver)
	n := 0
	pr := ipc.NewPresenceReader(p)
	for op := pr.Next(); op != 0; op = pr.Next() {
		if op == ipc.OpJoin {
			if g := h.gapAt.Load(); g != 0 {
				out = ipc.AppendReplayHead(out, pr.Join.Token, 0, g, 1)
				out = ipc.AppendBytes(ipc.AppendUvarint(out, g), []byte(`"r"`))
			} else {
				out = ipc.AppendReplayHead(out, pr.Join.Token, 0, 0, 0)
			}
			n++
		}
	}
	if n > 0 {
		h.mgr.Write(ipc.End(out, start))
	}
	h.joins.Add(int64(n))
}

// waitJoins waits until n subscriptions have been answered: messages sent
// after that reach them live.
func (h *harness) waitJoins(n int64) {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for h.joins.Load() < n {
		if time.Now().After(deadline) {
			h.t.Fatalf("%d of %d subscriptions seen", h.joins.Load(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// deliverTo sends one message to a client id.
func (h *harness) deliverTo(id string, msgID uint64, body []byte) {
	h.send(appendDeliver(nil, id, msgID, body))
}

func appendDeliver(dst []byte, id string, msgID uint64, body []byte) []byte {
	dst, start := ipc.Begin(dst, ipc.TypeDeliver)
	dst = ipc.AppendMsgHead(dst, msgID, ipc.KindIDs, "")
	dst = ipc.AppendString(ipc.AppendUvarint(dst, 1), id)
	return ipc.End(ipc.AppendBytes(dst, body), start)
}

// waitFrame returns the payload of the first frame of type t not yet taken.
func (h *harness) waitFrame(t ipc.Type) []byte {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		h.mu.Lock()
		for i, f := range h.frames {
			if f.t == t {
				h.frames = append(h.frames[:i], h.frames[i+1:]...)
				h.mu.Unlock()
				return f.p
			}
		}
		h.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
	h.t.Fatalf("no %v frame from the worker", t)
	return nil
}

// lastCounts waits for a Counts frame satisfying ok.
func (h *harness) countsWhere(ok func(ipc.Counts) bool) ipc.Counts {
	h.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var c ipc.Counts
	for time.Now().Before(deadline) {
		c, _ = ipc.DecodeCounts(h.waitFrame(ipc.TypeCounts))
		if ok(c) {
			return c
		}
	}
	h.t.Fatalf("counts never matched; last %+v", c)
	return c
}

func (h *harness) send(frame []byte) {
	if _, err := h.mgr.Write(frame); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) stop() {
	h.mgr.Write(ipc.AppendFrame(nil, ipc.TypeStop, nil))
	select {
	case err := <-h.done:
		if err != nil {
			h.t.Errorf("serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		h.t.Errorf("worker did not stop")
	}
	h.mgr.Close()
}

// rawConn is a client on raw syscalls, so it allocates nothing itself.
type rawConn struct {
	t   testing.TB
	fd  int
	buf []byte
}

func (h *harness) dialRaw() *rawConn {
	h.t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := syscall.Connect(fd, &syscall.SockaddrInet4{Port: h.port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		h.t.Fatal(err)
	}
	syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
	tv := syscall.Timeval{Sec: 5}
	syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
	c := &rawConn{t: h.t, fd: fd, buf: make([]byte, 64<<10)}
	h.t.Cleanup(func() { syscall.Close(fd) })
	return c
}

// readTimeout sets how long a read may wait (5 s by default).
func (c *rawConn) readTimeout(d time.Duration) {
	tv := syscall.NsecToTimeval(d.Nanoseconds())
	syscall.SetsockoptTimeval(c.fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
}

func (c *rawConn) write(b []byte) {
	for len(b) > 0 {
		n, err := syscall.Write(c.fd, b)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			c.t.Fatal(err)
		}
		b = b[n:]
	}
}

// readN reads exactly n bytes into the connection's buffer.
func (c *rawConn) readN(n int) []byte { return readFull(c.t, c.fd, c.buf[:n]) }

// readFull reads exactly len(buf) bytes from fd.
func readFull(t testing.TB, fd int, buf []byte) []byte {
	for got := 0; got < len(buf); {
		m, err := syscall.Read(fd, buf[got:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil || m == 0 {
			t.Fatalf("read after %d of %d bytes: %v", got, len(buf), err)
		}
		got += m
	}
	return buf
}

// readAll reads until the server closes.
func (c *rawConn) readAll() []byte {
	got := 0
	for {
		m, err := syscall.Read(c.fd, c.buf[got:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			c.t.Fatalf("read: %v", err)
		}
		if m == 0 {
			return c.buf[:got]
		}
		got += m
	}
}
