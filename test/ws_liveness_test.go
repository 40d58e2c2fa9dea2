package test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/megacomet/megacomet/internal/testutil"
	"github.com/megacomet/megacomet/manager"
)

// wsFleet is node/wsfleet.js: many npm ws clients that answer each ping
// after a delay.
type wsFleet struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	mu     sync.Mutex
	last   fleetReport
	closes []string // the server's closes, as wsfleet.js printed them
	stderr testutil.SyncBuffer
}

type fleetReport struct {
	Open, Closed, Pongs, Errors int64
}

func startFleet(t *testing.T, base string, n int, pongDelay time.Duration) *wsFleet {
	t.Helper()
	f := &wsFleet{cmd: nodeCommand(t, "wsfleet.js", base, fmt.Sprint(n), fmt.Sprint(pongDelay.Milliseconds()))}
	f.cmd.Stderr = &f.stderr
	f.stdin, _ = f.cmd.StdinPipe()
	stdout, _ := f.cmd.StdoutPipe()
	if err := f.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			var r fleetReport
			f.mu.Lock()
			switch {
			case strings.HasPrefix(line, `{"close"`), strings.HasPrefix(line, `{"error"`):
				f.closes = append(f.closes, line)
			case json.Unmarshal([]byte(line), &r) == nil:
				f.last = r
			}
			f.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		f.stdin.Close()
		exited := make(chan struct{})
		go func() { <-done; f.cmd.Wait(); close(exited) }()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			f.cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("wsfleet.js stderr:\n%s", f.stderr.String())
		}
	})
	return f
}

func (f *wsFleet) report() (fleetReport, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last, append([]string(nil), f.closes...)
}

// The fresh-machine issue's check: a worker that is itself behind does not
// blame its clients. 2,000 WebSocket clients of the npm ws package answer
// every ping half a second late, as on a slow network; the worker is
// stopped (SIGSTOP) for three heartbeat intervals and continued. Pongs that
// arrived meanwhile sit unread in its sockets, and the pings they answer
// look three intervals old by the wall clock: not one client may be closed.
// A client that really is silent is still closed, and counted.
func TestWSLivenessAcrossAStoppedWorker(t *testing.T) {
	if testing.Short() {
		t.Skip("2,000 connections")
	}
	const hb = 2 * time.Second
	const n = 2000
	s := testutil.Start(t, map[string]string{"server": "workers = 1", "comet": fmt.Sprintf("heartbeat = %q", hb)})
	fleet := startFleet(t, "ws://"+s.Listen+"/ws/f", n, hb/4)

	// A silent client: it reads (the kernel does), it never answers.
	silent, err := net.Dial("tcp", s.Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	fmt.Fprintf(silent, "GET /ws/silent HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	silentEnd := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, silent); silentEnd <- err }()

	testutil.CheckFor(t, 3*time.Minute, func() error {
		r, closes := fleet.report()
		if len(closes) > 0 {
			return fmt.Errorf("while connecting: %s", closes[0])
		}
		st, err := s.Stats()
		if err != nil {
			return err
		}
		if r.Open != n || st.IDs != n+1 {
			return fmt.Errorf("%d of %d clients open, the server holds %d ids", r.Open, n, st.IDs)
		}
		return nil
	})
	// Pings and late pongs are flowing: every client has answered one.
	r0, _ := fleet.report()
	testutil.CheckFor(t, 3*time.Minute, func() error {
		if r, _ := fleet.report(); r.Pongs < r0.Pongs+n {
			return fmt.Errorf("%d pongs since all were open, want %d", r.Pongs-r0.Pongs, n)
		}
		return nil
	})

	worker := s.MustStats().Workers[0]
	if err := syscall.Kill(worker.PID, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	time.Sleep(3 * hb) // the scenario: stopped for three intervals
	syscall.Kill(worker.PID, syscall.SIGCONT)
	t.Logf("worker %d stopped for %v", worker.PID, time.Since(stopped).Round(time.Millisecond))

	// Two more intervals of pings answered: a wrong judgment would have
	// closed clients by then.
	r1, _ := fleet.report()
	testutil.CheckFor(t, 3*time.Minute, func() error {
		if r, _ := fleet.report(); r.Pongs < r1.Pongs+2*n {
			return fmt.Errorf("%d pongs since the worker continued, want %d", r.Pongs-r1.Pongs, 2*n)
		}
		return nil
	})
	select {
	case <-silentEnd:
	case <-time.After(3 * time.Minute):
		t.Fatalf("the silent client was never closed")
	}
	s.WaitStats(t, 30*time.Second, func(st manager.Stats) error {
		if silentClosed := workerSum(st, func(w manager.WorkerStats) uint64 { return w.SilentClosed }); silentClosed != 1 {
			return fmt.Errorf("silent_closed %d, want 1 (the silent client)", silentClosed)
		}
		return nil
	})
	r, closes := fleet.report()
	if len(closes) > 0 || r.Closed != 0 {
		t.Errorf("the server closed %d answering clients after a stop of its own; first: %v", r.Closed, closes)
	}
	s.WaitStats(t, 30*time.Second, func(st manager.Stats) error { // the silent one's socket lingers a moment
		if st.IDs != n || st.Connections != n {
			return fmt.Errorf("the server holds %d ids on %d connections, want %d", st.IDs, st.Connections, n)
		}
		return nil
	})
}
