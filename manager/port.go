package manager

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// holdPort reserves the client port for the workers. It binds server.listen
// with SO_REUSEPORT but without SO_REUSEADDR, and never listens:
//   - a non-listening socket receives no connections, yet keeps the port in
//     our SO_REUSEPORT group while workers come and go;
//   - the workers' listeners (SO_REUSEPORT, same user) can join it;
//   - any other program's listener cannot, because without SO_REUSEADDR on
//     our side the kernel reports a conflict.
//
// With port 0 the kernel picks the port here, once, so every worker binds
// the same one. It returns the socket and the address the workers bind.
func holdPort(addr string) (*os.File, string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, "", err
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	ip := net.IPv4zero
	if host != "" {
		ip = net.ParseIP(host)
	}
	p, _ := strconv.Atoi(port)
	if p != 0 {
		// A plain listener (SO_REUSEADDR, as net.Listen sets it) succeeds
		// over TIME_WAIT leftovers of our own last run but fails where
		// something is listening: that is "address in use".
		ln, err := net.Listen("tcp", net.JoinHostPort(host, port))
		if err != nil {
			return nil, "", cleanListenErr(err)
		}
		ln.Close()
	}
	var sa unix.Sockaddr
	domain := unix.AF_INET
	if ip4 := ip.To4(); ip4 != nil {
		sa4 := &unix.SockaddrInet4{Port: p}
		copy(sa4.Addr[:], ip4)
		sa = sa4
	} else {
		domain = unix.AF_INET6
		sa6 := &unix.SockaddrInet6{Port: p}
		copy(sa6.Addr[:], ip.To16())
		sa = sa6
	}
	fd, err := unix.Socket(domain, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, "", err
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		unix.Close(fd)
		return nil, "", err
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EADDRINUSE) {
			return nil, "", errors.New("address already in use")
		}
		return nil, "", err
	}
	f := os.NewFile(uintptr(fd), "client-port")
	bound, err := boundAddr(f)
	if err != nil {
		f.Close()
		return nil, "", err
	}
	return f, bound, nil
}

// boundAddr returns the host:port a held port socket is bound to.
func boundAddr(f *os.File) (string, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return "", err
	}
	var sa unix.Sockaddr
	var serr error
	rc.Control(func(fd uintptr) { sa, serr = unix.Getsockname(int(fd)) })
	if serr != nil {
		return "", serr
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port)), nil
	case *unix.SockaddrInet6:
		return net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port)), nil
	}
	return "", fmt.Errorf("client port socket has address %T", sa)
}

// cleanListenErr turns "listen tcp 127.0.0.1:8000: bind: address already in
// use" into "address already in use": callers name the key and address.
func cleanListenErr(err error) error {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		s = s[i+2:]
	}
	return errors.New(s)
}

// checkMigrateReq warns when the kernel will reset connections that are
// still in a closing listener's accept queue instead of moving them to
// another worker in the group.
func checkMigrateReq() string {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_migrate_req")
	if err != nil {
		return "this kernel has no net.ipv4.tcp_migrate_req (Linux < 5.14): connections queued on a draining worker may be reset"
	}
	if strings.TrimSpace(string(b)) == "0" {
		return "net.ipv4.tcp_migrate_req is 0: connections queued on a draining worker will be reset; set it to 1 (see etc/sysctl.d/60-megacomet.conf)"
	}
	return ""
}
