// Package test holds the integration tests: they start the real manager and
// workers on loopback and talk to them over raw sockets and the CLI.
package test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/megacomet/megacomet/internal/testutil"
	"github.com/megacomet/megacomet/manager"
)

// hold opens a connection and sends a GET that the server holds open.
func hold(t *testing.T, addr, id string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := fmt.Fprintf(c, "GET /sse/%s HTTP/1.1\r\nHost: x\r\n\r\n", id); err != nil {
		t.Fatal(err)
	}
	return c
}

// countClosed waits d and returns how many of conns the server closed.
func countClosed(conns []net.Conn, d time.Duration) int {
	results := make(chan bool, len(conns))
	for _, c := range conns {
		go func() { results <- closedByPeer(c, d) }()
	}
	n := 0
	for range conns {
		if <-results {
			n++
		}
	}
	return n
}

// closedByPeer reports whether the server closed c, waiting at most d.
func closedByPeer(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 4096)
	for {
		_, err := c.Read(buf)
		if err == nil {
			continue // whatever the server streams, it is still open
		}
		var ne net.Error
		return !(errors.As(err, &ne) && ne.Timeout())
	}
}

// statsCLI runs `megacomet stats -json` and decodes its output.
func statsCLI(t *testing.T, s *testutil.Server) manager.Stats {
	t.Helper()
	out, err := exec.Command(s.Bin, "stats", "-json", "-socket", s.Socket).Output()
	if err != nil {
		t.Fatalf("megacomet stats -json: %v", err)
	}
	var st manager.Stats
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("stats JSON: %v\n%s", err, out)
	}
	return st
}

func TestProcessModelSurvivesWorkerKill(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 3"})

	const n = 90
	conns := make([]net.Conn, n)
	for i := range conns {
		conns[i] = hold(t, s.Listen, fmt.Sprintf("c%d", i))
	}
	var before manager.Stats
	testutil.CheckFor(t, 5*time.Second, func() error {
		before = statsCLI(t, s)
		if before.Connections != n {
			return fmt.Errorf("stats show %d connections, want %d", before.Connections, n)
		}
		return nil
	})
	if len(before.Workers) != 3 {
		t.Fatalf("%d workers in stats, want 3", len(before.Workers))
	}
	// The kernel spreads connections over the SO_REUSEPORT group; pick a
	// worker that holds some, so killing it is visible to clients.
	victim := -1
	for i, w := range before.Workers {
		if w.PID == 0 || w.RSSBytes == 0 && w.State != "ready" {
			t.Fatalf("worker %d not reported: %+v", i, w)
		}
		if w.Connections > 0 && (victim < 0 || w.Connections > before.Workers[victim].Connections) {
			victim = i
		}
	}
	if victim < 0 {
		t.Fatal("no worker holds a connection")
	}
	old := before.Workers[victim]
	killedAt := time.Now()
	if err := syscall.Kill(old.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}

	var after manager.Stats
	testutil.CheckFor(t, 2*time.Second, func() error {
		after = statsCLI(t, s)
		w := after.Workers[victim]
		if w.PID == old.PID || w.PID == 0 || w.State != "ready" {
			return fmt.Errorf("slot %d: pid %d state %s (old pid %d)", victim, w.PID, w.State, old.PID)
		}
		return nil
	})
	t.Logf("slot %d: pid %d replaced by %d in %s", victim, old.PID, after.Workers[victim].PID, time.Since(killedAt).Round(time.Millisecond))
	if after.Workers[victim].Restarts != 1 {
		t.Errorf("restarts = %d, want 1", after.Workers[victim].Restarts)
	}

	// Exactly the victim's connections were closed; the others are open.
	if closed := countClosed(conns, 200*time.Millisecond); closed != int(old.Connections) {
		t.Errorf("%d connections closed, want the %d the killed worker held", closed, old.Connections)
	}
	for i, w := range after.Workers {
		if i == victim {
			continue
		}
		if w.PID != before.Workers[i].PID || w.Connections != before.Workers[i].Connections {
			t.Errorf("worker %d changed: before pid %d conns %d, after pid %d conns %d",
				i, before.Workers[i].PID, before.Workers[i].Connections, w.PID, w.Connections)
		}
	}
	// The replacement serves.
	if got := ping(t, s.Listen); got != "pong" {
		t.Errorf("ping after restart = %q", got)
	}
}

func ping(t *testing.T, addr string) string {
	t.Helper()
	_, body := rawRequest(t, addr, "GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	return body
}

func TestWorkersArePinned(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 3"})
	cpus := usableCPUList(t)
	for _, w := range s.MustStats().Workers {
		want := cpus[w.Slot%len(cpus)]
		if w.CPU != want {
			t.Errorf("slot %d reports cpu %d, want %d", w.Slot, w.CPU, want)
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", w.PID))
		if err != nil {
			t.Fatal(err)
		}
		allowed := fieldOf(string(b), "Cpus_allowed_list:")
		if allowed != fmt.Sprint(want) {
			t.Errorf("slot %d (pid %d): Cpus_allowed_list %q, want %d", w.Slot, w.PID, allowed, want)
		}
		// every thread, not just the main one
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", w.PID))
		for _, task := range tasks {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", w.PID, task.Name()))
			if a := fieldOf(string(b), "Cpus_allowed_list:"); a != "" && a != fmt.Sprint(want) {
				t.Errorf("slot %d thread %s: Cpus_allowed_list %q", w.Slot, task.Name(), a)
			}
		}
	}
}

func usableCPUList(t *testing.T) []int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	var cpus []int
	for _, part := range strings.Split(fieldOf(string(b), "Cpus_allowed_list:"), ",") {
		var lo, hi int
		if n, _ := fmt.Sscanf(part, "%d-%d", &lo, &hi); n == 2 {
			for c := lo; c <= hi; c++ {
				cpus = append(cpus, c)
			}
		} else if n == 1 {
			cpus = append(cpus, lo)
		}
	}
	return cpus
}

func fieldOf(status, key string) string {
	sc := bufio.NewScanner(strings.NewReader(status))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), key); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func TestFullWorkerRefusesCleanly(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 1\nmax_conns = 5"})
	for i := 0; i < 5; i++ {
		hold(t, s.Listen, fmt.Sprintf("f%d", i))
	}
	testutil.CheckFor(t, 5*time.Second, func() error {
		if st := s.MustStats(); st.Connections != 5 {
			return fmt.Errorf("%d connections", st.Connections)
		}
		return nil
	})
	for i := 0; i < 3; i++ {
		c := hold(t, s.Listen, "over")
		if !closedByPeer(c, 5*time.Second) {
			t.Fatalf("connection %d over max_conns was not closed", i)
		}
	}
	testutil.CheckFor(t, 5*time.Second, func() error {
		st := s.MustStats()
		if st.Refused != 3 || st.Workers[0].Refused != 3 || st.Connections != 5 {
			return fmt.Errorf("refused %d (worker %d), connections %d; want 3 refused, 5 open", st.Refused, st.Workers[0].Refused, st.Connections)
		}
		if st.Workers[0].Restarts != 0 {
			return fmt.Errorf("worker restarted")
		}
		return nil
	})
}

func TestWorkersExitWhenManagerDies(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 2"})
	c := hold(t, s.Listen, "orphan")
	st := s.MustStats()
	s.Cmd.Process.Kill()
	<-s.Exited()
	// Clients are handed over within server.drain (2s in tests), then the
	// workers exit: none is left behind.
	testutil.CheckFor(t, 10*time.Second, func() error {
		for _, w := range st.Workers {
			if testutil.PIDAlive(w.PID) {
				return fmt.Errorf("worker %d (pid %d) still running", w.Slot, w.PID)
			}
		}
		return nil
	})
	if !closedByPeer(c, time.Second) {
		t.Error("client connection still open after its worker exited")
	}
}

func TestGracefulStop(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 2"})
	hold(t, s.Listen, "x")
	st := s.MustStats()
	if b, err := os.ReadFile(s.PidFile); err != nil || strings.TrimSpace(string(b)) != fmt.Sprint(s.Cmd.Process.Pid) {
		t.Errorf("pid file = %q, %v; want %d", b, err, s.Cmd.Process.Pid)
	}
	s.Signal(syscall.SIGTERM)
	select {
	case <-s.Exited():
	case <-time.After(15 * time.Second):
		t.Fatal("manager did not stop")
	}
	if code := s.Cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit code %d", code)
	}
	for _, w := range st.Workers {
		if testutil.PIDAlive(w.PID) {
			t.Errorf("worker %d still running", w.PID)
		}
	}
	for _, f := range []string{s.Socket, s.PidFile} {
		if _, err := os.Stat(f); err == nil {
			t.Errorf("%s left behind", f)
		}
	}
}

// runBin runs megacomet with args and returns its exit code and stderr.
func runBin(t *testing.T, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(testutil.Binary(t, "megacomet"), args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("megacomet %v did not exit; stderr:\n%s", args, stderr.String())
	}
	return cmd.ProcessState.ExitCode(), stderr.String()
}

func TestBadInputExitsWithOneLine(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	notDir := filepath.Join(t.TempDir(), "file")
	os.WriteFile(notDir, nil, 0o644)

	cases := []struct {
		name, toml string
		want       []string // each must be in the single line
	}{
		{"wrong type", "[server]\nworkers = \"four\"\n", []string{"server.workers", "line 2"}},
		{"unknown key", "[server]\nlisten = \"127.0.0.1:0\"\nwrokers = 2\n", []string{"unknown key server.wrokers"}},
		{"unknown table", "[severs]\nworkers = 2\n", []string{"unknown key severs"}},
		{"bad duration", "[comet]\nheartbeat = \"15\"\n", []string{"comet.heartbeat"}},
		{"bad value", "[server]\nworkers = -1\n", []string{"server.workers", "-1"}},
		{"token required", "[api]\nlisten = \"0.0.0.0:9000\"\n", []string{"api.token"}},
		{"syntax", "[server\n", []string{"line"}},
		{"listen in use", fmt.Sprintf("[server]\nlisten = %q\n[api]\nlisten = \"127.0.0.1:0\"\n[manager]\nsocket = \"%s/s.sock\"\npid_file = \"%s/p.pid\"\n",
			busy.Addr().String(), shortDir(t), shortDir(t)), []string{"server.listen", busy.Addr().String(), "address already in use"}},
		{"api in use", fmt.Sprintf("[server]\nlisten = \"127.0.0.1:0\"\n[api]\nlisten = %q\n[manager]\nsocket = \"%s/s.sock\"\npid_file = \"%s/p.pid\"\n",
			busy.Addr().String(), shortDir(t), shortDir(t)), []string{"api.listen", "address already in use"}},
		{"socket not writable", fmt.Sprintf("[server]\nlisten = \"127.0.0.1:0\"\n[api]\nlisten = \"127.0.0.1:0\"\n[manager]\nsocket = \"%s/s.sock\"\npid_file = \"%s/p.pid\"\n",
			notDir, shortDir(t)), []string{"manager.socket", notDir, "not a directory"}},
		{"socket in /proc", fmt.Sprintf("[server]\nlisten = \"127.0.0.1:0\"\n[api]\nlisten = \"127.0.0.1:0\"\n[manager]\nsocket = \"/proc/megacomet.sock\"\npid_file = \"%s/p.pid\"\n",
			shortDir(t)), []string{"manager.socket", "/proc/megacomet.sock"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "bad.toml")
			os.WriteFile(path, []byte(tc.toml), 0o644)
			// -t checks config errors without starting; run checks the rest.
			for _, args := range [][]string{{"-t", "-config", path}, {"-config", path}} {
				code, stderr := runBin(t, args...)
				if args[0] == "-t" && code == 0 && !strings.Contains(tc.name, "use") && !strings.Contains(tc.name, "socket") {
					t.Errorf("-t accepted a bad config")
				}
				if args[0] == "-t" && code == 0 {
					continue // a runtime error: -t rightly passes it
				}
				if code != 1 {
					t.Errorf("%v: exit %d, want 1; stderr:\n%s", args, code, stderr)
				}
				lines := strings.Split(strings.TrimSpace(stderr), "\n")
				last := lines[len(lines)-1]
				if !strings.HasPrefix(last, "megacomet: ") {
					t.Errorf("%v: last stderr line %q is not the error", args, last)
				}
				for _, w := range tc.want {
					if !strings.Contains(last, w) {
						t.Errorf("%v: %q does not mention %q", args, last, w)
					}
				}
			}
		})
	}
}

func shortDir(t *testing.T) string { return testutil.ShortTempDir(t) }

func TestCheckConfigAcceptsShippedConfig(t *testing.T) {
	code, stderr := runBin(t, "-t", "-config", "../etc/megacomet.toml")
	if code != 0 {
		t.Fatalf("etc/megacomet.toml rejected: %s", stderr)
	}
}

func TestStatsWithoutManager(t *testing.T) {
	code, stderr := runBin(t, "stats", "-socket", filepath.Join(shortDir(t), "none.sock"))
	if code != 1 || !strings.Contains(stderr, "is the manager running?") {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
}

// A worker that sends nothing (its counts are due every second) for
// manager.worker_stall_timeout is killed as stuck and replaced, once,
// though what waits for it is small enough to sit in the socket's buffer;
// its client, reconnecting with its cursor, gets every message published
// while it was stuck, in order.
func TestStuckWorkerKilled(t *testing.T) {
	s := testutil.Start(t, map[string]string{
		"server":  "workers = 1",
		"manager": `worker_stall_timeout = "2s"`,
	})
	publish := func(i int) uint64 {
		status, resp, err := tryPost(s.API, fmt.Sprintf(`{"channel":"stall","data":"m%d"}`, i))
		if err != nil || status != 200 {
			t.Fatalf("publish %d: %d %s %v", i, status, resp, err)
		}
		var a struct{ ID uint64 }
		if err := json.Unmarshal([]byte(resp), &a); err != nil || a.ID == 0 {
			t.Fatalf("publish %d: %s", i, resp)
		}
		return a.ID
	}
	ids := sseIDs(t, s.Listen, "/sse/s1?channels=stall")
	s.WaitStats(t, 30*time.Second, func(st manager.Stats) error {
		if st.Connections != 1 {
			return fmt.Errorf("%d connections, want 1", st.Connections)
		}
		return nil
	})
	first := publish(0)
	select {
	case got := <-ids:
		if got != first {
			t.Fatalf("got message %d, want %d", got, first)
		}
	case <-time.After(time.Minute):
		t.Fatalf("message %d never came", first)
	}
	old := s.MustStats().Workers[0].PID
	if err := syscall.Kill(old, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(old, syscall.SIGCONT) })
	var want []uint64
	for i := 1; i <= 3; i++ {
		want = append(want, publish(i))
	}
	st := s.WaitStats(t, time.Minute, func(st manager.Stats) error {
		if w := st.Workers[0]; w.PID == old || w.State != "ready" {
			return fmt.Errorf("worker pid %d state %s: the stopped one (%d) is still there", w.PID, w.State, old)
		}
		return nil
	})
	if st.Manager.WorkersKilled != 1 || st.Workers[0].Restarts != 1 {
		t.Errorf("workers_killed %d, restarts %d, want 1 and 1", st.Manager.WorkersKilled, st.Workers[0].Restarts)
	}
	if !strings.Contains(s.Log.String(), "worker has sent nothing, not even its counts; killing it") {
		t.Error("no log line says why the worker was killed")
	}
	again := sseIDs(t, s.Listen, fmt.Sprintf("/sse/s1?channels=stall&since=%d", first))
	for _, w := range want {
		select {
		case got := <-again:
			if got != w {
				t.Fatalf("after the kill, got message %d, want %d (in order, once)", got, w)
			}
		case <-time.After(time.Minute):
			t.Fatalf("message %d never came after the kill", w)
		}
	}
}
