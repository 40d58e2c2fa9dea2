package test

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/megacomet/megacomet/internal/testutil"
	"github.com/megacomet/megacomet/manager"
)

// keepaliveTimer reports whether the kernel runs a keepalive timer on the
// server's side of c (/proc/net/tcp: the socket whose local end is c's
// remote one, "tr" 2).
func keepaliveTimer(t *testing.T, c net.Conn) bool {
	t.Helper()
	local := c.RemoteAddr().(*net.TCPAddr) // the server's end
	remote := c.LocalAddr().(*net.TCPAddr)
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := fmt.Sprintf(":%04X", local.Port)
	wantRem := fmt.Sprintf(":%04X", remote.Port)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 6 || !strings.HasSuffix(fs[1], want) || !strings.HasSuffix(fs[2], wantRem) {
			continue
		}
		tr, _, _ := strings.Cut(fs[5], ":")
		n, _ := strconv.ParseUint(tr, 16, 8)
		return n == 2
	}
	t.Fatalf("the server's socket for %s is not in /proc/net/tcp", remote)
	return false
}

// TCP keepalive is on for every client socket by default (so a peer that
// vanished without a FIN is noticed even when nothing is written to it),
// and off with tcp_keepalive = "0s".
func TestTCPKeepalive(t *testing.T) {
	for _, tc := range []struct {
		cfg  string
		want bool
	}{{"", true}, {`tcp_keepalive = "0s"`, false}} {
		s := testutil.Start(t, map[string]string{"server": tc.cfg})
		c := hold(t, s.Listen, "ka")
		c.SetReadDeadline(time.Now().Add(time.Minute))
		if line, err := bufio.NewReader(c).ReadString('\n'); !strings.HasPrefix(line, "HTTP/1.1 200") {
			t.Fatalf("%q %v", line, err)
		}
		// Another timer (a retransmission) may show while the answer is
		// in flight: the keepalive one is there once it is acknowledged.
		got := false
		for i := 0; i < 100 && !got; i++ {
			if got = keepaliveTimer(t, c); !got {
				time.Sleep(10 * time.Millisecond)
			}
		}
		if got != tc.want {
			t.Errorf("server %q: keepalive timer %v, want %v", tc.cfg, got, tc.want)
		}
		s.Stop()
	}
}

// server.max_conns_per_ip: past it an address gets 429 with one line and
// a close; another address is not affected, and a closed connection frees
// its place.
func TestMaxConnsPerIP(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 1\nmax_conns_per_ip = 20"})
	var held []net.Conn
	for i := range 20 {
		held = append(held, hold(t, s.Listen, fmt.Sprintf("ip%d", i)))
	}
	status, body := rawRequest(t, s.Listen, "GET /sse/one-more HTTP/1.1\r\n\r\n")
	if status != 429 || !strings.Contains(body, "too many connections from your address") {
		t.Errorf("the 21st connection from 127.0.0.1: %d %q, want 429", status, body)
	}
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	other, err := d.Dial("tcp", s.Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	fmt.Fprintf(other, "GET /ping HTTP/1.1\r\n\r\n")
	if status, body, err := answerOf(other, time.Minute); status != 200 {
		t.Errorf("another address: %d %q %v, want 200", status, body, err)
	}
	held[0].Close()
	testutil.CheckFor(t, time.Minute, func() error {
		if status, body := rawRequest(t, s.Listen, "GET /ping HTTP/1.1\r\n\r\n"); status != 200 {
			return fmt.Errorf("after one closed: %d %q", status, body)
		}
		return nil
	})
	s.WaitStats(t, 30*time.Second, func(st manager.Stats) error {
		if n := workerSum(st, func(w manager.WorkerStats) uint64 { return w.PerIPRefused }); n == 0 {
			return fmt.Errorf("per_ip_refused not counted")
		}
		return nil
	})
}
