// Package testutil starts the real megacomet binaries for tests: it builds
// them once per test binary, runs a manager on loopback with port 0, and
// polls instead of sleeping.
package testutil

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/megacomet/megacomet/internal/check"
	"github.com/megacomet/megacomet/manager"
)

func init() {
	// Race-built binaries sleep 1 s at exit by default (atexit_sleep_ms),
	// which would make every CLI call in a polling loop take a second; a
	// race in a server process must fail the test, not scroll by.
	os.Setenv("GORACE", "halt_on_error=1 atexit_sleep_ms=0")
}

var (
	builds   sync.Map // package path → *build
	buildDir = sync.OnceValues(func() (string, error) { return os.MkdirTemp("", "megacomet-test-bin-") })
)

type build struct {
	once sync.Once
	path string
	err  error
}

// Binary builds ./cmd/NAME of this checkout into a temporary directory
// (once per test process, with -race when the tests have it) and returns
// its path.
func Binary(t testing.TB, name string) string {
	t.Helper()
	v, _ := builds.LoadOrStore(name, &build{})
	b := v.(*build)
	b.once.Do(func() {
		dir, err := buildDir()
		if err != nil {
			b.err = err
			return
		}
		root, err := moduleRoot()
		if err != nil {
			b.err = err
			return
		}
		b.path = filepath.Join(dir, name)
		args := []string{"build", "-o", b.path}
		if Race {
			args = append(args, "-race")
		}
		cmd := exec.Command("go", append(args, "./cmd/"+name)...)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build ./cmd/%s: %v\n%s", name, err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// Binaries builds bin/megacomet and bin/megatest and returns their paths.
func Binaries(t testing.TB) (megacomet, megatest string) {
	t.Helper()
	return Binary(t, "megacomet"), Binary(t, "megatest")
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}

// CheckFor polls fn until it returns nil or wait passes, then fails the
// test with fn's last error (check.For).
func CheckFor(t testing.TB, wait time.Duration, fn func() error) {
	t.Helper()
	check.For(t, wait, fn)
}

// WaitStats polls the stats socket until ok accepts what it reads or wait
// passes, and returns the stats it accepted.
func (s *Server) WaitStats(t testing.TB, wait time.Duration, ok func(manager.Stats) error) manager.Stats {
	t.Helper()
	var st manager.Stats
	check.For(t, wait, func() error {
		var err error
		if st, err = s.Stats(); err != nil {
			return err
		}
		return ok(st)
	})
	return st
}

// Server is a running manager with its workers.
type Server struct {
	t       testing.TB
	Bin     string // the megacomet binary
	Dir     string // its temp dir: config, socket, pid file
	Config  string // config file path
	Socket  string
	PidFile string
	Cmd     *exec.Cmd
	Log     *SyncBuffer // manager and worker stderr
	Listen  string      // client address, port resolved
	API     string      // API address, port resolved
	exited  chan struct{}
}

// BaseConfig is the part of every test config that keeps tests apart:
// loopback, port 0, files in the test's temp dir. %s is that dir.
const BaseConfig = `
[server]
listen = "127.0.0.1:0"
pin_cpus = true
drain = "2s"
[api]
listen = "127.0.0.1:0"
[manager]
socket = "%[1]s/stats.sock"
pid_file = "%[1]s/megacomet.pid"
state_dir = "%[1]s/state"
log_level = "debug"
`

// Start writes a config (BaseConfig, with extra TOML merged table by table)
// and starts a manager, returning once every worker serves.
func Start(t testing.TB, extra map[string]string) *Server {
	t.Helper()
	s := StartNoWait(t, extra)
	CheckFor(t, 15*time.Second, func() error {
		select {
		case <-s.exited:
			return fmt.Errorf("manager exited: %s", s.Log.String())
		default:
		}
		st, err := s.Stats()
		if err != nil {
			return err
		}
		for _, w := range st.Workers {
			if w.State != "ready" {
				return fmt.Errorf("worker %d is %s", w.Slot, w.State)
			}
		}
		if len(st.Workers) == 0 {
			return fmt.Errorf("no workers yet")
		}
		s.Listen, s.API = st.Listen, st.API
		return nil
	})
	return s
}

// StartNoWait starts a manager without waiting for it to serve.
func StartNoWait(t testing.TB, extra map[string]string) *Server {
	t.Helper()
	bin := Binary(t, "megacomet")
	dir := ShortTempDir(t)
	cfg := WriteConfig(t, dir, extra)
	s := &Server{
		t: t, Bin: bin, Dir: dir, Config: cfg,
		Socket: filepath.Join(dir, "stats.sock"), PidFile: filepath.Join(dir, "megacomet.pid"),
		Log: &SyncBuffer{}, exited: make(chan struct{}),
	}
	s.Cmd = exec.Command(bin, "-config", cfg)
	// An *os.File, not an io.Writer: exec would otherwise make Wait wait
	// for every process holding the pipe - an upgraded manager and its
	// workers too - while Exited must mean this process exited.
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	s.Cmd.Stdout, s.Cmd.Stderr = pw, pw
	if err := s.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	go io.Copy(s.Log, pr)
	go func() { s.Cmd.Wait(); close(s.exited) }()
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("server log:\n%s", s.Log.String())
		}
		if strings.Contains(s.Log.String(), "WARNING: DATA RACE") {
			t.Errorf("data race in the server:\n%s", s.Log.String())
		}
	})
	return s
}

// WriteConfig writes BaseConfig plus extra into dir and returns its path.
// extra maps a table name ("server", "comet", ...) to lines for it; a line
// setting a key BaseConfig sets replaces BaseConfig's.
func WriteConfig(t testing.TB, dir string, extra map[string]string) string {
	t.Helper()
	key := func(line string) string {
		k, _, _ := strings.Cut(line, "=")
		return strings.TrimSpace(k)
	}
	overridden := map[string]bool{}
	for table, lines := range extra {
		for _, line := range strings.Split(lines, "\n") {
			overridden[table+"."+key(line)] = true
		}
	}
	var b strings.Builder
	table := ""
	written := map[string]bool{}
	for _, line := range strings.Split(fmt.Sprintf(BaseConfig, dir), "\n") {
		if strings.HasPrefix(line, "[") {
			table = strings.Trim(line, "[]")
			b.WriteString(line + "\n" + extra[table] + "\n")
			written[table] = true
			continue
		}
		if !overridden[table+"."+key(line)] {
			b.WriteString(line + "\n")
		}
	}
	for table, lines := range extra {
		if !written[table] {
			b.WriteString("[" + table + "]\n" + lines + "\n")
		}
	}
	path := filepath.Join(dir, "megacomet.toml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// ShortTempDir is a temp dir whose path fits in a Unix socket address
// (t.TempDir's can be too long).
func ShortTempDir(t testing.TB) string {
	dir, err := os.MkdirTemp("", "mc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// Stats reads the stats socket.
func (s *Server) Stats() (manager.Stats, error) {
	var st manager.Stats
	raw, err := manager.FetchStats(s.Socket, 2*time.Second)
	if err != nil {
		return st, err
	}
	err = json.Unmarshal(raw, &st)
	return st, err
}

// MustStats reads the stats socket or fails the test.
func (s *Server) MustStats() manager.Stats {
	s.t.Helper()
	st, err := s.Stats()
	if err != nil {
		s.t.Fatal(err)
	}
	return st
}

// Exited is closed when the first manager process has exited.
func (s *Server) Exited() <-chan struct{} { return s.exited }

// Signal sends sig to the first manager process.
func (s *Server) Signal(sig syscall.Signal) { s.Cmd.Process.Signal(sig) }

// ManagerPID is the live manager's pid, from the pid file (after a reload
// it is no longer the process Start started).
func (s *Server) ManagerPID() int {
	b, err := os.ReadFile(s.PidFile)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// Stop stops the manager gracefully (SIGTERM), killing it after 15 s. After
// a reload it stops whichever manager the pid file names.
func (s *Server) Stop() {
	select {
	case <-s.exited:
	default:
		s.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(15 * time.Second):
			s.t.Errorf("manager did not stop after SIGTERM (its goroutines follow, from SIGQUIT)")
			s.Signal(syscall.SIGQUIT)
			select {
			case <-s.exited:
			case <-time.After(5 * time.Second):
				s.Cmd.Process.Kill()
				<-s.exited
			}
		}
	}
	pid := s.ManagerPID()
	if pid == 0 || pid == s.Cmd.Process.Pid || !PIDAlive(pid) {
		return
	}
	syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(15 * time.Second)
	for PIDAlive(pid) {
		if time.Now().After(deadline) {
			s.t.Errorf("upgraded manager %d did not stop after SIGTERM", pid)
			syscall.Kill(pid, syscall.SIGKILL)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// SyncBuffer is a bytes.Buffer safe for concurrent writers.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// PIDAlive reports whether a process exists (and is not a zombie).
func PIDAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// state is the field after the ")" that closes the command name
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z'
}

// DefaultKernel is what a fresh machine of ours has for the settings that
// decide how connections queue and migrate. A test about a default
// machine sets these first (Sysctl), so what an earlier run or a `make c1m`
// left tuned cannot make it pass.
var DefaultKernel = map[string]string{
	"net.core.somaxconn":           "4096",
	"net.ipv4.tcp_max_syn_backlog": "2048",
	"net.core.netdev_max_backlog":  "1000",
	"net.ipv4.ip_local_port_range": "32768 60999",
	"net.ipv4.tcp_migrate_req":     "0",
}

// Sysctl sets kernel settings (root only) for the rest of the test and
// restores each one's previous value when it ends. Later maps win.
func Sysctl(t testing.TB, settings ...map[string]string) {
	t.Helper()
	want := map[string]string{}
	for _, m := range settings {
		for k, v := range m {
			want[k] = v
		}
	}
	for key, val := range want {
		path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
		old, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("sysctl %s: %v", key, err)
		}
		if err := os.WriteFile(path, []byte(val), 0o644); err != nil {
			t.Fatalf("sysctl -w %s=%q (needs root): %v", key, val, err)
		}
		t.Cleanup(func() {
			if err := os.WriteFile(path, old, 0o644); err != nil {
				t.Errorf("restore %s: %v", key, err)
			}
		})
	}
}
