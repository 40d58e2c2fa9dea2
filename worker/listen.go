package worker

import (
	"fmt"
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// leaveReusePortGroup stops this worker from accepting new connections while
// it keeps the ones it has. evio has no such mode, and its listener lives in
// two descriptors (the net.Listener's and a dup). Each TCP descriptor of this
// process that is listening is replaced, in place, by a fresh unbound socket
// with dup3: the number stays valid for evio and the runtime, but the
// listening socket is closed, so the kernel hands new connections to the
// other workers in the SO_REUSEPORT group. Established connections are
// separate sockets and are untouched.
func leaveReusePortGroup() error {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return err
	}
	replaced := 0
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || !isTCPListener(fd) {
			continue
		}
		dom, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
		if err != nil {
			continue
		}
		s, err := unix.Socket(dom, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("leave listener fd %d: %w", fd, err)
		}
		err = unix.Dup3(s, fd, unix.O_CLOEXEC)
		unix.Close(s)
		if err != nil {
			return fmt.Errorf("leave listener fd %d: %w", fd, err)
		}
		replaced++
	}
	if replaced == 0 {
		return fmt.Errorf("leave listener: no listening TCP socket found")
	}
	return nil
}

func isTCPListener(fd int) bool {
	acc, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	if err != nil || acc != 1 {
		return false
	}
	dom, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	return err == nil && (dom == unix.AF_INET || dom == unix.AF_INET6)
}

// raiseFileLimit lifts the soft RLIMIT_NOFILE to the hard one and returns it.
func raiseFileLimit() int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 1024
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
		syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	if lim.Cur > 1<<30 {
		return 1 << 30
	}
	return int(lim.Cur)
}
