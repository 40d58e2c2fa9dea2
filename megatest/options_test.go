package megatest

import (
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseArgs(t *testing.T) {
	o, err := parseArgs(strings.Fields("a 127.0.0.1 -n 30000 -hold 5s -transport lp -pub 10"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.Letter != "a" || o.Host != "127.0.0.1" || o.N != 30000 || o.Hold != 5*time.Second || o.Transport != "lp" || o.Pub != 10 {
		t.Fatalf("%+v", o)
	}
	if o.API != "127.0.0.1:9000" || o.Port != 8000 || o.Rate != 10000 || o.Report != 10*time.Second || o.Heartbeat != 15*time.Second {
		t.Fatalf("defaults: %+v", o)
	}
	// flags first, positionals between flags
	o, err = parseArgs(strings.Fields("-n 5 b -port 9 ::1"), io.Discard)
	if err != nil || o.Letter != "b" || o.Host != "::1" || o.N != 5 || o.Port != 9 || o.API != "[::1]:9000" {
		t.Fatalf("%+v %v", o, err)
	}
	for _, bad := range []string{"a", "a b c", "a/b 127.0.0.1", "a 127.0.0.1 -n 0", "a 127.0.0.1 -transport x", "a h -port 70000", "a h -report 0s", "a h -channels -1", "a h -channels 10001", "a h -heartbeat -1s", "a h -heartbeat 500us"} {
		if _, err := parseArgs(strings.Fields(bad), io.Discard); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestChildArgsRoundTrip(t *testing.T) {
	o, _ := parseArgs(strings.Fields("c 10.0.0.5 -port 8001 -transport stream -api 10.0.0.5:9001 -grace 2s -channels 7 -heartbeat 7s"), io.Discard)
	o.Run = "abc"
	c, err := parseArgs(o.childArgs(100, 50, 250, 1.5, "10.1.0.1-10.1.0.4"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Child || c.First != 100 || c.N != 50 || c.Rate != 250 || c.Pub != 1.5 || c.Src != "10.1.0.1-10.1.0.4" ||
		c.Port != 8001 || c.Transport != "stream" || c.API != "10.0.0.5:9001" || c.Run != "abc" || c.Grace != 2*time.Second || c.Letter != "c" || c.Channels != 7 || c.Heartbeat != 7*time.Second {
		t.Fatalf("%+v", c)
	}
}

func TestSources(t *testing.T) {
	got, err := parseSources("127.0.1.1-127.0.1.3, 10.0.0.9,127.0.1.254-127.0.2.1")
	if err != nil {
		t.Fatal(err)
	}
	if s := formatSources(got); s != "127.0.1.1-127.0.1.3,10.0.0.9,127.0.1.254-127.0.2.1" {
		t.Fatalf("format %s (%v)", s, got)
	}
	if len(got) != 8 {
		t.Fatalf("%d addresses", len(got))
	}
	for _, bad := range []string{"", "x", "10.0.0.5-10.0.0.1", "10.0.0.1-::1", "10.0.0.0-10.2.0.0"} {
		if _, err := parseSources(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	lo := netip.MustParseAddr("127.0.0.1")
	if s := autoSources(lo, 1000); s != nil {
		t.Errorf("1000 connections got sources %v", s)
	}
	s := autoSources(lo, 1_000_000)
	if len(s) != 50 || s[0].String() != "127.0.1.1" || !s[0].IsLoopback() {
		t.Errorf("a million: %d sources from %v", len(s), s[0])
	}
	if autoSources(netip.MustParseAddr("10.0.0.1"), 1_000_000) != nil {
		t.Error("sources picked for a remote host")
	}
}

// HOST may name several servers, each with its own port or -port's; the
// connections go round-robin over them, and to the next after a failure.
func TestSeveralHosts(t *testing.T) {
	got, err := resolveTargets("127.0.0.1:8001, 127.0.0.2,[::1]:9", 8000)
	if err == nil {
		t.Fatalf("IPv4 and IPv6 together: %v, want an error", got)
	}
	got, err = resolveTargets("127.0.0.1:8001,127.0.0.2", 8000)
	if err != nil || len(got) != 2 || got[0].String() != "127.0.0.1:8001" || got[1].String() != "127.0.0.2:8000" {
		t.Fatalf("got %v, %v", got, err)
	}
	if _, err := resolveTargets("127.0.0.1:x", 8000); err == nil {
		t.Error("a bad port was accepted")
	}
	o := defaultOptions()
	o.Host, o.Port = "127.0.0.1:8001,127.0.0.2", 8000
	if o.targets() != "127.0.0.1:8001,127.0.0.2:8000" || o.target() != "127.0.0.1:8001" || o.firstHost() != "127.0.0.1" {
		t.Errorf("targets %q, target %q, first host %q", o.targets(), o.target(), o.firstHost())
	}
	e := &engine{dsts: make([]unix.Sockaddr, 2)}
	for i := range e.dsts {
		e.dsts[i] = &unix.SockaddrInet4{Port: i}
	}
	c := &conn{}
	if p := e.target(0, c).(*unix.SockaddrInet4).Port; p != 0 {
		t.Errorf("connection 0 goes to host %d", p)
	}
	if p := e.target(1, c).(*unix.SockaddrInet4).Port; p != 1 {
		t.Errorf("connection 1 goes to host %d", p)
	}
	c.fails = 1
	if p := e.target(0, c).(*unix.SockaddrInet4).Port; p != 1 {
		t.Errorf("after a failure connection 0 goes to host %d, want the next", p)
	}
}
