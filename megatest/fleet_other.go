//go:build !linux

package megatest

import (
	"errors"
	"net/netip"
)

// megatest's engine is an epoll loop: Linux only. The load boxes run
// Linux; this file only keeps the module building elsewhere.
var errNotLinux = errors.New("megatest: needs Linux (epoll)")

func nofileCapacity() int { return 1 << 20 }

func startLocal(*Options, netip.AddrPort, []netip.Addr, *aggregator) (fleet, error) {
	return nil, errNotLinux
}

func startChildren(*Options, int, string, *aggregator) (fleet, error) { return nil, errNotLinux }

func runChild(*Options) int {
	logger().Error(errNotLinux.Error())
	return 1
}
