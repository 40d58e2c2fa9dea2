// Package rlimit raises the open-file limit, for the manager and its
// workers alike.
package rlimit

import "syscall"

// RaiseNoFile lifts the soft RLIMIT_NOFILE to the hard limit explicitly
// and returns the soft limit now in force (1024 when it cannot be read,
// at most 1<<30). Go raises its own soft limit at start-up but restores
// the original for processes it starts; an explicit Setrlimit makes the
// workers inherit the raised one.
func RaiseNoFile() int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 1024
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
		syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	return int(min(lim.Cur, 1<<30))
}
