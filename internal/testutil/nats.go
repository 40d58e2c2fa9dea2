package testutil

import (
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// NATS is a Debian nats-server with JetStream, on loopback, with its store
// in the test's temp dir. Stop and Start again keep its port and store, as
// a restarted server would.
type NATS struct {
	t     testing.TB
	Name  string
	Port  int
	URL   string
	Dir   string
	Log   *SyncBuffer
	args  []string
	cmd   *exec.Cmd
	alive chan struct{} // closed when the process exits
}

// NATSBin is nats-server's path, or a fatal error that says how to get it.
func NATSBin(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		t.Fatal("nats-server is not installed: `make deps` installs Debian's")
	}
	return bin
}

// FreePort is a loopback TCP port nobody listened on a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// StartNATS starts one JetStream server.
func StartNATS(t testing.TB) *NATS {
	t.Helper()
	return startNATS(t, "n0", FreePort(t), nil)
}

// StartNATSCluster starts a JetStream cluster of n servers, routed to each
// other; it returns once the cluster has a meta leader.
func StartNATSCluster(t testing.TB, n int) []*NATS {
	t.Helper()
	ports, routes := make([]int, n), make([]int, n)
	var urls []string
	for i := range n {
		ports[i], routes[i] = FreePort(t), FreePort(t)
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", routes[i]))
	}
	var out []*NATS
	for i := range n {
		out = append(out, startNATS(t, fmt.Sprintf("n%d", i), ports[i], []string{
			"--cluster_name", "mc", "--cluster", urls[i], "--routes", strings.Join(urls, ","),
		}))
	}
	for _, s := range out {
		s.waitLog(t, "JetStream cluster new metadata leader", "JetStream cluster new meta leader", "Self is new JetStream cluster metadata leader")
	}
	return out
}

// URLs joins the servers' client URLs, as cluster.nats takes them.
func URLs(ss []*NATS) string {
	var u []string
	for _, s := range ss {
		u = append(u, s.URL)
	}
	return strings.Join(u, ",")
}

func startNATS(t testing.TB, name string, port int, extra []string) *NATS {
	t.Helper()
	dir := t.TempDir()
	s := &NATS{t: t, Name: name, Port: port, URL: "nats://127.0.0.1:" + strconv.Itoa(port), Dir: dir, Log: &SyncBuffer{},
		args: append([]string{"-js", "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-n", name, "-sd", filepath.Join(dir, "js")}, extra...)}
	s.Start()
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("nats-server %s log:\n%s", s.Name, s.Log.String())
		}
	})
	return s
}

// Start (re)starts the server and waits until it takes clients.
func (s *NATS) Start() {
	s.t.Helper()
	s.cmd = exec.Command(NATSBin(s.t), s.args...)
	s.cmd.Stdout, s.cmd.Stderr = s.Log, s.Log
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	alive := make(chan struct{})
	s.alive = alive
	go func(c *exec.Cmd) { c.Wait(); close(alive) }(s.cmd)
	CheckFor(s.t, 30*time.Second, func() error {
		select {
		case <-alive:
			return fmt.Errorf("nats-server %s exited: %s", s.Name, s.Log.String())
		default:
		}
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(s.Port), time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
}

// Stop stops the server (SIGTERM, then SIGKILL after 10 s).
func (s *NATS) Stop() { s.stop(syscall.SIGTERM) }

// Kill kills the server at once, as a crash would.
func (s *NATS) Kill() { s.stop(syscall.SIGKILL) }

func (s *NATS) stop(sig syscall.Signal) {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(sig)
	select {
	case <-s.alive:
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		<-s.alive
	}
	s.cmd = nil
}

// waitLog waits until the server's log has one of lines.
func (s *NATS) waitLog(t testing.TB, lines ...string) {
	t.Helper()
	CheckFor(t, 30*time.Second, func() error {
		l := s.Log.String()
		for _, line := range lines {
			if strings.Contains(l, line) {
				return nil
			}
		}
		return fmt.Errorf("nats-server %s: no JetStream meta leader yet", s.Name)
	})
}
