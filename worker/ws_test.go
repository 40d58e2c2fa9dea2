package worker

import (
	"bytes"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/megacomet/megacomet/config"
	"github.com/megacomet/megacomet/internal/check"
	"github.com/megacomet/megacomet/ipc"
)

// WebSocket tests on the in-process worker loop, with raw-syscall clients
// whose frames gobwas/ws writes and reads.

// noHeartbeat keeps pings out of tests about something else.
func noHeartbeat(o *config.Options) { o.Comet.Heartbeat = config.Duration(time.Hour) }

// wsClient reads server frames from a raw connection, keeping bytes read
// past the handshake.
type wsClient struct {
	*rawConn
	rest []byte
}

func (c *wsClient) Read(p []byte) (int, error) {
	if len(c.rest) > 0 {
		n := copy(p, c.rest)
		c.rest = c.rest[n:]
		return n, nil
	}
	n, err := syscall.Read(c.fd, p)
	for err == syscall.EINTR { // the runtime's preemption signals
		n, err = syscall.Read(c.fd, p)
	}
	switch {
	case err != nil:
		return 0, err
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// next reads one server frame; err is io.EOF when the server has closed.
func (c *wsClient) next() (ws.Header, []byte, error) {
	h, err := ws.ReadHeader(c)
	if err != nil {
		return h, nil, err
	}
	if h.Masked || h.Rsv != 0 || !h.Fin {
		return h, nil, fmt.Errorf("server frame %+v: masked, RSV or fragmented", h)
	}
	p := make([]byte, h.Length)
	_, err = io.ReadFull(c, p)
	return h, p, err
}

func (c *wsClient) mustNext() (ws.Header, []byte) {
	c.t.Helper()
	h, p, err := c.next()
	if err != nil {
		c.t.Fatalf("reading a frame: %v", err)
	}
	return h, p
}

// expectClose reads the server's close frame with code, then the end of
// the connection.
func (c *wsClient) expectClose(code ws.StatusCode) string {
	c.t.Helper()
	h, p := c.mustNext()
	got, reason := ws.ParseCloseFrameData(p)
	if h.OpCode != ws.OpClose || got != code {
		c.t.Fatalf("got %v %q, want close %d", h.OpCode, p, code)
	}
	if _, _, err := c.next(); err != io.EOF {
		c.t.Fatalf("after the close frame: %v, want EOF", err)
	}
	return reason
}

// alive proves the connection still works, and that nothing but
// heartbeats was sent before the probe's pong.
func (c *wsClient) alive() {
	c.t.Helper()
	c.write(clientFrame(true, 0, ws.OpPing, []byte("alive?")))
	h, p := c.mustNext()
	for h.OpCode == ws.OpPing {
		h, p = c.mustNext()
	}
	if h.OpCode != ws.OpPong || string(p) != "alive?" {
		c.t.Fatalf("probe: got %v %q, want pong \"alive?\"", h.OpCode, p)
	}
}

// rfcKey and rfcAccept are the example of RFC 6455 §1.3.
const (
	rfcKey    = "dGhlIHNhbXBsZSBub25jZQ=="
	rfcAccept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
)

func wsRequest(path, extra string) string {
	return "GET " + path + " HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + rfcKey + "\r\nSec-WebSocket-Version: 13\r\n" + extra + "\r\n"
}

// openWS connects to path and completes the handshake.
func (h *harness) openWS(path string) *wsClient {
	h.t.Helper()
	c := &wsClient{rawConn: h.dialRaw()}
	c.write([]byte(wsRequest(path, "")))
	head := c.readHead()
	if !strings.HasPrefix(head, "HTTP/1.1 101 ") || !strings.Contains(head, "\r\nSec-WebSocket-Accept: "+rfcAccept+"\r\n") {
		h.t.Fatalf("handshake answer %q", head)
	}
	return c
}

// readHead reads an HTTP answer head, keeping what follows it.
func (c *wsClient) readHead() string {
	c.t.Helper()
	got := 0
	for {
		n, err := syscall.Read(c.fd, c.buf[got:])
		if err != nil || n == 0 {
			c.t.Fatalf("read: %v after %q", err, c.buf[:got])
		}
		got += n
		if i := bytes.Index(c.buf[:got], []byte("\r\n\r\n")); i >= 0 {
			c.rest = append([]byte(nil), c.buf[i+4:got]...)
			return string(c.buf[:i+4])
		}
	}
}

func TestWSHandshake(t *testing.T) {
	h := startWorker(t, func(o *config.Options) {
		noHeartbeat(o)
		o.Server.AllowedOrigins = []string{"https://app.example"}
	})
	// The accept value is computed independently of gobwas (§4.2.2).
	sum := sha1.Sum([]byte(rfcKey + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	if base64.StdEncoding.EncodeToString(sum[:]) != rfcAccept {
		t.Fatal("RFC example broken")
	}
	cases := []struct {
		name, req, want string
	}{
		{"plain", wsRequest("/ws/a?since=17", ""), "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + rfcAccept + "\r\nX-Megacomet-Cursor: 17\r\n\r\n"},
		{"our protocol chosen", wsRequest("/ws/a?since=5&channels=x,y", "Sec-WebSocket-Protocol: other, megacomet.v1\r\n"), "Sec-WebSocket-Protocol: megacomet.v1\r\n"},
		{"only other protocols: none claimed", wsRequest("/ws/a", "Sec-WebSocket-Protocol: chat, mqtt\r\n"), "Sec-WebSocket-Accept: " + rfcAccept + "\r\nX-Megacomet-Cursor: "},
		{"allowed origin", wsRequest("/ws/a", "Origin: https://app.example\r\n"), "HTTP/1.1 101 "},
		{"keep-alive, Upgrade", strings.Replace(wsRequest("/ws/a", ""), "Connection: Upgrade", "Connection: keep-alive, Upgrade", 1), "HTTP/1.1 101 "},
		{"other origin", wsRequest("/ws/a", "Origin: https://evil.example\r\n"), "HTTP/1.1 403 "},
		{"bad id", wsRequest("/ws/a.b", ""), "HTTP/1.1 400 "},
		{"bad since", wsRequest("/ws/a?since=x", ""), "HTTP/1.1 400 "},
		{"version 8", strings.Replace(wsRequest("/ws/a", ""), "Version: 13", "Version: 8", 1), "HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\n"},
		{"no key", strings.Replace(wsRequest("/ws/a", ""), "Sec-WebSocket-Key: "+rfcKey+"\r\n", "", 1), "HTTP/1.1 400 "},
		{"short key", strings.Replace(wsRequest("/ws/a", ""), rfcKey, "abc", 1), "HTTP/1.1 400 "},
		{"no upgrade", strings.Replace(wsRequest("/ws/a", ""), "Upgrade: websocket\r\n", "", 1), "HTTP/1.1 400 "},
		{"no Connection: Upgrade", strings.Replace(wsRequest("/ws/a", ""), "Connection: Upgrade", "Connection: keep-alive", 1), "HTTP/1.1 400 "},
		{"HTTP/1.0", strings.Replace(wsRequest("/ws/a", ""), "HTTP/1.1", "HTTP/1.0", 1), "HTTP/1.1 505 "},
		{"HEAD", strings.Replace(wsRequest("/ws/a", ""), "GET", "HEAD", 1), "HTTP/1.1 405 "},
		{"POST", strings.Replace(wsRequest("/ws/a", ""), "GET", "POST", 1), "HTTP/1.1 405 "},
	}
	for _, c := range cases {
		cl := &wsClient{rawConn: h.dialRaw()}
		cl.write([]byte(c.req))
		if head := cl.readHead(); !strings.Contains(head, c.want) {
			t.Errorf("%s: answer %q, want %q in it", c.name, head, c.want)
		} else if !strings.HasPrefix(head, "HTTP/1.1 101 ") && !strings.Contains(head, "Connection: close\r\n") {
			t.Errorf("%s: rejection %q without Connection: close", c.name, head)
		}
	}
}

// Without since, the cursor is "now": a client that reconnects with it
// before its first message misses nothing.
func TestWSCursorHeader(t *testing.T) {
	h := startWorker(t, noHeartbeat)
	before := uint64(time.Now().UnixMicro()) - 1
	c := &wsClient{rawConn: h.dialRaw()}
	c.write([]byte(wsRequest("/ws/a", "")))
	head := c.readHead()
	_, v, _ := strings.Cut(head, "\r\nX-Megacomet-Cursor: ")
	v, _, _ = strings.Cut(v, "\r\n")
	if n, err := strconv.ParseUint(v, 10, 64); err != nil || n < before || n > uint64(time.Now().UnixMicro()) {
		t.Errorf("cursor %q, want the connection time %d", v, before)
	}
}

// With cursor=1 the first frame tells a browser (which cannot read the
// header) the cursor it starts from.
func TestWSCursorFrame(t *testing.T) {
	h := startWorker(t, noHeartbeat)
	c := &wsClient{rawConn: h.dialRaw()}
	c.write([]byte(wsRequest("/ws/a?since=42&cursor=1", "")))
	c.readHead()
	if hd, p := c.mustNext(); hd.OpCode != ws.OpText || string(p) != `{"cursor":42}` {
		t.Errorf("first frame %v %q", hd.OpCode, p)
	}
}

// Frames sent right behind the handshake, in the same segment, are read.
func TestWSFramesWithTheHandshake(t *testing.T) {
	h := startWorker(t, noHeartbeat)
	c := &wsClient{rawConn: h.dialRaw()}
	c.write(append([]byte(wsRequest("/ws/early", "")), clientFrame(true, 0, ws.OpPing, []byte("early"))...))
	if head := c.readHead(); !strings.HasPrefix(head, "HTTP/1.1 101 ") {
		t.Fatalf("answer %q", head)
	}
	if hd, p := c.mustNext(); hd.OpCode != ws.OpPong || string(p) != "early" {
		t.Fatalf("got %v %q", hd.OpCode, p)
	}
	// ... and so is a head split across reads, with a frame behind it.
	c2 := &wsClient{rawConn: h.dialRaw()}
	req := append([]byte(wsRequest("/ws/early", "")), clientFrame(true, 0, ws.OpPing, []byte("split"))...)
	c2.write(req[:20])
	time.Sleep(20 * time.Millisecond) // let the worker see the first part alone
	c2.write(req[20 : len(req)-3])
	time.Sleep(20 * time.Millisecond)
	c2.write(req[len(req)-3:])
	c2.readHead()
	if hd, p := c2.mustNext(); hd.OpCode != ws.OpPong || string(p) != "split" {
		t.Fatalf("got %v %q", hd.OpCode, p)
	}
}

func TestWSDelivery(t *testing.T) {
	h := startWorker(t, noHeartbeat)
	c := h.openWS("/ws/a?channels=news")
	h.waitJoins(1)
	id := nowID()
	h.deliverTo("a", id, []byte(`{"id":1,"data":"é"}`))
	h.send(appendDeliverChannel(nil, "news", id+1, []byte(`{"id":2,"channel":"news","data":1}`)))
	h.deliverTo("a", id, []byte(`{"id":1,"data":"again"}`)) // not twice
	h.deliverTo("a", id+2, []byte("{\"id\":3,\"data\":\"\xff\"}"))
	for _, want := range []string{`{"id":1,"data":"é"}`, `{"id":2,"channel":"news","data":1}`, "{\"id\":3,\"data\":\"\uFFFD\"}"} {
		hd, p := c.mustNext()
		if hd.OpCode != ws.OpText || string(p) != want {
			t.Errorf("got %v %q, want text %q", hd.OpCode, p, want)
		}
	}
	c.alive()
}

func appendDeliverChannel(dst []byte, ch string, msgID uint64, body []byte) []byte {
	dst, start := ipc.Begin(dst, ipc.TypeDeliver)
	dst = ipc.AppendMsgHead(dst, msgID, ipc.KindChannel, ch)
	return ipc.End(ipc.AppendBytes(dst, body), start)
}

// The path from a Deliver frame to a WebSocket client allocates nothing.
func TestWSDeliverAllocatesNothing(t *testing.T) {
	h := startWorker(t, noHeartbeat)
	c := h.openWS("/ws/a")
	h.waitJoins(1)
	body := []byte(`{"id":0,"data":"x"}`)
	checkDeliverAllocs(t, h, c.rawConn, body, len(appendWSText(nil, body)))
}

// Client frames - ping with payload, pong, a command that changes nothing,
// a fragmented ping-interleaved message - allocate nothing in the worker.
func TestWSClientFramesAllocateNothing(t *testing.T) {
	h := startWorker(t, noHeartbeat)
	c := h.openWS("/ws/a?channels=news")
	h.waitJoins(1)
	var in []byte
	in = append(in, clientFrame(true, 0, ws.OpPong, nil)...)
	in = append(in, text(`{"subscribe":"news"}`)...)
	in = append(in, text(` {"unsubscribe":"elsewhere"}`)...)
	in = append(in, clientFrame(true, 0, ws.OpPing, []byte("0123456789"))...)
	want := len(appendWSHeader(nil, ws.OpPong, 10)) + 10
	roundTrip := func() {
		c.write(in)
		c.readN(want) // the pong to the ping: the rest was read too
	}
	roundTrip()
	// Pings are rate-limited (32 at once, then 10 a second): 20 rounds.
	if n := testing.AllocsPerRun(20, roundTrip); n != 0 {
		t.Errorf("%.2f allocations per round of client frames", n)
	}
	c.alive()
}

// A {"since":N} command re-joins with that cursor: a message the client
// already has is delivered again once it asks for everything after N.
func TestWSCommands(t *testing.T) {
	h := startWorker(t, noHeartbeat)
	c := h.openWS("/ws/cmd")
	h.waitJoins(1)
	id := nowID()
	h.deliverTo("cmd", id, []byte(`"first"`))
	if _, p := c.mustNext(); string(p) != `"first"` {
		t.Fatalf("got %q", p)
	}
	c.write(text(fmt.Sprintf(`{"since":%d}`, id-1)))
	h.waitJoins(2)
	h.deliverTo("cmd", id, []byte(`"first"`)) // as the manager's replay would
	if _, p := c.mustNext(); string(p) != `"first"` {
		t.Fatalf("after since: got %q", p)
	}

	c.write(text(`{"subscribe":"news"}`))
	h.waitJoins(3)
	h.send(appendDeliverChannel(nil, "news", id+1, []byte(`"news"`)))
	if _, p := c.mustNext(); string(p) != `"news"` {
		t.Fatalf("after subscribe: got %q", p)
	}
	c.write(text(`{"unsubscribe":"news"}`))
	h.waitJoins(4)
	h.send(appendDeliverChannel(nil, "news", id+2, []byte(`"not for us"`)))
	h.deliverTo("cmd", id+3, []byte(`"direct"`))
	if _, p := c.mustNext(); string(p) != `"direct"` {
		t.Fatalf("after unsubscribe: got %q", p)
	}
	// Seventeen channels is one too many.
	for i := 0; i < 16; i++ {
		c.write(text(fmt.Sprintf(`{"subscribe":"c%d"}`, i)))
	}
	c.alive()
	c.write(text(`{"subscribe":"c16"}`))
	if r := c.expectClose(ws.StatusPolicyViolation); !strings.Contains(r, "16") {
		t.Errorf("reason %q", r)
	}
}

// A client may send 32 commands that change its subscription at once, then
// 10 a second; one that keeps sending faster is closed with 1008 and says
// why. Another client is not affected.
func TestWSCommandRateLimit(t *testing.T) {
	h := startWorker(t, noHeartbeat)
	calm, busy := h.openWS("/ws/calm"), h.openWS("/ws/busy")
	h.waitJoins(2)
	for i := 0; i < wsCommandBurst/2; i++ { // the whole burst, as fast as it goes
		busy.write(text(`{"subscribe":"a"}`))
		busy.write(text(`{"unsubscribe":"a"}`))
	}
	busy.alive()
	calm.write(text(`{"subscribe":"a"}`))
	for i := 0; i < 2*wsCommandBurst; i++ {
		busy.write(text(`{"since":1}`))
	}
	if r := busy.expectClose(ws.StatusPolicyViolation); !strings.Contains(r, "too many commands") {
		t.Errorf("reason %q", r)
	}
	calm.alive()
}

// Pings go out every interval; a client that answers them stays, one that
// does not is closed once its ping is two intervals old.
func TestWSHeartbeat(t *testing.T) {
	const hb = 100 * time.Millisecond
	h := startWorker(t, func(o *config.Options) { o.Comet.Heartbeat = config.Duration(hb) })
	good, bad := h.openWS("/ws/good"), h.openWS("/ws/bad")
	h.waitJoins(2)
	var answered atomic.Int64
	errc, done := make(chan error, 1), make(chan struct{})
	// The good client's reader ends before its fd is closed (cleanups run
	// last first): a reader still writing a pong after the close would
	// write it into whatever socket next took that fd number - another
	// test's worker's IPC stream.
	t.Cleanup(func() { syscall.Shutdown(good.fd, syscall.SHUT_RDWR); <-done })
	go func() { // the good client answers every ping, however long they take
		defer close(done)
		for {
			hd, p, err := good.next()
			if err != nil {
				errc <- err // the test's end closes it
				return
			}
			if hd.OpCode != ws.OpPing {
				errc <- fmt.Errorf("good client got %v %q", hd.OpCode, p)
				return
			}
			good.write(clientFrame(true, 0, ws.OpPong, p))
			answered.Add(1)
		}
	}()
	var first time.Time
	for {
		hd, p := bad.mustNext()
		if hd.OpCode == ws.OpClose {
			if code, _ := ws.ParseCloseFrameData(p); code != ws.StatusProtocolError {
				t.Errorf("closed with %d", code)
			}
			break
		}
		if first.IsZero() {
			first = time.Now()
		}
	}
	// Never before two intervals; a loaded machine may only make it later.
	if d := time.Since(first); d < 2*hb-tickEvery {
		t.Errorf("closed %v after the first unanswered ping, before two intervals (%v)", d, 2*hb)
	}
	if _, _, err := bad.next(); err != io.EOF {
		t.Errorf("after the close frame: %v", err)
	}
	syscall.Shutdown(bad.fd, syscall.SHUT_WR) // the client's end of the close
	// The answering client outlives four more pings; the silent one is
	// counted as such, not as a bad request.
	after := answered.Load()
	check.For(t, 20*time.Second, func() error {
		select {
		case err := <-errc:
			return fmt.Errorf("good client: %v", err)
		default:
		}
		if n := answered.Load() - after; n < 4 {
			return fmt.Errorf("good client answered %d pings since the silent one was closed", n)
		}
		return nil
	})
	h.countsWhere(func(c ipc.Counts) bool {
		return c.Heartbeats >= 8 && c.Conns == 1 && c.SilentClosed == 1 && c.BadRequests == 0
	})
}

// A hand-over (stop, reload) is close 1012, then the connection ends.
func TestWSHandOff(t *testing.T) {
	h := startWorker(t, noHeartbeat)
	c := h.openWS("/ws/a")
	h.waitJoins(1)
	h.send(ipc.AppendFrame(nil, ipc.TypeStop, nil))
	if r := c.expectClose(wsStatusServiceRestart); r != "reconnect" {
		t.Errorf("reason %q", r)
	}
}

var opName = map[ws.OpCode]string{ws.OpText: "text", ws.OpBinary: "binary", ws.OpClose: "close", ws.OpPing: "ping", ws.OpPong: "pong"}

// wsCase is one Autobahn-style case: the bytes a client sends and the
// frames it must get back. closeCode != 0: the server then closes with it
// (after the frames in want) and ends the connection; otherwise the
// connection must still be open and answer a probe ping.
type wsCase struct {
	name      string
	send      [][]byte
	want      []string // "pong <payload>", "text <payload>"
	closeCode ws.StatusCode
}

func frames(fs ...[]byte) [][]byte { return fs }

func ping(p string) []byte { return clientFrame(true, 0, ws.OpPing, []byte(p)) }

func closeFrame(code ws.StatusCode, reason string) []byte {
	return clientFrame(true, 0, ws.OpClose, ws.NewCloseFrameBody(code, reason))
}

// padded is a valid command of exactly n bytes.
func padded(n int) []byte {
	cmd := `{"since":1}`
	return []byte(cmd[:len(cmd)-1] + strings.Repeat(" ", n-len(cmd)) + "}")
}

func rawClose(payload []byte) []byte { return clientFrame(true, 0, ws.OpClose, payload) }

// autobahnCases follow the sections of the Autobahn test suite that apply
// to a server that takes commands, not echoes: framing (1), ping/pong (2),
// reserved bits (3), opcodes (4), fragmentation (5), UTF-8 (6), close (7),
// limits (9), and our own commands.
func autobahnCases() []wsCase {
	bin125 := make([]byte, 125)
	for i := range bin125 {
		bin125[i] = byte(i * 7)
	}
	cases := []wsCase{
		// 1 framing: text sizes around the length encodings and the limit
		{name: "1.1.1 empty text", send: frames(text("")), closeCode: 1008},
		{name: "1.1.2 text 125", send: frames(clientFrame(true, 0, ws.OpText, padded(125)))},
		{name: "1.1.3 text 126", send: frames(clientFrame(true, 0, ws.OpText, padded(126)))},
		{name: "1.1.4 text 127", send: frames(clientFrame(true, 0, ws.OpText, padded(127)))},
		{name: "1.1.5 text 128", send: frames(clientFrame(true, 0, ws.OpText, padded(128)))},
		{name: "1.1.6 text 65535", send: frames(clientFrame(true, 0, ws.OpText, padded(65535)))},
		{name: "1.1.7 text 65536 (the limit)", send: frames(clientFrame(true, 0, ws.OpText, padded(65536)))},
		{name: "1.2.1 binary empty", send: frames(clientFrame(true, 0, ws.OpBinary, nil)), closeCode: 1003},
		{name: "1.2.2 binary 125", send: frames(clientFrame(true, 0, ws.OpBinary, bin125)), closeCode: 1003},
		// 2 ping/pong
		{name: "2.1 ping empty", send: frames(ping("")), want: []string{"pong "}},
		{name: "2.2 ping text", send: frames(ping("Hello, world!")), want: []string{"pong Hello, world!"}},
		{name: "2.3 ping binary", send: frames(clientFrame(true, 0, ws.OpPing, []byte{0, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0, 0xff})), want: []string{"pong \x00\xff\xfe\xfd\xfc\xfb\x00\xff"}},
		{name: "2.4 ping 125", send: frames(clientFrame(true, 0, ws.OpPing, bin125)), want: []string{"pong " + string(bin125)}},
		{name: "2.5 ping 126", send: frames(clientFrame(true, 0, ws.OpPing, make([]byte, 126))), closeCode: 1002},
		{name: "2.7 unsolicited pong", send: frames(clientFrame(true, 0, ws.OpPong, nil))},
		{name: "2.8 unsolicited pong with payload", send: frames(clientFrame(true, 0, ws.OpPong, []byte("unsolicited")))},
		{name: "2.9 pong then ping", send: frames(clientFrame(true, 0, ws.OpPong, []byte("x")), ping("ping")), want: []string{"pong ping"}},
		{name: "2.10 ten pings", send: frames(ping("0"), ping("1"), ping("2"), ping("3"), ping("4"), ping("5"), ping("6"), ping("7"), ping("8"), ping("9")),
			want: []string{"pong 0", "pong 1", "pong 2", "pong 3", "pong 4", "pong 5", "pong 6", "pong 7", "pong 8", "pong 9"}},
		// 3 reserved bits: the frames before are answered, the ones after not
		{name: "3.1 text RSV1", send: frames(clientFrame(true, 4, ws.OpText, []byte(`{"since":1}`))), closeCode: 1002},
		{name: "3.2 text RSV2 between pings", send: frames(ping("a"), clientFrame(true, 2, ws.OpText, []byte(`{"since":1}`)), ping("b")), want: []string{"pong a"}, closeCode: 1002},
		{name: "3.3 text RSV3", send: frames(clientFrame(true, 1, ws.OpText, nil)), closeCode: 1002},
		{name: "3.5 binary RSV5", send: frames(clientFrame(true, 5, ws.OpBinary, nil)), closeCode: 1002},
		{name: "3.6 ping RSV6", send: frames(clientFrame(true, 6, ws.OpPing, []byte("x"))), closeCode: 1002},
		{name: "3.7 close RSV7", send: frames(clientFrame(true, 7, ws.OpClose, nil)), closeCode: 1002},
		// 5 fragmentation
		{name: "5.1 fragmented ping", send: frames(clientFrame(false, 0, ws.OpPing, []byte("a")), clientFrame(true, 0, ws.OpContinuation, []byte("b"))), closeCode: 1002},
		{name: "5.2 fragmented pong", send: frames(clientFrame(false, 0, ws.OpPong, []byte("a")), clientFrame(true, 0, ws.OpContinuation, []byte("b"))), closeCode: 1002},
		{name: "5.3 text in two fragments", send: frames(clientFrame(false, 0, ws.OpText, []byte(`{"sin`)), clientFrame(true, 0, ws.OpContinuation, []byte(`ce":5}`)))},
		{name: "5.6 ping between fragments", send: frames(clientFrame(false, 0, ws.OpText, []byte(`{"sub`)), ping("mid"), clientFrame(true, 0, ws.OpContinuation, []byte(`scribe":"c"}`))), want: []string{"pong mid"}},
		{name: "5.9 continuation alone", send: frames(clientFrame(true, 0, ws.OpContinuation, []byte("x"))), closeCode: 1002},
		{name: "5.10 unfinished continuation alone", send: frames(clientFrame(false, 0, ws.OpContinuation, []byte("x"))), closeCode: 1002},
		{name: "5.15 new message inside a message", send: frames(clientFrame(false, 0, ws.OpText, []byte("a")), clientFrame(false, 0, ws.OpContinuation, []byte("b")), clientFrame(false, 0, ws.OpText, []byte("c"))), closeCode: 1002},
		{name: "5.18 final text inside a message", send: frames(clientFrame(false, 0, ws.OpText, []byte("a")), text("b")), closeCode: 1002},
		{name: "5.19 five fragments, pings between", send: frames(clientFrame(false, 0, ws.OpText, []byte("{")), ping("1"), clientFrame(false, 0, ws.OpContinuation, []byte(`"since"`)), ping("2"),
			clientFrame(false, 0, ws.OpContinuation, nil), clientFrame(false, 0, ws.OpContinuation, []byte(":7")), ping("3"), clientFrame(true, 0, ws.OpContinuation, []byte("}"))),
			want: []string{"pong 1", "pong 2", "pong 3"}},
		{name: "5.x binary fragments", send: frames(clientFrame(false, 0, ws.OpBinary, []byte("a"))), closeCode: 1003},
		// 6 UTF-8: valid text that is no command is 1008, invalid is 1007
		{name: "6.1 empty fragments", send: frames(clientFrame(false, 0, ws.OpText, nil), clientFrame(false, 0, ws.OpContinuation, nil), clientFrame(true, 0, ws.OpContinuation, nil)), closeCode: 1008},
		{name: "6.2.1 valid UTF-8", send: frames(text("Hello-µ@ßöäüàá-UTF-8!!")), closeCode: 1008},
		{name: "6.2.3 valid UTF-8 split inside characters", send: fragmentEach([]byte("κόσμε-µ@ß")), closeCode: 1008},
		{name: "6.3.1 surrogate", send: frames(text("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64")), closeCode: 1007},
		{name: "6.3.2 surrogate in fragments", send: fragmentEach([]byte("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64")), closeCode: 1007},
		{name: "6.6 truncated sequence at the end", send: frames(text("\xce\xba\xe1\xbd")), closeCode: 1007},
		{name: "6.x 0xff", send: frames(text(`{"since":1}` + "\xff")), closeCode: 1007},
		{name: "6.x overlong slash", send: frames(text("\xc0\xaf")), closeCode: 1007},
		{name: "6.x above U+10FFFF", send: frames(text("\xf4\x90\x80\x80")), closeCode: 1007},
		{name: "6.x invalid inside a command", send: frames(text("{\"subscribe\":\"\xed\xa0\x80\"}")), closeCode: 1007},
		// 7 close handshake
		{name: "7.1.1 close empty", send: frames(rawClose(nil)), closeCode: 0xffff},
		{name: "7.1.2 text after close", send: frames(closeFrame(1000, ""), text(`{"since":1}`)), closeCode: 1000},
		{name: "7.1.3 ping after close", send: frames(closeFrame(1000, ""), ping("late")), closeCode: 1000},
		{name: "7.1.6 fragment then close", send: frames(clientFrame(false, 0, ws.OpText, []byte("{")), closeFrame(1000, "")), closeCode: 1000},
		{name: "7.3.2 close with 1 byte", send: frames(rawClose([]byte{0x03})), closeCode: 1002},
		{name: "7.3.3 close 1000", send: frames(closeFrame(1000, "")), closeCode: 1000},
		{name: "7.3.4 close 1000 with reason", send: frames(closeFrame(1000, "Hello World!")), closeCode: 1000},
		{name: "7.3.5 close 1000, 123-byte reason", send: frames(rawClose(append([]byte{3, 232}, bytes.Repeat([]byte("*"), 123)...))), closeCode: 1000},
		{name: "7.3.6 close 1000, 124-byte reason", send: frames(rawClose(append([]byte{3, 232}, bytes.Repeat([]byte("*"), 124)...))), closeCode: 1002},
		{name: "7.5.1 close reason not UTF-8", send: frames(rawClose(append([]byte{3, 232}, "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"...))), closeCode: 1002},
		// 9 limits: failed on the header, before the payload arrives
		{name: "9.1 text over the limit", send: frames(clientFrame(true, 0, ws.OpText, padded(65537))[:14]), closeCode: 1009},
		{name: "9.1 64-bit length 2^62", send: frames(frameWith(ws.Header{Fin: true, OpCode: ws.OpText, Masked: true, Mask: testMask, Length: 1 << 62}, nil)), closeCode: 1009},
		{name: "9.2 fragments over the limit", send: frames(clientFrame(false, 0, ws.OpText, padded(40000)), clientFrame(true, 0, ws.OpContinuation, bytes.Repeat([]byte(" "), 30000))), closeCode: 1009},
		{name: "length with the top bit set", send: frames(append(binary.BigEndian.AppendUint64([]byte{0x81, 0xff}, 1<<63), testMask[:]...)), closeCode: 1002},
		// 10 misc
		{name: "10.x unmasked text", send: frames(frameWith(ws.Header{Fin: true, OpCode: ws.OpText, Length: 11}, []byte(`{"since":1}`))), closeCode: 1002},
		{name: "10.x unmasked ping", send: frames(frameWith(ws.Header{Fin: true, OpCode: ws.OpPing}, nil)), closeCode: 1002},
		// commands
		{name: "since", send: frames(text(`{"since":0}`))},
		{name: "subscribe, unsubscribe", send: frames(text(`{"subscribe":"news"}`), text(`{"unsubscribe":"news"}`), text(`{"unsubscribe":"never"}`))},
		{name: "bad channel", send: frames(text(`{"subscribe":"a b"}`)), closeCode: 1008},
		{name: "unknown command", send: frames(text(`{"publish":"x"}`)), closeCode: 1008},
		{name: "two keys", send: frames(text(`{"since":1,"subscribe":"x"}`)), closeCode: 1008},
		{name: "negative since", send: frames(text(`{"since":-1}`)), closeCode: 1008},
	}
	for _, op := range []ws.OpCode{3, 4, 5, 6, 7, 11, 12, 13, 14, 15} { // 4.x reserved opcodes
		cases = append(cases, wsCase{name: fmt.Sprintf("4.x opcode %d", op), send: frames(ping("before"), clientFrame(true, 0, op, []byte("x")), ping("after")),
			want: []string{"pong before"}, closeCode: 1002})
	}
	for _, code := range []ws.StatusCode{1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999} { // 7.7.x
		cases = append(cases, wsCase{name: fmt.Sprintf("7.7 close %d", code), send: frames(closeFrame(code, "")), closeCode: code})
	}
	for _, code := range []ws.StatusCode{0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535} { // 7.9.x, 7.13.x
		cases = append(cases, wsCase{name: fmt.Sprintf("7.9 close %d", code), send: frames(closeFrame(code, "")), closeCode: 1002})
	}
	return cases
}

// fragmentEach sends a text message one byte per fragment.
func fragmentEach(p []byte) [][]byte {
	var fs [][]byte
	for i := range p {
		op := ws.OpContinuation
		if i == 0 {
			op = ws.OpText
		}
		fs = append(fs, clientFrame(i == len(p)-1, 0, op, p[i:i+1]))
	}
	return fs
}

// TestWSAutobahnCases runs each case twice: every frame in one write, and
// the whole byte stream in small pieces (a few bytes per write for short
// cases), so frames split anywhere take the buffered path.
func TestWSAutobahnCases(t *testing.T) {
	h := startWorker(t, noHeartbeat)
	for _, c := range autobahnCases() {
		for _, split := range []bool{false, true} {
			name := c.name
			if split {
				name += " (split)"
			}
			t.Run(name, func(t *testing.T) {
				cl := h.openWS("/ws/autobahn")
				stream := bytes.Join(c.send, nil)
				switch {
				case !split:
					for _, f := range c.send {
						cl.writeAll(f)
					}
				default:
					step := 3
					if len(stream) > 1000 {
						step = 4093
					}
					for i := 0; i < len(stream); i += step {
						cl.writeAll(stream[i:min(i+step, len(stream))])
						if len(stream) < 1000 {
							time.Sleep(100 * time.Microsecond)
						}
					}
				}
				for _, want := range c.want {
					hd, p := cl.mustNext()
					if got := opName[hd.OpCode] + " " + string(p); got != want {
						t.Fatalf("got %q, want %q", got, want)
					}
				}
				switch c.closeCode {
				case 0:
					cl.alive()
				case 0xffff: // a close without status is answered likewise
					hd, p := cl.mustNext()
					if hd.OpCode != ws.OpClose || len(p) != 0 {
						t.Fatalf("got %v % x, want an empty close", hd.OpCode, p)
					}
					if _, _, err := cl.next(); err != io.EOF {
						t.Fatalf("after close: %v", err)
					}
				default:
					cl.expectClose(c.closeCode)
				}
			})
		}
	}
}

func (c *wsClient) writeAll(b []byte) {
	for len(b) > 0 {
		n, err := syscall.Write(c.fd, b)
		if err != nil {
			return // the server may close while a failed case is still sending
		}
		b = b[n:]
	}
}

// BenchmarkIdleWSConnBytes is BenchmarkIdleConnBytes for WebSocket
// clients: the worker's Go heap per idle, subscribed connection.
func BenchmarkIdleWSConnBytes(b *testing.B) {
	for range b.N {
		heap, allocs := idleConnBytes(b, nil, func(j int) string { return wsRequest("/ws/idle"+strconv.Itoa(j), "") })
		reportIdleConns(b, heap, allocs)
	}
}
