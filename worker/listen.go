package worker

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// leaveReusePortGroup stops this worker from accepting new connections while
// it keeps the ones it has. evio has no such mode, and its listener lives in
// two descriptors (the net.Listener's and a dup). Each TCP descriptor of this
// process that is listening is replaced, in place, by another socket with
// dup3: the number stays valid for evio and the runtime, but the listening
// socket is closed, so the kernel hands new connections to the other
// workers in the SO_REUSEPORT group. Established connections are separate
// sockets and are untouched.
//
// The replacement is a non-blocking, listening Unix socket (autobound to an
// abstract name nobody knows), not an unbound TCP socket: this runs inside
// an evio callback, and the rest of the batch of events evio is working
// through may still name the listener's number. evio then calls accept on
// it, and any error but EAGAIN - EINVAL from an unbound socket - stops its
// loop, closing every client. accept on this one says EAGAIN.
//
// Only listeners on port (the worker's client port) are replaced: tests run
// several workers in one process.
func leaveReusePortGroup(port int) error {
	fds, err := tcpListeners(port)
	if err != nil {
		return err
	}
	replaced := 0
	for _, fd := range fds {
		s, err := idleListener()
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

// tcpListeners returns this process's listening TCP descriptors on port.
func tcpListeners(port int) ([]int, error) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil, err
	}
	var fds []int
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && isTCPListener(fd) && localPort(fd) == port {
			fds = append(fds, fd)
		}
	}
	return fds, nil
}

// keepalive turns TCP keepalive on for every connection the listeners on
// port accept: Linux copies a listening socket's keepalive settings to the
// sockets it accepts, so this costs nothing per connection. Probes start
// after idle without traffic, every idle/4, and 4 unanswered end the
// connection (ETIMEDOUT): a peer that vanished is noticed within 2 × idle.
func keepalive(port int, idle time.Duration) error {
	fds, err := tcpListeners(port)
	if err != nil {
		return err
	}
	secs := max(int(idle/time.Second), 1)
	for _, fd := range fds {
		for _, o := range [...]struct{ level, opt, v int }{
			{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
			{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, secs},
			{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, max(secs/4, 1)},
			{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, 4},
		} {
			if err := unix.SetsockoptInt(fd, o.level, o.opt, o.v); err != nil {
				return fmt.Errorf("server.tcp_keepalive on fd %d: %w", fd, err)
			}
		}
	}
	return nil
}

// idleListener is a listening socket that never has a connection to
// accept: a Unix one, autobound to an abstract address (an empty name).
func idleListener() (int, error) {
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.Bind(s, &unix.SockaddrUnix{}); err != nil {
		unix.Close(s)
		return -1, err
	}
	if err := unix.Listen(s, 1); err != nil {
		unix.Close(s)
		return -1, err
	}
	return s, nil
}

func localPort(fd int) int {
	switch sa, _ := unix.Getsockname(fd); a := sa.(type) {
	case *unix.SockaddrInet4:
		return a.Port
	case *unix.SockaddrInet6:
		return a.Port
	}
	return -1
}

func isTCPListener(fd int) bool {
	acc, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	if err != nil || acc != 1 {
		return false
	}
	dom, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	return err == nil && (dom == unix.AF_INET || dom == unix.AF_INET6)
}
