// Package loopback measures the kernel's floor for a fan-out: the CPU one
// loopback TCP write and its read cost, per connection, with no event loop
// and no wake-ups. A broadcast through megacomet with its clients on the
// same box cannot cost less per connection. The worker's benchmarks and
// the c1m/bench reports (bench/) measure it the same way, in the same run.
package loopback

import (
	"fmt"
	"syscall"
	"time"
)

// Pair is both ends of one loopback connection.
type Pair struct{ Server, Client int }

// Open connects n loopback pairs. Close them with Close.
func Open(n int) ([]Pair, error) {
	ln, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer syscall.Close(ln)
	if err := syscall.Bind(ln, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return nil, err
	}
	if err := syscall.Listen(ln, 1024); err != nil {
		return nil, err
	}
	sa, err := syscall.Getsockname(ln)
	if err != nil {
		return nil, err
	}
	pairs := make([]Pair, 0, n)
	for range n {
		cli, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			Close(pairs)
			return nil, err
		}
		if err := syscall.Connect(cli, sa); err != nil {
			syscall.Close(cli)
			Close(pairs)
			return nil, err
		}
		srv, _, err := syscall.Accept(ln)
		if err != nil {
			syscall.Close(cli)
			Close(pairs)
			return nil, err
		}
		pairs = append(pairs, Pair{srv, cli})
	}
	return pairs, nil
}

// Close closes every pair.
func Close(pairs []Pair) {
	for _, p := range pairs {
		syscall.Close(p.Server)
		syscall.Close(p.Client)
	}
}

// Round writes msg to every pair's server end, then reads it back from
// every client end (buf holds at least len(msg)), like one broadcast.
func Round(pairs []Pair, msg, buf []byte) error {
	for _, p := range pairs {
		if _, err := syscall.Write(p.Server, msg); err != nil {
			return err
		}
	}
	for _, p := range pairs {
		for got := 0; got < len(msg); {
			m, err := syscall.Read(p.Client, buf[got:len(msg)])
			if err == syscall.EINTR {
				continue
			}
			if err != nil || m == 0 {
				return fmt.Errorf("loopback read: %v", err)
			}
			got += m
		}
	}
	return nil
}

// CPU is this process's CPU time so far, user and system, every thread.
func CPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Floor opens conns pairs and runs rounds rounds of an SSE-sized event
// over them; it returns the CPU time per connection reached.
func Floor(conns, rounds int) (time.Duration, error) {
	pairs, err := Open(conns)
	if err != nil {
		return 0, fmt.Errorf("loopback floor: %d connections: %w", conns, err)
	}
	defer Close(pairs)
	msg := []byte("id: 1764000000000001\ndata: {\"id\":1764000000000001,\"data\":{\"hello\":\"world\"}}\n\n")
	buf := make([]byte, len(msg))
	if err := Round(pairs, msg, buf); err != nil { // warm: first writes grow buffers
		return 0, err
	}
	cpu := CPU()
	for range rounds {
		if err := Round(pairs, msg, buf); err != nil {
			return 0, err
		}
	}
	return (CPU() - cpu) / time.Duration(conns*rounds), nil
}
