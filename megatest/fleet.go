//go:build linux

package megatest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
)

// Splitting. One process can hold its open-file limit of connections
// (20,000 on our CI machines, and it cannot be raised), so for more the
// parent re-executes its own binary as children, each with a contiguous
// range of ids (-first, -n) and its share of -rate and -pub. A child
// writes its Snapshot as one JSON line on stdout every half second and a
// final one when it stops; its stderr is ours. The parent holds no
// connection itself: it adds the children up, prints progress, runs the
// broadcast rounds and writes the summary. Children run in their own
// process group (Ctrl-C reaches only the parent, which stops them with
// SIGTERM) and get SIGTERM if the parent dies (PR_SET_PDEATHSIG).

// childEnv marks a child, so a test binary can play megatest (TestMain).
const childEnv = "MEGATEST_CHILD"

// fdReserve is what a process keeps of its open-file limit for itself:
// stdio, epoll, the API client's connections, the runtime.
const fdReserve = 64

// nofileCapacity raises the open-file soft limit to the hard one and
// returns how many connections one process can hold.
func nofileCapacity() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 1024 - fdReserve
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
		syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	}
	return int(max(min(rl.Cur, 1<<24), fdReserve+1) - fdReserve)
}

// localFleet is the engine in this process.
type localFleet struct {
	e    *engine
	fin  chan struct{}
	once sync.Once
}

func startLocal(o *Options, dsts []netip.AddrPort, srcs []netip.Addr, agg *aggregator) (fleet, error) {
	e, err := newEngine(o, 0, o.N, dsts, srcs, o.Rate, o.Pub, func(s *Snapshot) { agg.update(0, s) }, logger())
	if err != nil {
		return nil, err
	}
	f := &localFleet{e: e, fin: make(chan struct{})}
	go func() {
		defer close(f.fin)
		if err := e.run(); err != nil {
			logger().Error(err.Error())
			agg.exited(0)
		}
	}()
	return f, nil
}

func (f *localFleet) stop()                 { f.e.stop() }
func (f *localFleet) startChat()            { f.e.chatOn.Store(true) }
func (f *localFleet) done() <-chan struct{} { return f.fin }
func (f *localFleet) kill()                 { os.Exit(1) } // the loop is stuck: nothing to save

// childFleet is the children.
type childFleet struct {
	cmds []*exec.Cmd
	fin  chan struct{}
}

// spawnCmd makes a child's command; tests swap it.
var spawnCmd = func(args []string) (*exec.Cmd, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("megatest: find own binary: %w", err)
	}
	return exec.Command(exe, args...), nil
}

func startChildren(o *Options, procs int, src string, agg *aggregator) (fleet, error) {
	f := &childFleet{fin: make(chan struct{})}
	var wg sync.WaitGroup
	first := 0
	for k := 0; k < procs; k++ {
		n := o.N/procs + btoi(k < o.N%procs)
		share := float64(n) / float64(o.N)
		cmd, err := spawnCmd(o.childArgs(first, n, o.Rate*share, o.Pub*share, src))
		if err != nil {
			f.kill()
			return nil, err
		}
		first += n
		cmd.Stderr = os.Stderr
		cmd.Env = append(os.Environ(), childEnv+"=1", tokenEnv+"="+o.Token, tokenSecretEnv+"="+o.TokenSecret)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
		out, err := cmd.StdoutPipe()
		if err != nil {
			f.kill()
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			f.kill()
			return nil, fmt.Errorf("megatest: start child %d: %w", k, err)
		}
		f.cmds = append(f.cmds, cmd)
		wg.Add(1)
		go func(k int) {
			defer wg.Done()
			sc := bufio.NewScanner(out)
			sc.Buffer(make([]byte, 64<<10), 16<<20)
			for sc.Scan() {
				var s Snapshot
				if err := json.Unmarshal(sc.Bytes(), &s); err != nil {
					logger().Error("bad snapshot from child", "child", k, "err", err)
					continue
				}
				s.Proc = k
				agg.update(k, &s)
			}
			if err := cmd.Wait(); err != nil {
				logger().Error("child exited", "child", k, "pid", cmd.Process.Pid, "err", err)
			}
			agg.exited(k)
		}(k)
	}
	go func() {
		wg.Wait()
		close(f.fin)
	}()
	return f, nil
}

func (f *childFleet) stop() {
	for _, c := range f.cmds {
		c.Process.Signal(syscall.SIGTERM)
	}
}

func (f *childFleet) done() <-chan struct{} { return f.fin }

// startChat: SIGUSR1 tells a child to start -chat.
func (f *childFleet) startChat() {
	for _, c := range f.cmds {
		c.Process.Signal(syscall.SIGUSR1)
	}
}

func (f *childFleet) kill() {
	for _, c := range f.cmds {
		c.Process.Kill()
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// runChild is a child's whole life: hold its share, report, stop on
// SIGTERM or SIGINT with a final snapshot.
func runChild(o *Options) int {
	nofileCapacity()
	dsts, err := resolveTargets(o.Host, o.Port)
	if err != nil {
		logger().Error(err.Error())
		return 1
	}
	var srcs []netip.Addr
	if o.Src != "" {
		if srcs, err = parseSources(o.Src); err != nil {
			logger().Error(err.Error())
			return 1
		}
	}
	w := bufio.NewWriterSize(os.Stdout, 64<<10)
	enc := json.NewEncoder(w)
	e, err := newEngine(o, o.First, o.N, dsts, srcs, o.Rate, o.Pub, func(s *Snapshot) {
		enc.Encode(s)
		if w.Flush() != nil {
			os.Exit(1) // the parent is gone
		}
	}, logger())
	if err != nil {
		logger().Error(err.Error())
		return 1
	}
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	chat := make(chan os.Signal, 1)
	signal.Notify(chat, syscall.SIGUSR1)
	go func() {
		for range chat {
			e.chatOn.Store(true)
		}
	}()
	// The first signal finishes the run with a final snapshot. Later ones
	// are ignored: children are in their own process group, so a second
	// one is a broadcast kill, not a user insisting, and the parent
	// SIGKILLs a child that does not finish in time.
	go func() {
		<-sig
		e.stop()
		for range sig {
		}
	}()
	if err := e.run(); err != nil {
		logger().Error(err.Error())
		return 1
	}
	return 0
}
