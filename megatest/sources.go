package megatest

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
)

// A TCP connection is named by (source IP, source port, destination IP,
// destination port), and the kernel hands out source ports from
// net.ipv4.ip_local_port_range: about 28,000 per source IP and destination
// here. So a million connections to one server port need some 40 source
// IPs. Every address in 127.0.0.0/8 is already local on Linux, so on
// loopback megatest picks 127.0.x.y sources by itself; for a remote server,
// add IP aliases to the load box (docs/C1M.md) and name them with -src.
// Sockets bind with IP_BIND_ADDRESS_NO_PORT, so the port is chosen at
// connect time from the full 4-tuple and a source IP is never limited by
// ports used towards other destinations.

// maxPerSource is how many connections megatest puts on one auto-picked
// source address, well inside the ephemeral port range.
const maxPerSource = 20000

// resolveTargets turns HOST - one host, or several separated by commas,
// each with its own :port or -port's - into the addresses to dial.
func resolveTargets(hosts string, port int) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	for _, h := range strings.Split(hosts, ",") {
		h, p := strings.TrimSpace(h), port
		if hh, ps, err := net.SplitHostPort(h); err == nil {
			n, err := strconv.Atoi(ps)
			if err != nil || n <= 0 || n > 65535 {
				return nil, fmt.Errorf("megatest: %q has no valid port", h)
			}
			h, p = hh, n
		}
		if h == "" {
			return nil, fmt.Errorf("megatest: HOST %q names an empty host", hosts)
		}
		a, err := resolveTarget(h, p)
		if err != nil {
			return nil, err
		}
		if len(out) > 0 && a.Addr().Is4() != out[0].Addr().Is4() {
			return nil, fmt.Errorf("megatest: hosts %s and %s are not the same IP version", out[0], a)
		}
		out = append(out, a)
	}
	return out, nil
}

// resolveTarget turns one host and port into the address to dial.
func resolveTarget(host string, port int) (netip.AddrPort, error) {
	if a, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return netip.AddrPortFrom(a.Unmap(), uint16(port)), nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("megatest: resolve %s: %w", host, err)
	}
	for _, a := range addrs { // prefer IPv4: that is where the source aliases are
		if a.Unmap().Is4() {
			return netip.AddrPortFrom(a.Unmap(), uint16(port)), nil
		}
	}
	return netip.AddrPortFrom(addrs[0], uint16(port)), nil
}

// parseSources reads -src: a comma list of addresses and lo-hi ranges.
func parseSources(s string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		loS, hiS, isRange := strings.Cut(item, "-")
		lo, err := netip.ParseAddr(loS)
		if err != nil {
			return nil, fmt.Errorf("megatest: -src %q: %w", item, err)
		}
		hi := lo
		if isRange {
			if hi, err = netip.ParseAddr(hiS); err != nil {
				return nil, fmt.Errorf("megatest: -src %q: %w", item, err)
			}
			if hi.Is4() != lo.Is4() || hi.Less(lo) {
				return nil, fmt.Errorf("megatest: -src %q: not a range", item)
			}
		}
		for a := lo; ; a = a.Next() {
			if len(out) >= 1<<16 {
				return nil, fmt.Errorf("megatest: -src %q: more than 65536 addresses", s)
			}
			out = append(out, a.Unmap())
			if a == hi {
				break
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("megatest: -src %q: no address", s)
	}
	return out, nil
}

// formatSources writes addrs back as -src text, runs of consecutive
// addresses as ranges.
func formatSources(addrs []netip.Addr) string {
	var b strings.Builder
	for i := 0; i < len(addrs); {
		j := i
		for j+1 < len(addrs) && addrs[j].Next() == addrs[j+1] {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(addrs[i].String())
		if j > i {
			b.WriteByte('-')
			b.WriteString(addrs[j].String())
		}
		i = j + 1
	}
	return b.String()
}

// autoSources picks loopback sources for n connections to dst: none when
// dst is not loopback or n fits one source's ports.
func autoSources(dst netip.Addr, n int) []netip.Addr {
	if !dst.IsLoopback() || !dst.Is4() {
		return nil
	}
	per := min(maxPerSource, portRange()-2000)
	count := (n + per - 1) / per
	if count <= 1 {
		return nil
	}
	out := make([]netip.Addr, 0, count)
	// 127.0.1.1, 127.0.1.2, … skipping .0 and .255 in the last byte.
	for x, y := 1, 1; len(out) < count; y++ {
		if y == 255 {
			x, y = x+1, 1
		}
		out = append(out, netip.AddrFrom4([4]byte{127, 0, byte(x), byte(y)}))
	}
	return out
}

// portRange is the size of the kernel's ephemeral port range.
func portRange() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		var lo, hi int
		if n, _ := fmt.Sscan(string(b), &lo, &hi); n == 2 && hi > lo {
			return hi - lo + 1
		}
	}
	return 28232 // Linux's default 32768-60999
}
