//go:build linux

package megatest

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fake is a small comet server for the engine's tests: the four
// transports with megacomet's framing, a history for since=, a publish
// API, and hooks to misbehave. One goroutine per connection: it is a test.
type fake struct {
	t   *testing.T
	ln  net.Listener
	api *httptest.Server

	pubMu     sync.Mutex // one publish at a time, so ids go out in order
	mu        sync.Mutex
	seq       uint64
	clients   map[string]*fconn
	history   map[string][]fmsg
	requests  []string // request targets, in order
	connects  map[string]int
	dropEvery int           // skip every Nth delivery (but keep it in history)
	busyFirst int           // answer each id's first busyFirst connects 503 with Retry-After: 0, as a draining worker does
	slowHead  time.Duration // wait this long before answering a request, like a server that is behind
	delivered int

	// onOpen runs when a client connects (n: how many times this id has);
	// the default streams until the connection ends.
	onOpen func(c *fconn, n int)
}

type fmsg struct {
	id   uint64
	body string
}

type fconn struct {
	f      *fake
	id, tr string
	conn   net.Conn
	br     *bufio.Reader
	mu     sync.Mutex
	since  uint64
	wake   chan struct{} // long-poll: a message arrived
}

// newFake starts a fake server; set sets its hooks before it serves.
func newFake(t *testing.T, set ...func(f *fake)) *fake {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fake{t: t, ln: ln, clients: map[string]*fconn{}, history: map[string][]fmsg{}, connects: map[string]int{}}
	for _, fn := range set {
		fn(f)
	}
	f.api = httptest.NewServer(http.HandlerFunc(f.publish))
	t.Cleanup(func() {
		ln.Close()
		f.api.Close()
		f.mu.Lock()
		for _, c := range f.clients {
			c.conn.Close()
		}
		f.mu.Unlock()
	})
	go f.accept()
	return f
}

func (f *fake) port() int       { return f.ln.Addr().(*net.TCPAddr).Port }
func (f *fake) apiAddr() string { return strings.TrimPrefix(f.api.URL, "http://") }

func (f *fake) accept() {
	for {
		nc, err := f.ln.Accept()
		if err != nil {
			return
		}
		go f.serve(nc)
	}
}

func (f *fake) serve(nc net.Conn) {
	defer nc.Close()
	br := bufio.NewReader(nc)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	parts := strings.Split(strings.TrimPrefix(req.URL.Path, "/"), "/")
	if len(parts) != 2 {
		io.WriteString(nc, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
		return
	}
	c := &fconn{f: f, tr: parts[0], id: parts[1], conn: nc, br: br, wake: make(chan struct{}, 1)}
	c.since, _ = strconv.ParseUint(req.URL.Query().Get("since"), 10, 64)
	f.mu.Lock()
	cursor := f.seq // megacomet's X-Megacomet-Cursor: where this client starts
	if req.URL.Query().Has("since") {
		cursor = c.since // the replay that follows brings it forward
	}
	f.requests = append(f.requests, req.URL.RequestURI())
	f.connects[c.id]++
	n := f.connects[c.id]
	f.clients[c.id] = c
	f.mu.Unlock()
	time.Sleep(f.slowHead)
	if n <= f.busyFirst {
		io.WriteString(nc, "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\nContent-Length: 6\r\nConnection: close\r\n\r\nretry\n")
		return
	}
	defer func() {
		f.mu.Lock()
		if f.clients[c.id] == c {
			delete(f.clients, c.id)
		}
		f.mu.Unlock()
	}()
	switch c.tr {
	case "sse":
		c.write(fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nX-Megacomet-Cursor: %d\r\n\r\nretry: 20\nid: %[1]d\n\n", cursor))
	case "stream":
		c.write(fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\nX-Megacomet-Cursor: %d\r\n\r\n", cursor))
	case "ws":
		acc := wsAccept([]byte(req.Header.Get("Sec-WebSocket-Key")))
		c.write(fmt.Sprintf("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\nX-Megacomet-Cursor: %d\r\n\r\n", acc, cursor))
	case "lp":
	default:
		return
	}
	if c.tr != "lp" {
		c.replay()
	}
	if f.onOpen != nil {
		f.onOpen(c, n)
		return
	}
	c.hold()
}

// hold keeps the connection until the client goes; long-polls loop.
func (c *fconn) hold() {
	if c.tr == "lp" {
		c.pollLoop(nil)
		return
	}
	io.Copy(io.Discard, c.br)
}

// pollLoop answers long-polls until the client goes; last, if set, is
// called with the poll count and may answer itself (returning true).
func (c *fconn) pollLoop(answer func(c *fconn, poll int) bool) {
	for poll := 1; ; poll++ {
		if poll > 1 {
			req, err := http.ReadRequest(c.br)
			if err != nil {
				return
			}
			c.f.mu.Lock()
			c.f.requests = append(c.f.requests, req.URL.RequestURI())
			c.f.mu.Unlock()
			c.since, _ = strconv.ParseUint(req.URL.Query().Get("since"), 10, 64)
		}
		if answer != nil && answer(c, poll) {
			continue
		}
		msgs, cursor := c.pendingCursor()
		if len(msgs) == 0 {
			select {
			case <-c.wake:
			case <-time.After(100 * time.Millisecond):
			}
			msgs, cursor = c.pendingCursor()
		}
		c.answerCursor(msgs, cursor, false)
	}
}

// pending is what the client has not seen, and the cursor after it.
func (c *fconn) pending() []fmsg {
	msgs, _ := c.pendingCursor()
	return msgs
}

func (c *fconn) pendingCursor() ([]fmsg, uint64) {
	c.f.mu.Lock()
	defer c.f.mu.Unlock()
	var out []fmsg
	for _, m := range c.f.history[c.id] {
		if m.id > c.since {
			out = append(out, m)
		}
	}
	return out, max(c.since, c.f.seq)
}

func (c *fconn) answer(msgs []fmsg, close bool) {
	_, cursor := c.pendingCursor()
	c.answerCursor(msgs, cursor, close)
}

func (c *fconn) answerCursor(msgs []fmsg, cursor uint64, close bool) {
	body := "["
	for i, m := range msgs {
		if i > 0 {
			body += ","
		}
		body += m.body
	}
	body += "]"
	hdr := ""
	if close {
		hdr = "Connection: close\r\n"
	}
	c.write(fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Megacomet-Cursor: %d\r\n%sContent-Length: %d\r\n\r\n%s", cursor, hdr, len(body), body))
}

func (c *fconn) replay() {
	if c.since == 0 {
		return
	}
	for _, m := range c.pending() {
		c.send(m)
	}
}

func (c *fconn) write(s string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.conn.Write([]byte(s))
}

// send renders one message for the transport.
func (c *fconn) send(m fmsg) {
	switch c.tr {
	case "sse":
		c.write(fmt.Sprintf("id: %d\ndata: %s\n\n", m.id, m.body))
	case "stream":
		c.write(fmt.Sprintf("%x\r\n%s\n\r\n", len(m.body)+1, m.body))
	case "ws":
		c.write(string(wsServerFrame(wsText, []byte(m.body))))
	case "lp":
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
}

func (c *fconn) heartbeat() {
	switch c.tr {
	case "sse":
		c.write(":\n\n")
	case "stream":
		c.write("1\r\n\n\r\n")
	case "ws":
		c.write(string(wsServerFrame(wsPing, []byte("hb"))))
	}
}

// every calls fn every d (a ticker: a late call does not shift the ones
// after it) until the client goes or the fake closes.
func (c *fconn) every(d time.Duration, fn func()) {
	gone := make(chan struct{})
	go func() {
		c.hold()
		close(gone)
	}()
	tick := time.NewTicker(d)
	defer tick.Stop()
	for {
		select {
		case <-gone:
			return
		case <-tick.C:
			fn()
		}
	}
}

// announce is megacomet's hand-over notice; the caller then closes.
func (c *fconn) announce() {
	switch c.tr {
	case "sse":
		c.write("retry: 10\n: reconnect\n\n")
	case "stream":
		c.write("0\r\n\r\n")
	case "ws":
		c.write(string(wsServerFrame(wsClose, []byte{0x03, 0xf4}))) // 1012
	case "lp":
		c.answer(nil, true)
	}
}

func wsServerFrame(op wsOp, p []byte) []byte {
	b := []byte{0x80 | byte(op)}
	switch {
	case len(p) < 126:
		b = append(b, byte(len(p)))
	case len(p) <= 0xffff:
		b = append(b, 126, byte(len(p)>>8), byte(len(p)))
	default:
		b = append(b, 127)
		b = binary.BigEndian.AppendUint64(b, uint64(len(p)))
	}
	return append(b, p...)
}

// publish is POST /publish: the subset of the API megatest uses.
func (f *fake) publish(w http.ResponseWriter, r *http.Request) {
	raw, _ := io.ReadAll(r.Body)
	var reqs []map[string]json.RawMessage
	batch := bytes.HasPrefix(bytes.TrimSpace(raw), []byte("["))
	if batch {
		json.Unmarshal(raw, &reqs)
	} else {
		var one map[string]json.RawMessage
		json.Unmarshal(raw, &one)
		reqs = append(reqs, one)
	}
	var ids []string
	f.pubMu.Lock()
	defer f.pubMu.Unlock()
	for _, rq := range reqs {
		var to []string
		if _, ok := rq["broadcast"]; ok {
			f.mu.Lock()
			for id := range f.clients {
				to = append(to, id)
			}
			f.mu.Unlock()
		} else {
			var one string
			json.Unmarshal(rq["to"], &one)
			to = append(to, one)
		}
		f.mu.Lock()
		f.seq++
		id := f.seq
		f.mu.Unlock()
		for _, cid := range to {
			f.deliver(cid, fmsg{id, fmt.Sprintf(`{"id":%d,"data":%s}`, id, rq["data"])})
		}
		ids = append(ids, fmt.Sprintf(`{"id":%d}`, id))
	}
	if batch {
		fmt.Fprintf(w, "[%s]", strings.Join(ids, ","))
	} else {
		io.WriteString(w, ids[0])
	}
}

func (f *fake) deliver(cid string, m fmsg) {
	f.mu.Lock()
	f.delivered++
	drop := f.dropEvery > 0 && f.delivered%f.dropEvery == 0
	if !drop {
		f.history[cid] = append(f.history[cid], m)
	}
	c := f.clients[cid]
	f.mu.Unlock()
	if c != nil && !drop {
		c.send(m)
	}
}

func (f *fake) requestList() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.requests...)
}

// runMegatest runs the parent role in this process against f and returns
// the summary and the output.
func runMegatest(t *testing.T, f *fake, args string) (Summary, string) {
	t.Helper()
	o, err := parseArgs(append([]string{"a", "127.0.0.1", "-port", fmt.Sprint(f.port()), "-api", f.apiAddr(), "-q"}, strings.Fields(args)...), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	done := make(chan int)
	go func() { done <- run(o, &out) }()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d\n%s", code, out.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatal("megatest did not finish")
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var s Summary
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &s); err != nil {
		t.Fatalf("summary: %v\n%s", err, out.String())
	}
	return s, out.String()
}
