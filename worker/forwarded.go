package worker

import (
	"bytes"
	"net/netip"
)

// Behind a proxy that speaks HTTP (nginx), the client's address is in the
// request: X-Forwarded-For, or RFC 7239's Forwarded. Believed only from
// server.trusted_proxies, since anyone can send the header. Each proxy on
// the way appends the address it saw, so the client is the rightmost
// address that is not a trusted proxy itself: what comes left of it was
// written by the client and proves nothing. A connection from a trusted
// proxy counts against max_conns_per_ip when its first request names its
// client (kindForwarded); its later requests do not move it.

// trusted reports whether a is one of server.trusted_proxies.
func (w *Worker) trusted(a netip.Addr) bool {
	for _, p := range w.trustedNets {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// forwardedClient is the client address r names, from the peer peer (a
// trusted proxy): the rightmost address of X-Forwarded-For (or, without
// one, of Forwarded's for=) that is not a trusted proxy, else the leftmost
// one; peer when the header is missing, or what its rightmost entry says
// cannot be read.
func (w *Worker) forwardedClient(r *request, peer netip.Addr) netip.Addr {
	list, forwarded := r.forwardedFor, false
	if len(list) == 0 {
		list, forwarded = r.forwarded, true
	}
	client := peer
	for len(list) > 0 {
		var elem []byte
		if i := bytes.LastIndexByte(list, ','); i >= 0 {
			elem, list = list[i+1:], list[:i]
		} else {
			elem, list = list, nil
		}
		if forwarded {
			elem = forwardedFor(elem)
		}
		a, ok := parseHostPort(trimOWS(elem))
		if !ok {
			break // "unknown", an obfuscated name, garbage: no further
		}
		client = a
		if !w.trusted(a) {
			break
		}
	}
	return client
}

// forwardedFor is the for= value of one Forwarded element
// (for=192.0.2.60;proto=https, for="[2001:db8::1]:4711"), unquoted.
func forwardedFor(elem []byte) []byte {
	for len(elem) > 0 {
		var pair []byte
		pair, elem = cutByte(elem, ';')
		pair = trimOWS(pair)
		if len(pair) > 4 && asciiEqualFold(pair[:4], []byte("for=")) {
			v := pair[4:]
			if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
				v = v[1 : len(v)-1]
			}
			return v
		}
	}
	return nil
}

// parseHostPort reads an address with or without a port: 192.0.2.7,
// 192.0.2.7:4711, 2001:db8::1, [2001:db8::1], [2001:db8::1]:4711.
func parseHostPort(b []byte) (netip.Addr, bool) {
	if len(b) > 0 && b[0] == '[' {
		end := bytes.IndexByte(b, ']')
		if end < 0 || (end+1 < len(b) && (b[end+1] != ':' || !validPort(b[end+2:]))) {
			return netip.Addr{}, false
		}
		b = b[1:end]
	} else if i := bytes.IndexByte(b, ':'); i >= 0 && bytes.IndexByte(b[i+1:], ':') < 0 {
		if !validPort(b[i+1:]) {
			return netip.Addr{}, false
		}
		b = b[:i] // IPv4 with a port
	}
	a, ok := parseIP(b)
	return a.Unmap(), ok
}

// admitForwarded counts a trusted proxy's connection against the address
// its first request names; false when that address is over its cap (the
// client has its answer).
func (w *Worker) admitForwarded(cc *conn, r *request) bool {
	cc.kind = kindClient
	peer, ok := w.realIP[cc] // the address a PROXY header named
	if ok {
		delete(w.realIP, cc)
	} else {
		peer = peerIP(cc.ec)
	}
	return w.admitAs(cc, w.forwardedClient(r, peer))
}
