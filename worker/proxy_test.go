package worker

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"syscall"
	"testing"

	"github.com/megacomet/megacomet/config"
	"github.com/megacomet/megacomet/ipc"
)

func proxyV2(cmd, fam byte, addrs []byte, tlv []byte) []byte {
	b := append([]byte(nil), proxyV2Sig...)
	b = append(b, 0x20|cmd, fam<<4|1)
	b = binary.BigEndian.AppendUint16(b, uint16(len(addrs)+len(tlv)))
	return append(append(b, addrs...), tlv...)
}

var proxyCases = []struct {
	name string
	in   string
	addr string // "" = none named
	err  error
}{
	{"v1 tcp4", "PROXY TCP4 192.0.2.7 10.0.0.1 56324 8000\r\n", "192.0.2.7", nil},
	{"v1 tcp6", "PROXY TCP6 2001:db8::7 2001:db8::1 56324 8000\r\n", "2001:db8::7", nil},
	{"v1 tcp6 mapped", "PROXY TCP6 ::ffff:192.0.2.7 ::ffff:10.0.0.1 1 2\r\n", "192.0.2.7", nil},
	{"v1 unknown", "PROXY UNKNOWN\r\n", "", nil},
	{"v1 unknown with addresses", "PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", "", nil},
	{"v1 longest", "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", nil},
	{"v1 family mismatch", "PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n", "", errProxyBad},
	{"v1 dst family", "PROXY TCP4 192.0.2.7 2001:db8::1 1 2\r\n", "", errProxyBad},
	{"v1 bad port", "PROXY TCP4 192.0.2.7 10.0.0.1 65536 8000\r\n", "", errProxyBad},
	{"v1 leading zero", "PROXY TCP4 192.0.2.7 10.0.0.1 080 8000\r\n", "", errProxyBad},
	{"v1 zone", "PROXY TCP6 fe80::1%eth0 fe80::2 1 2\r\n", "", errProxyBad},
	{"v1 missing field", "PROXY TCP4 192.0.2.7 10.0.0.1 56324\r\n", "", errProxyBad},
	{"v1 extra field", "PROXY TCP4 192.0.2.7 10.0.0.1 1 2 3\r\n", "", errProxyBad},
	{"v1 two spaces", "PROXY TCP4  192.0.2.7 10.0.0.1 1 2\r\n", "", errProxyBad},
	{"v1 udp", "PROXY UDP4 192.0.2.7 10.0.0.1 1 2\r\n", "", errProxyBad},
	{"v1 bare LF", "PROXY TCP4 192.0.2.7 10.0.0.1 1 2\n", "", errProxyBad},
	{"v1 too long", "PROXY TCP4 " + string(bytes.Repeat([]byte("1"), 120)), "", errProxyBad},
	{"v1 lower case", "proxy TCP4 192.0.2.7 10.0.0.1 1 2\r\n", "", errProxyBad},
	{"v1 incomplete", "PROXY TCP4 192.0.2.7 10.0", "", errNeedMore},
	{"v2 inet", string(proxyV2(1, 1, []byte{192, 0, 2, 7, 10, 0, 0, 1, 0xdc, 0x04, 0x1f, 0x40}, nil)), "192.0.2.7", nil},
	{"v2 inet with TLVs", string(proxyV2(1, 1, []byte{192, 0, 2, 8, 10, 0, 0, 1, 0, 1, 0, 2}, []byte{0x01, 0, 2, 'h', '2'})), "192.0.2.8", nil},
	{"v2 inet6", string(proxyV2(1, 2, append(netip.MustParseAddr("2001:db8::7").AsSlice(), make([]byte, 20)...), nil)), "2001:db8::7", nil},
	{"v2 local", string(proxyV2(0, 0, nil, nil)), "", nil},
	{"v2 unix", string(proxyV2(1, 3, make([]byte, 216), nil)), "", nil},
	{"v2 inet short", string(proxyV2(1, 1, []byte{192, 0, 2, 7}, nil)), "", errProxyBad},
	{"v2 version 1", string(append(append([]byte(nil), proxyV2Sig...), 0x11, 0x11, 0, 0)), "", errProxyBad},
	{"v2 command 2", string(append(append([]byte(nil), proxyV2Sig...), 0x22, 0x11, 0, 0)), "", errProxyBad},
	{"v2 family 4", string(proxyV2(1, 4, nil, nil)), "", errProxyBad},
	{"v2 over the limit", string(proxyV2(1, 1, make([]byte, 9000), nil)), "", errProxyBad},
	{"v2 incomplete", string(proxyV2(1, 1, []byte{192, 0, 2, 7, 10, 0, 0, 1, 0, 1, 0, 2}, nil)[:20]), "", errNeedMore},
	{"http", "GET / HTTP/1.1\r\n\r\n", "", errProxyBad},
}

func TestParseProxy(t *testing.T) {
	for _, tc := range proxyCases {
		in := []byte(tc.in + "GET /ping HTTP/1.1\r\n\r\n")
		if tc.err == errNeedMore {
			in = []byte(tc.in)
		}
		n, addr, err := parseProxy(in, 8<<10)
		if err != tc.err {
			t.Errorf("%s: err %v, want %v", tc.name, err, tc.err)
			continue
		}
		if err != nil {
			continue
		}
		if n != len(tc.in) {
			t.Errorf("%s: length %d, want %d", tc.name, n, len(tc.in))
		}
		if want := tc.addr; (want == "" && addr.IsValid()) || (want != "" && addr != netip.MustParseAddr(want)) {
			t.Errorf("%s: address %v, want %q", tc.name, addr, want)
		}
	}
}

func TestParseProxyAllocatesNothing(t *testing.T) {
	v1, v6 := []byte(proxyCases[0].in), []byte(proxyCases[1].in)
	v2 := []byte(proxyCases[19].in)
	if n := testing.AllocsPerRun(1000, func() { parseProxy(v1, 8<<10); parseProxy(v6, 8<<10); parseProxy(v2, 8<<10) }); n != 0 {
		t.Errorf("%.1f allocations per header", n)
	}
}

// FuzzParseProxy: never a panic or a length past the input; a header
// split anywhere parses as it does whole (incomplete until it is); a
// v1 address round-trips through netip.
func FuzzParseProxy(f *testing.F) {
	for _, tc := range proxyCases {
		f.Add([]byte(tc.in), 7)
	}
	f.Fuzz(func(t *testing.T, b []byte, split int) {
		n, addr, err := parseProxy(b, 8<<10)
		if err == nil && (n <= 0 || n > len(b)) {
			t.Fatalf("length %d of %d", n, len(b))
		}
		if split < 0 || split >= len(b) {
			return
		}
		pn, paddr, perr := parseProxy(b[:split], 8<<10)
		switch {
		case perr == errNeedMore:
		case err == nil && perr == nil && (pn != n || paddr != addr):
			t.Fatalf("split at %d: %d %v, whole: %d %v", split, pn, paddr, n, addr)
		case perr == nil && err != nil:
			t.Fatalf("split at %d parses (%d), whole fails: %v", split, pn, err)
		case perr != nil && perr != errNeedMore && err == nil:
			t.Fatalf("split at %d fails (%v), whole parses", split, perr)
		}
	})
}

// With server.proxy_protocol on, a connection's PROXY header (v1 or v2,
// whole or a byte at a time) comes before its requests; a malformed one
// is refused and counted.
func TestProxyProtocolOn(t *testing.T) {
	h := startWorker(t, func(o *config.Options) { o.Server.ProxyProtocol = true })
	for name, head := range map[string]string{"v1": proxyCases[0].in, "v2": proxyCases[19].in, "v2 local": proxyCases[22].in} {
		c := h.dialRaw()
		c.write([]byte(head + "GET /ping HTTP/1.1\r\n\r\n"))
		if got := c.readN(len(h.w.pong)); !bytes.Equal(got, h.w.pong) {
			t.Errorf("%s: got %q", name, got)
		}
		c.write(pingReq) // the header came once; what follows is HTTP
		if got := c.readN(len(h.w.pong)); !bytes.Equal(got, h.w.pong) {
			t.Errorf("%s, second request: got %q", name, got)
		}
	}
	c := h.dialRaw()
	for _, b := range []byte(proxyCases[1].in + "GET /ping HTTP/1.1\r\nConnection: close\r\n\r\n") {
		c.write([]byte{b})
	}
	if got := c.readAll(); !bytes.Equal(got, h.w.pong) {
		t.Errorf("a byte at a time: got %q", got)
	}
	for _, bad := range []string{"GET /ping HTTP/1.1\r\n\r\n", "PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n"} {
		c := h.dialRaw()
		c.write([]byte(bad))
		if got := c.readAll(); !bytes.Equal(got, errProxyBad.resp) {
			t.Errorf("%q: got %q", bad, got)
		}
	}
	h.countsWhere(func(c ipc.Counts) bool { return c.ProxyRejected == 2 })
}

// With it off, a connection that sends a PROXY header - a client claiming
// an address - is refused and counted.
func TestProxyProtocolOff(t *testing.T) {
	h := startWorker(t, nil)
	for _, head := range []string{proxyCases[0].in, proxyCases[19].in} {
		c := h.dialRaw()
		c.write([]byte(head + "GET /ping HTTP/1.1\r\n\r\n"))
		if got := c.readAll(); !bytes.Equal(got, errProxyOff.resp) {
			t.Errorf("got %q", got)
		}
	}
	h.countsWhere(func(c ipc.Counts) bool { return c.ProxyRejected == 2 })
}

// server.max_conns_per_ip counts the addresses PROXY headers name, not
// the proxy's: two clients of one address are its cap, a third is
// refused while another address is welcome, and a close gives the slot
// back.
func TestProxyProtocolPerIPCap(t *testing.T) {
	h := startWorker(t, func(o *config.Options) { o.Server.ProxyProtocol, o.Server.MaxConnsPerIP = true, 2 })
	open := func(src string) *rawConn {
		c := h.dialRaw()
		c.write([]byte("PROXY TCP4 " + src + " 10.0.0.1 4000 8000\r\nGET /ping HTTP/1.1\r\n\r\n"))
		return c
	}
	a1, a2 := open("192.0.2.7"), open("192.0.2.7")
	for _, c := range []*rawConn{a1, a2, open("198.51.100.1"), open("198.51.100.1")} {
		if got := c.readN(len(h.w.pong)); !bytes.Equal(got, h.w.pong) {
			t.Fatalf("under the cap: got %q", got)
		}
	}
	third := open("192.0.2.7")
	if got := third.readAll(); !bytes.Equal(got, errPerIP.resp) {
		t.Errorf("a third from 192.0.2.7: got %q", got)
	}
	// The refused one and a1 go (shut down: their fds are closed by the
	// harness at the end, once).
	syscall.Shutdown(third.fd, syscall.SHUT_RDWR)
	syscall.Shutdown(a1.fd, syscall.SHUT_RDWR)
	h.countsWhere(func(c ipc.Counts) bool { return c.Conns == 3 && c.PerIPRefused == 1 })
	if got := open("192.0.2.7").readN(len(h.w.pong)); !bytes.Equal(got, h.w.pong) {
		t.Errorf("after one of 192.0.2.7's closed: got %q", got)
	}
}
