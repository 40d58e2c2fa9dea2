package test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/megacomet/megacomet/internal/testutil"
)

// WebSocket with clients nobody here wrote: the npm ws package under Node
// (node/wsclient.js) and Chromium's WebSocket.

// nodeWS makes sure node/node_modules holds the locked ws package: npm ci
// once per test process, when it is missing.
var nodeWS = sync.OnceValue(func() error {
	if _, err := exec.LookPath("node"); err != nil {
		return fmt.Errorf("node is needed (Node 20 or later with npm)")
	}
	if _, err := os.Stat("node/node_modules/ws/package.json"); err == nil {
		return nil
	}
	cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund", "--loglevel=error")
	cmd.Dir = "node"
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("npm ci in test/node: %v\n%s", err, out)
	}
	return nil
})

// nodeEvent is one line of wsclient.js's output.
type nodeEvent struct {
	Ev       string `json:"ev"`
	Data     string `json:"data"`
	Binary   bool   `json:"binary"`
	Code     int    `json:"code"`
	Reason   string `json:"reason"`
	Protocol string `json:"protocol"`
	Cursor   string `json:"cursor"`
	Error    string `json:"error"`
}

// nodeClient is a running wsclient.js.
type nodeClient struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	events chan nodeEvent
	pings  atomic.Int64
	closed chan nodeEvent // the close event, once
}

// nodeCommand is `node node/SCRIPT args…`, once the ws package is in place
// (skipped with MEGACOMET_SKIP_NODE).
func nodeCommand(t *testing.T, script string, args ...string) *exec.Cmd {
	t.Helper()
	if os.Getenv("MEGACOMET_SKIP_NODE") != "" {
		t.Skip("MEGACOMET_SKIP_NODE is set")
	}
	if err := nodeWS(); err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs(filepath.Join("node", script))
	return exec.Command("node", append([]string{abs}, args...)...)
}

func startNode(t *testing.T, url string, protocols ...string) *nodeClient {
	t.Helper()
	cmd := nodeCommand(t, "wsclient.js", append([]string{url}, protocols...)...)
	var stderr testutil.SyncBuffer
	cmd.Stderr = &stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &nodeClient{t: t, cmd: cmd, stdin: stdin, events: make(chan nodeEvent, 10000), closed: make(chan nodeEvent, 1)}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var ev nodeEvent
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				t.Errorf("wsclient.js printed %q", sc.Text())
				continue
			}
			switch ev.Ev {
			case "ping":
				c.pings.Add(1)
			case "close":
				c.closed <- ev
			default:
				c.events <- ev
			}
		}
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("wsclient.js stderr:\n%s", stderr.String())
		}
	})
	return c
}

// send writes a text message.
func (c *nodeClient) send(text string) {
	if _, err := io.WriteString(c.stdin, text+"\n"); err != nil {
		c.t.Fatal(err)
	}
}

// event returns the next event other than a ping or the close.
func (c *nodeClient) event(wait time.Duration) (nodeEvent, bool) {
	select {
	case ev := <-c.events:
		return ev, true
	case <-time.After(wait):
		return nodeEvent{}, false
	}
}

// tryNext makes nodeClient a receiver: the next message, decoded.
func (c *nodeClient) tryNext(wait time.Duration) (*msg, bool) {
	for {
		ev, ok := c.event(wait)
		if !ok {
			return nil, false
		}
		switch ev.Ev {
		case "upgrade", "open":
			continue
		case "message":
		default:
			c.t.Fatalf("got %+v while waiting for a message", ev)
		}
		var m msg
		if ev.Binary || json.Unmarshal([]byte(ev.Data), &m) != nil {
			c.t.Fatalf("message %q is not a text frame with a message", ev.Data)
		}
		return &m, true
	}
}

// waitClose returns the close the client saw.
func (c *nodeClient) waitClose(wait time.Duration) nodeEvent {
	c.t.Helper()
	select {
	case ev := <-c.closed:
		return ev
	case <-time.After(wait):
		c.t.Fatalf("no close within %s", wait)
		return nodeEvent{}
	}
}

func (c *nodeClient) notClosed() {
	c.t.Helper()
	select {
	case ev := <-c.closed:
		c.t.Fatalf("the connection closed: %d %q", ev.Code, ev.Reason)
	default:
	}
}

// waitOpen checks the handshake: the echoed protocol, then open.
func (c *nodeClient) waitOpen(protocol string) {
	c.t.Helper()
	for _, want := range []string{"upgrade", "open"} {
		ev, ok := c.event(10 * time.Second)
		if !ok || ev.Ev != want {
			c.t.Fatalf("got %+v (%v), want %s", ev, ok, want)
		}
		if want == "upgrade" && ev.Protocol != protocol {
			c.t.Errorf("protocol %q, want %q", ev.Protocol, protocol)
		}
		if _, err := strconv.ParseUint(ev.Cursor, 10, 64); want == "upgrade" && err != nil {
			c.t.Errorf("X-Megacomet-Cursor %q", ev.Cursor)
		}
	}
}

// The npm ws client receives messages to its id, its channels and
// broadcasts, answers the server's pings and stays connected across many
// heartbeat intervals, moves its cursor and channels with commands, and
// is told to reconnect with 1012 when the server stops.
func TestWSNodeClient(t *testing.T) {
	const hb = 200 * time.Millisecond
	s := testutil.Start(t, map[string]string{"server": "workers = 2", "comet": fmt.Sprintf("heartbeat = %q", hb.String())})
	c := startNode(t, "ws://"+s.Listen+"/ws/node-a?channels=news", "megacomet.v1")
	c.waitOpen("megacomet.v1")
	waitLive(t, s.API, c, "node-a")

	id := publish(t, s.API, `{"to":"node-a","data":{"k":"direct"}}`)[0]
	if m := next(t, c, 5*time.Second); m.ID != id || string(m.Data) != `{"k":"direct"}` {
		t.Errorf("to id: got %+v", m)
	}
	publish(t, s.API, `{"channel":"news","data":"chan"}`)
	if m := next(t, c, 5*time.Second); dataString(m) != "chan" || m.Channel != "news" {
		t.Errorf("channel: got %+v", m)
	}
	publish(t, s.API, `{"broadcast":true,"data":"all"}`)
	if m := next(t, c, 5*time.Second); dataString(m) != "all" {
		t.Errorf("broadcast: got %+v", m)
	}

	// Heartbeats: the client answers pings; a silent one would be closed
	// after two intervals. Six intervals later it is still here.
	testutil.CheckFor(t, 10*time.Second, func() error {
		if n := c.pings.Load(); n < 6 {
			return fmt.Errorf("%d pings", n)
		}
		return nil
	})
	c.notClosed()

	// {"since":N}: the manager replays what came after N, once.
	ids := publish(t, s.API, `[{"to":"node-a","data":1},{"to":"node-a","data":2}]`)
	for _, want := range ids {
		if m := next(t, c, 5*time.Second); m.ID != want {
			t.Fatalf("got %d, want %d", m.ID, want)
		}
	}
	c.send(fmt.Sprintf(`{"since":%d}`, ids[0]))
	if m := next(t, c, 5*time.Second); m.ID != ids[1] || string(m.Data) != "2" {
		t.Fatalf("replay after since: got %+v, want id %d", m, ids[1])
	}
	// {"subscribe":"c"} and {"unsubscribe":"c"}.
	c.send(`{"subscribe":"sport"}`)
	c.send(`{"unsubscribe":"news"}`)
	testutil.CheckFor(t, 10*time.Second, func() error {
		publish(t, s.API, `{"channel":"sport","data":"probe"}`)
		if _, ok := c.tryNext(200 * time.Millisecond); !ok {
			return fmt.Errorf("no message on the new channel")
		}
		return nil
	})
	for { // drain the other probes
		if _, ok := c.tryNext(300 * time.Millisecond); !ok {
			break
		}
	}
	publish(t, s.API, `{"channel":"news","data":"not any more"}`)
	last := publish(t, s.API, `{"to":"node-a","data":"last"}`)[0]
	if m := next(t, c, 5*time.Second); m.ID != last {
		t.Fatalf("after unsubscribe: got %+v", m)
	}

	// Anything else is a policy violation, with the commands as reason.
	c.send(`hello`)
	if ev := c.waitClose(5 * time.Second); ev.Code != 1008 || !strings.Contains(ev.Reason, `{"since":N}`) {
		t.Errorf("after a bad command: close %d %q", ev.Code, ev.Reason)
	}

	// A client that comes back with ?since= gets exactly what it missed.
	b := startNode(t, "ws://"+s.Listen+"/ws/node-b")
	b.waitOpen("")
	seen := waitLive(t, s.API, b, "node-b")
	b.send("CLOSE")
	if ev := b.waitClose(5 * time.Second); ev.Code != 1000 {
		t.Errorf("client close answered with %d", ev.Code)
	}
	missed := publish(t, s.API, `[{"to":"node-b","data":"m1"},{"to":"node-b","data":"m2"}]`)
	b2 := startNode(t, fmt.Sprintf("ws://%s/ws/node-b?since=%d", s.Listen, seen))
	for _, want := range missed {
		if m := next(t, b2, 5*time.Second); m.ID != want {
			t.Fatalf("replay: got %d, want %d", m.ID, want)
		}
	}
	live := publish(t, s.API, `{"to":"node-b","data":"live"}`)[0]
	if m := next(t, b2, 5*time.Second); m.ID != live {
		t.Fatalf("after the replay: got %d, want %d", m.ID, live)
	}

	// Stop: the server hands the client over with 1012.
	s.Stop()
	if ev := b2.waitClose(10 * time.Second); ev.Code != 1012 || ev.Reason != "reconnect" {
		t.Errorf("on stop: close %d %q, want 1012 reconnect", ev.Code, ev.Reason)
	}
}

const webSocketPage = `<!doctype html><html><body><script>
function report(m) { new Image().src = "/report?m=" + encodeURIComponent(m); }
var ws = new WebSocket("ws://WORKER/ws/browser-ws?channels=bnews");
ws.onopen = function () { ws.send('{"subscribe":"bsport"}'); };
ws.onmessage = function (e) { report(e.data); };
ws.onclose = function (e) { report("close " + e.code + " " + e.reason + " " + e.wasClean); };
</script></body></html>`

// Chromium's WebSocket from another origin receives messages, sends a
// command, answers pings across many heartbeats, and sees the hand-over
// as a clean close 1012.
func TestWSBrowser(t *testing.T) {
	const hb = 200 * time.Millisecond
	s := testutil.Start(t, map[string]string{"server": "workers = 2", "comet": fmt.Sprintf("heartbeat = %q", hb.String())})
	url, reports := page(t, webSocketPage, s.Listen)
	chromium(t, url)
	got := waitReport(t, s.API, "browser-ws", reports, `{"hello":"ws"}`)
	var m msg
	if err := json.Unmarshal([]byte(got), &m); err != nil || string(m.Data) != `{"hello":"ws"}` || got != fmt.Sprintf(`{"id":%d,"data":{"hello":"ws"}}`, m.ID) {
		t.Fatalf("the page reported %q", got)
	}
	// Ten heartbeat intervals; the page must not report a close.
	select {
	case r := <-reports:
		if strings.HasPrefix(r, "close") {
			t.Fatalf("the socket closed: %s", r)
		}
	case <-time.After(10 * hb):
	}
	// The subscribe command the page sent on open took effect.
	publish(t, s.API, `{"channel":"bsport","data":"via command"}`)
	select {
	case r := <-reports:
		if !strings.Contains(r, `"channel":"bsport","data":"via command"`) {
			t.Fatalf("the page reported %q", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no channel message")
	}
	s.Stop()
	select {
	case r := <-reports:
		if r != "close 1012 reconnect true" {
			t.Errorf("on stop the page reported %q", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the page saw no close")
	}
}
