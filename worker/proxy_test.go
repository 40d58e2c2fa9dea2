package worker

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
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
