package test

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/megacomet/megacomet/internal/testutil"
	"github.com/megacomet/megacomet/manager"
	"golang.org/x/sys/unix"
)

// rawSSE opens n SSE clients on raw sockets (no goroutine, no buffer each)
// and returns their descriptors; the caller closes them.
func rawSSE(t *testing.T, addr string, prefix string, n int) []int {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	var sa unix.SockaddrInet4
	copy(sa.Addr[:], net.ParseIP(host).To4())
	fmt.Sscan(port, &sa.Port)
	fds := make([]int, n)
	t.Cleanup(func() {
		for _, fd := range fds {
			if fd > 0 {
				unix.Close(fd)
			}
		}
	})
	const openers = 8 // connects in parallel: the worker accepts them as fast
	errs := make(chan error, openers)
	for g := range openers {
		go func() {
			sa := sa // Connect writes its raw form into it
			for i := g; i < n; i += openers {
				fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					errs <- fmt.Errorf("socket %d: %v", i, err)
					return
				}
				fds[i] = fd
				if err := unix.Connect(fd, &sa); err != nil {
					errs <- fmt.Errorf("connect %d: %v", i, err)
					return
				}
				req := fmt.Sprintf("GET /sse/%s%d HTTP/1.1\r\nHost: x\r\n\r\n", prefix, i)
				if _, err := unix.Write(fd, []byte(req)); err != nil {
					errs <- fmt.Errorf("request %d: %v", i, err)
					return
				}
				unix.SetNonblock(fd, true)
			}
			errs <- nil
		}()
	}
	for range openers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	return fds
}

// drain reads and discards whatever each socket holds.
func drain(fds []int) {
	buf := make([]byte, 64<<10)
	for _, fd := range fds {
		for {
			n, err := unix.Read(fd, buf)
			if n <= 0 || err != nil {
				break
			}
		}
	}
}

// withInput counts the sockets that hold unread bytes.
func withInput(fds []int) (n int) {
	for _, fd := range fds {
		if v, err := unix.IoctlGetInt(fd, unix.SIOCINQ); err == nil && v > 0 {
			n++
		}
	}
	return n
}

// answeredDuring starts a backlog of writes to every one of fds (start),
// waits for the first of them to arrive, then connects a new client and
// asks /ping: it returns how many of fds had their write when the answer
// came.
func answeredDuring(t *testing.T, s *testutil.Server, fds []int, start func()) int {
	t.Helper()
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ep)
	for _, fd := range fds {
		unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)})
	}
	start()
	events := make([]unix.EpollEvent, 1)
	for { // the backlog has begun: the first write is here
		m, err := unix.EpollWait(ep, events, 120_000)
		if err == unix.EINTR {
			continue
		}
		if err != nil || m == 0 {
			t.Fatalf("nothing arrived: %v", err)
		}
		break
	}
	ping, err := net.Dial("tcp", s.Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer ping.Close()
	fmt.Fprintf(ping, "GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
	ping.SetReadDeadline(time.Now().Add(2 * time.Minute))
	resp, err := http.ReadResponse(bufio.NewReader(ping), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("ping during the backlog: %v %v", resp, err)
	}
	return withInput(fds)
}

// The priority rule: a worker busy with the heartbeats of all its
// connections still answers a new connection before it has written them
// all. The worker is stopped for two heartbeat intervals, so that when it
// goes on every one of its 4,000 connections' heartbeats is due at once;
// as soon as the first of them arrives, a new client connects and asks
// /ping. Its answer must come while most of the heartbeats are still to be
// written - and then every heartbeat must still arrive: late, not dropped.
// The same holds for a broadcast to all of them.
func TestNewConnectionBeforeABacklog(t *testing.T) {
	if testing.Short() {
		t.Skip("4,000 connections")
	}
	// Ten times what a tick's timer budget writes here (~400 heartbeats in
	// 2 ms), so that the backlog spans many ticks; a slower machine writes
	// fewer a tick, and its backlog spans more.
	const n = 4000
	t.Run("heartbeats", func(t *testing.T) {
		s := testutil.Start(t, map[string]string{"server": "workers = 1", "comet": `heartbeat = "1s"`})
		fds := rawSSE(t, s.Listen, "hb", n)
		worker := waitHeld(t, s, n, 3*time.Minute).Workers[0].PID
		if err := syscall.Kill(worker, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		stopped := time.Now()
		t.Cleanup(func() { syscall.Kill(worker, syscall.SIGCONT) })
		drain(fds) // nothing more arrives while it is stopped
		for time.Since(stopped) < 2500*time.Millisecond {
			time.Sleep(100 * time.Millisecond) // the scenario: two intervals and more
		}
		drain(fds)
		if got := withInput(fds); got != 0 {
			t.Fatalf("%d sockets got bytes from a stopped worker", got)
		}
		sent := answeredDuring(t, s, fds, func() { syscall.Kill(worker, syscall.SIGCONT) })
		t.Logf("the new connection was answered when %d of %d due heartbeats had arrived", sent, n)
		if sent > n/2 {
			t.Errorf("the new connection was answered only after %d of the %d heartbeats due: heartbeats first", sent, n)
		}
		everyOneGets(t, fds)
		s.WaitStats(t, 30*time.Second, func(st manager.Stats) error {
			if w := st.Workers[0]; w.TicksOverBudget == 0 || w.Connections != n {
				return fmt.Errorf("ticks_over_budget %d, %d connections", w.TicksOverBudget, w.Connections)
			}
			return nil
		})
	})
	t.Run("broadcast", func(t *testing.T) {
		s := testutil.Start(t, map[string]string{"server": "workers = 1", "comet": `heartbeat = "1h"`})
		fds := rawSSE(t, s.Listen, "bc", n)
		waitHeld(t, s, n, 3*time.Minute)
		drain(fds) // the openings
		sent := answeredDuring(t, s, fds, func() { publish(t, s.API, `{"broadcast":true,"data":"to all"}`) })
		t.Logf("the new connection was answered when %d of %d had the broadcast", sent, n)
		if sent > n/2 {
			t.Errorf("the new connection was answered only after %d of the %d got the broadcast: the broadcast first", sent, n)
		}
		everyOneGets(t, fds)
		s.WaitStats(t, 30*time.Second, func(st manager.Stats) error {
			if w := st.Workers[0]; w.FanOutPauses == 0 {
				return fmt.Errorf("fan_out_pauses %d", w.FanOutPauses)
			}
			return nil
		})
	})
}

// everyOneGets waits until every socket has its write: late, not dropped.
func everyOneGets(t *testing.T, fds []int) {
	t.Helper()
	testutil.CheckFor(t, 2*time.Minute, func() error {
		if got := withInput(fds); got != len(fds) {
			time.Sleep(50 * time.Millisecond) // a scan is 4,000 syscalls: leave the worker the CPU
			return fmt.Errorf("%d of %d connections got it", got, len(fds))
		}
		return nil
	})
}
