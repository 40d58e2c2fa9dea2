package worker

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/megacomet/megacomet/config"
	"github.com/megacomet/megacomet/ipc"
)

var peer = netip.MustParseAddr("127.0.0.1")

func trustingWorker(nets ...string) *Worker {
	p, err := config.ParsePrefixes(nets)
	if err != nil {
		panic(err)
	}
	return &Worker{trustedNets: p}
}

func TestForwardedClient(t *testing.T) {
	w := trustingWorker("127.0.0.1", "10.0.0.0/8", "2001:db8:ffff::/48")
	for _, tc := range []struct{ xff, fwd, want string }{
		{"", "", "127.0.0.1"},
		{"192.0.2.7", "", "192.0.2.7"},
		{"203.0.113.9, 192.0.2.7", "", "192.0.2.7"},          // what the client wrote is left of it
		{"192.0.2.7, 10.1.2.3", "", "192.0.2.7"},             // a trusted proxy on the way
		{"10.1.1.1,10.1.2.3", "", "10.1.1.1"},                // all trusted: the first
		{"garbage, 192.0.2.7", "", "192.0.2.7"},              // unread left of the client
		{"192.0.2.7, unknown", "", "127.0.0.1"},              // the last proxy's entry unreadable
		{"192.0.2.7:4711", "", "192.0.2.7"},                  // with a port
		{"[2001:db8::1]:4711", "", "2001:db8::1"},            // IPv6 with a port
		{"2001:db8::1", "", "2001:db8::1"},                   // IPv6 bare
		{"::ffff:192.0.2.7", "", "192.0.2.7"},                // mapped
		{"2001:db8::1, 2001:db8:ffff::5", "", "2001:db8::1"}, // a trusted IPv6 proxy
		{"192.0.2.7:99999", "", "127.0.0.1"},                 // a bad port
		{"fe80::1%eth0", "", "127.0.0.1"},                    // a zone
		{"", `for=192.0.2.60;proto=https, for="[2001:db8::1]:4711"`, "2001:db8::1"},
		{"", `For=192.0.2.60;proto=https`, "192.0.2.60"},
		{"", `proto=https;for=192.0.2.61`, "192.0.2.61"},
		{"", `for=unknown`, "127.0.0.1"},
		{"", `for="_hidden", for=10.0.0.1`, "10.0.0.1"}, // a trusted proxy that could not name its client
		{"192.0.2.9", `for=192.0.2.60`, "192.0.2.9"},    // X-Forwarded-For first
	} {
		r := &request{forwardedFor: []byte(tc.xff), forwarded: []byte(tc.fwd)}
		if got := w.forwardedClient(r, peer); got != netip.MustParseAddr(tc.want) {
			t.Errorf("X-Forwarded-For %q, Forwarded %q: %v, want %s", tc.xff, tc.fwd, got, tc.want)
		}
	}
}

// FuzzForwardedClient: any header gives the peer or a valid address
// without a zone, never a panic.
func FuzzForwardedClient(f *testing.F) {
	f.Add([]byte("203.0.113.9, 192.0.2.7, 10.0.0.1"), []byte(`for="[2001:db8::1]:4711";proto=https`))
	f.Add([]byte(""), []byte(`for=192.0.2.60, for=unknown`))
	w := trustingWorker("10.0.0.0/8")
	f.Fuzz(func(t *testing.T, xff, fwd []byte) {
		r := &request{forwardedFor: xff, forwarded: fwd}
		got := w.forwardedClient(r, peer)
		if !got.IsValid() || got.Zone() != "" || got.Is4In6() {
			t.Fatalf("%v from %q %q", got, xff, fwd)
		}
	})
}

func TestForwardedClientAllocatesNothing(t *testing.T) {
	w := trustingWorker("10.0.0.0/8")
	r := &request{forwardedFor: []byte("203.0.113.9, [2001:db8::1]:4711, 10.0.0.1"), forwarded: []byte(`for=192.0.2.60`)}
	if n := testing.AllocsPerRun(1000, func() { w.forwardedClient(r, peer) }); n != 0 {
		t.Errorf("%.1f allocations", n)
	}
}

// From a trusted proxy, max_conns_per_ip counts the address its first
// request names; from another peer the header is ignored.
func TestTrustedProxiesPerIPCap(t *testing.T) {
	ping := func(h *harness, xff string) []byte {
		c := h.dialRaw()
		c.write([]byte("GET /ping HTTP/1.1\r\nX-Forwarded-For: " + xff + "\r\n\r\n"))
		return c.readN(min(len(h.w.pong), len(errPerIP.resp)))
	}
	h := startWorker(t, func(o *config.Options) { o.Server.MaxConnsPerIP, o.Server.TrustedProxies = 2, []string{"127.0.0.0/8"} })
	for _, xff := range []string{"203.0.113.1, 192.0.2.7", "192.0.2.7", "198.51.100.1", "198.51.100.1"} {
		if got := ping(h, xff); !bytes.Equal(got, h.w.pong[:len(got)]) {
			t.Errorf("%s under its cap: got %q", xff, got)
		}
	}
	if got := ping(h, "192.0.2.7"); !bytes.Equal(got, errPerIP.resp[:len(got)]) {
		t.Errorf("a third from 192.0.2.7: got %q", got)
	}
	h.countsWhere(func(c ipc.Counts) bool { return c.PerIPRefused == 1 })

	u := startWorker(t, func(o *config.Options) { o.Server.MaxConnsPerIP, o.Server.TrustedProxies = 2, []string{"10.0.0.0/8"} })
	ping(u, "192.0.2.1")
	ping(u, "192.0.2.2")
	if got := ping(u, "192.0.2.3"); !bytes.Equal(got, errPerIP.resp[:len(got)]) {
		t.Errorf("from an untrusted peer the header counts: got %q", got)
	}
}
