package worker

import (
	"bytes"
	"strings"
	"testing"

	"github.com/gobwas/ws"
	"github.com/megacomet/megacomet/ipc"
)

// A cursor past every id the server can issue (ids are below 2^53) is a
// 400 on every transport, from since= or Last-Event-ID, and a WebSocket
// {"since":N} command past it closes with 1008: 2^64-1 used to be taken,
// and cursor+1 wrapped to 0. The largest id is still a cursor.
func TestSinceBeyondAnyID(t *testing.T) {
	h := startWorker(t, noHeartbeat)
	const max64, past = "18446744073709551615", "9007199254740992" // 2^64-1, 2^53
	for _, req := range []string{
		"GET /sse/a?since=" + max64 + " HTTP/1.1\r\n\r\n",
		"GET /sse/a HTTP/1.1\r\nLast-Event-ID: " + max64 + "\r\n\r\n",
		"GET /sse/a?since=5 HTTP/1.1\r\nLast-Event-ID: " + past + "\r\n\r\n",
		"GET /stream/a?since=" + past + " HTTP/1.1\r\n\r\n",
		"GET /lp/a?since=" + max64 + " HTTP/1.1\r\n\r\n",
		"GET /a.js?since=" + max64 + "&callback=cb HTTP/1.1\r\n\r\n",
		wsRequest("/ws/a?since="+max64, ""),
	} {
		c := h.dialRaw()
		c.write([]byte(req))
		if got := c.readAll(); !bytes.Equal(got, errSinceRange.resp) {
			t.Errorf("%q: got %q, want %q", req, got, errSinceRange.resp)
		}
	}
	c := h.dialRaw()
	c.write([]byte("GET /stream/a?since=9007199254740991 HTTP/1.1\r\n\r\n"))
	if head := c.readHeadOnly(); !strings.HasPrefix(head, "HTTP/1.1 200 ") || !strings.Contains(head, "\r\nX-Megacomet-Cursor: 9007199254740991") {
		t.Errorf("since=2^53-1: %q", head)
	}

	wc := h.openWS("/ws/b")
	wc.write(text(`{"since":` + max64 + `}`))
	if reason := wc.expectClose(ws.StatusPolicyViolation); !strings.Contains(reason, "2^53") {
		t.Errorf("closed with %q", reason)
	}
	h.countsWhere(func(c ipc.Counts) bool { return c.BadRequests >= 8 })
}
