package worker

import (
	"bytes"
	"net/netip"
	"unsafe"
)

// The PROXY protocol (HAProxy's proxy-protocol.txt, v1 and v2): a proxy in
// front of the client port sends, before the client's first byte, who the
// client is. With server.proxy_protocol on, every connection must start with
// one; without it, a connection that starts with one is refused, since a
// client could otherwise claim any address.

// proxyV2Sig opens a v2 header.
var proxyV2Sig = []byte("\r\n\r\n\x00\r\nQUIT\n")

var proxyV1 = []byte("PROXY ")

// proxyV1Max is the longest v1 line, CRLF included.
const proxyV1Max = 107

var (
	errProxyBad = newHTTPError(400, "Bad Request", "malformed PROXY protocol header")
	errProxyOff = newHTTPError(400, "Bad Request", "PROXY protocol header, but server.proxy_protocol is off")
)

// proxyHeader takes the PROXY header at the front of a connection's input
// and returns what follows it; wait while the header is incomplete. Once it
// is in, the connection counts against the address it names (or its peer's,
// when it names none) for server.max_conns_per_ip. ok is false when the
// connection was refused: a malformed header, one where none is expected
// (server.proxy_protocol off: a client claiming an address), or its
// address over its cap.
func (w *Worker) proxyHeader(cc *conn, buf []byte) (rest []byte, wait, ok bool) {
	if cc.kind != kindProxy {
		if !bytes.HasPrefix(buf, proxyV1) && !bytes.HasPrefix(buf, proxyV2Sig[:5]) {
			return buf, false, true // an HTTP request (or not one: the parser says)
		}
		w.counts.ProxyRejected++
		w.reject(cc, errProxyOff)
		return nil, false, false
	}
	n, addr, err := parseProxy(buf, w.opts.Server.MaxHeaderBytes)
	switch {
	case err == errNeedMore:
		return buf, true, true
	case err != nil:
		w.counts.ProxyRejected++
		w.reject(cc, errProxyBad)
		return nil, false, false
	}
	cc.kind = kindClient
	if w.perIP != nil {
		if !addr.IsValid() {
			addr = peerIP(cc.ec)
		}
		if w.trusted(addr) {
			// A proxy behind the proxy: its request names the client.
			cc.kind = kindForwarded
			w.realIP[cc] = addr // where the walk starts (admitForwarded)
			return buf[n:], false, true
		}
		if !w.admitAs(cc, addr) {
			return nil, false, false
		}
	}
	return buf[n:], false, true
}

// hasPrefixSoFar: b starts with p, or is a beginning of it.
func hasPrefixSoFar(b, p []byte) bool {
	n := min(len(b), len(p))
	return n > 0 && bytes.Equal(b[:n], p[:n])
}

// parseProxy parses the PROXY header at the front of b: its length, and
// the client's address - invalid when the header names none (v1 UNKNOWN,
// v2 LOCAL or a family without IP addresses: the connection's own peer
// then). It returns errNeedMore while the header is incomplete and
// errProxyBad for anything else. It allocates nothing.
func parseProxy(b []byte, maxLen int) (int, netip.Addr, error) {
	switch {
	case len(b) == 0:
		return 0, netip.Addr{}, errNeedMore
	case hasPrefixSoFar(b, proxyV1):
		return parseProxyV1(b)
	case hasPrefixSoFar(b, proxyV2Sig):
		return parseProxyV2(b, maxLen)
	}
	return 0, netip.Addr{}, errProxyBad
}

func parseProxyV1(b []byte) (int, netip.Addr, error) {
	end := bytes.Index(b[:min(len(b), proxyV1Max)], []byte("\r\n"))
	if end < 0 {
		if len(b) >= proxyV1Max || bytes.IndexByte(b, '\n') >= 0 {
			return 0, netip.Addr{}, errProxyBad
		}
		return 0, netip.Addr{}, errNeedMore
	}
	var f [5][]byte // proto src dst sport dport
	n := 0
	for line := b[len(proxyV1):end]; len(line) > 0; n++ {
		if n == len(f) {
			return 0, netip.Addr{}, errProxyBad // a sixth field
		}
		f[n], line = cutByte(line, ' ')
	}
	switch string(f[0]) {
	case "UNKNOWN": // the proxy does not know: whatever follows is ignored
		return end + 2, netip.Addr{}, nil
	case "TCP4", "TCP6":
	default:
		return 0, netip.Addr{}, errProxyBad
	}
	if n != len(f) || !validPort(f[3]) || !validPort(f[4]) {
		return 0, netip.Addr{}, errProxyBad
	}
	src, ok1 := parseIP(f[1])
	dst, ok2 := parseIP(f[2])
	if !ok1 || !ok2 || src.Is4() != (string(f[0]) == "TCP4") || dst.Is4() != src.Is4() {
		return 0, netip.Addr{}, errProxyBad
	}
	return end + 2, src.Unmap(), nil
}

func parseProxyV2(b []byte, maxLen int) (int, netip.Addr, error) {
	if len(b) < 16 {
		return 0, netip.Addr{}, errNeedMore
	}
	n := 16 + (int(b[14])<<8 | int(b[15]))
	if b[12]>>4 != 2 || b[12]&0xf > 1 || n > maxLen {
		return 0, netip.Addr{}, errProxyBad
	}
	if len(b) < n {
		return 0, netip.Addr{}, errNeedMore
	}
	if b[12]&0xf == 0 { // LOCAL: the proxy's own connection (a health check)
		return n, netip.Addr{}, nil
	}
	body := b[16:n]
	switch b[13] >> 4 {
	case 1: // AF_INET: src, dst, sport, dport
		if len(body) < 12 {
			return 0, netip.Addr{}, errProxyBad
		}
		return n, netip.AddrFrom4([4]byte(body[:4])), nil
	case 2: // AF_INET6
		if len(body) < 36 {
			return 0, netip.Addr{}, errProxyBad
		}
		return n, netip.AddrFrom16([16]byte(body[:16])).Unmap(), nil
	case 0, 3: // AF_UNSPEC, AF_UNIX: no IP address
		return n, netip.Addr{}, nil
	}
	return 0, netip.Addr{}, errProxyBad
}

// validPort: 0 to 65535 in decimal, without a leading zero.
func validPort(b []byte) bool {
	if len(b) == 0 || len(b) > 5 || (b[0] == '0' && len(b) > 1) {
		return false
	}
	v := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
		v = v*10 + int(c-'0')
	}
	return v <= 65535
}

// parseIP parses an IPv4 or IPv6 address without allocating: no zone (a
// zone would be interned, and no proxy sends one).
func parseIP(b []byte) (netip.Addr, bool) {
	if len(b) == 0 || len(b) > 45 || bytes.IndexByte(b, '%') >= 0 {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(unsafe.String(&b[0], len(b))) // not kept: no zone
	return a, err == nil
}
