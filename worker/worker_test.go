package worker

import (
	"bytes"
	"strings"
	"testing"

	"github.com/megacomet/megacomet/config"
	"github.com/megacomet/megacomet/ipc"
)

var pingReq = []byte("GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")

func TestPingKeepAliveAndPipelining(t *testing.T) {
	h := startWorker(t, nil)
	c := h.dialRaw()
	c.write(pingReq)
	if got := c.readN(len(h.w.pong)); !bytes.Equal(got, h.w.pong) {
		t.Fatalf("got %q", got)
	}
	// three pipelined requests in one write, the last one closing
	c.write([]byte(string(pingReq) + string(pingReq) + "HEAD /ping HTTP/1.1\r\nConnection: close\r\n\r\n"))
	want := string(h.w.pong) + string(h.w.pong) + string(h.w.pongHead)
	if got := string(c.readAll()); got != want {
		t.Fatalf("pipelined: got %q want %q", got, want)
	}
}

func TestRequestSplitIntoSingleBytes(t *testing.T) {
	h := startWorker(t, nil)
	c := h.dialRaw()
	for _, b := range []byte("GET /ping HTTP/1.1\r\nConnection: close\r\n\r\n") {
		c.write([]byte{b})
	}
	if got := c.readAll(); !bytes.Equal(got, h.w.pong) {
		t.Fatalf("got %q", got)
	}
}

func TestRejectionsAreAnsweredAndCounted(t *testing.T) {
	h := startWorker(t, nil)
	for _, tc := range []struct {
		req  string
		want *httpError
	}{
		{"BREW /pot HTTP/1.1\r\n\r\n", errMethod},
		{"GET /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", errBody},
		{"GET /x HTTP/1.1\r\nX: " + strings.Repeat("a", 20000) + "\r\n\r\n", errTooLarge},
		{"GET /x HTTP/3\r\n\r\n", errVersion},
		// A bare CR inside a header value (RFC 9112 §2.2).
		{"GET /ping HTTP/1.1\r\nHost: x\r\nX-Note: a\rb\r\n\r\n", errBareCR},
	} {
		c := h.dialRaw()
		c.write([]byte(tc.req))
		if got := c.readAll(); !bytes.Equal(got, tc.want.resp) {
			t.Errorf("%.20q: got %q", tc.req, got)
		}
	}
	// BREW parses, then is refused: one request, five rejections
	h.countsWhere(func(c ipc.Counts) bool { return c.BadRequests == 5 && c.Requests == 1 })
}

func TestFullWorkerRefusesAtAccept(t *testing.T) {
	h := startWorker(t, func(o *config.Options) { o.Server.MaxConns = 2 })
	a, b := h.dialRaw(), h.dialRaw()
	a.write([]byte("GET /sse/a HTTP/1.1\r\n\r\n"))
	b.write([]byte("GET /sse/b HTTP/1.1\r\n\r\n"))
	h.countsWhere(func(c ipc.Counts) bool { return c.Conns == 2 })
	over := h.dialRaw()
	if got := over.readAll(); len(got) != 0 {
		t.Errorf("refused connection got %q", got)
	}
	h.countsWhere(func(c ipc.Counts) bool { return c.Refused == 1 && c.Conns == 2 })
}

// The event loop's request path must not allocate: a ping round trip
// through a real loop (raw-syscall client, which allocates nothing itself)
// costs zero heap allocations.
func TestPingRoundTripAllocatesNothing(t *testing.T) {
	h := startWorker(t, nil)
	c := h.dialRaw()
	ping := func() {
		c.write(pingReq)
		c.readN(len(h.w.pong))
	}
	ping() // first request learns evio's layout
	if n := testing.AllocsPerRun(2000, ping); n != 0 {
		t.Errorf("%.2f allocations per ping round trip", n)
	}
}
