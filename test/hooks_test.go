package test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/megacomet/megacomet/internal/testutil"
	"github.com/megacomet/megacomet/manager"
)

// The application in the loop: hooks decide who may connect and which
// channels it may join, asked of an application written in Node
// (node/hookapp.js), so the hook JSON is read and written by code that is
// not ours.

// hookCall is one call hookapp.js received.
type hookCall struct {
	Path        string            `json:"path"`
	ContentType string            `json:"contentType"`
	Hook        string            `json:"hook"`
	ID          string            `json:"id"`
	Transport   string            `json:"transport"`
	Channels    []string          `json:"channels"`
	Channel     string            `json:"channel"`
	Addr        string            `json:"addr"`
	Headers     map[string]string `json:"headers"`
}

// startHookApp runs node/hookapp.js and returns its base URL.
func startHookApp(t *testing.T) string {
	t.Helper()
	cmd := nodeCommand(t, "hookapp.js")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = &testutil.SyncBuffer{}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	var port int
	if _, e := fmt.Sscanf(line, "listening %d", &port); err != nil || e != nil {
		t.Fatalf("hookapp.js: %q %v %v", line, err, cmd.Stderr)
	}
	return fmt.Sprintf("http://127.0.0.1:%d", port)
}

// hookCalls lists what the application was asked, in order.
func hookCalls(t *testing.T, app string) []hookCall {
	t.Helper()
	code, body, _ := get(t, app+"/calls")
	var calls []hookCall
	if code != 200 || json.Unmarshal([]byte(body), &calls) != nil {
		t.Fatalf("GET /calls: %d %s", code, body)
	}
	return calls
}

// callsTo lists the calls the application got at path, as id:channel.
func callsTo(t *testing.T, app, path string) string {
	t.Helper()
	var got []string
	for _, c := range hookCalls(t, app) {
		if c.Path == path {
			got = append(got, c.ID+":"+c.Channel)
		}
	}
	return strings.Join(got, " ")
}

// cometGET sends a comet request with extra header lines and reads the
// answer's head; the body streams on.
func cometGET(t *testing.T, addr, path string, header ...string) (*http.Response, net.Conn) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	var h string
	for _, l := range header {
		h += l + "\r\n"
	}
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n", path, h)
	c.SetReadDeadline(time.Now().Add(time.Minute))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return resp, c
}

// refusedWith checks an answer is status, with a one-line JSON error
// naming want, and the retry hint a 503 carries.
func refusedWith(t *testing.T, what string, resp *http.Response, status int, want string) {
	t.Helper()
	b, _ := io.ReadAll(resp.Body)
	var e struct{ Error string }
	if resp.StatusCode != status || json.Unmarshal(b, &e) != nil || !strings.Contains(e.Error, want) || strings.Count(string(b), "\n") != 1 {
		t.Errorf("%s: %d %q, want %d with one line of JSON naming %q", what, resp.StatusCode, b, status, want)
	}
	if status == 503 && resp.Header.Get("Retry-After") == "" {
		t.Errorf("%s: 503 without Retry-After", what)
	}
}

// waitOnline polls the API until id is subscribed.
func waitOnline(t *testing.T, s *testutil.Server, id string) {
	t.Helper()
	testutil.CheckFor(t, 30*time.Second, func() error {
		if a := presenceOf(t, s, "/presence/"+id); !a.Online {
			return fmt.Errorf("%s not online", id)
		}
		return nil
	})
}

func hookServer(t *testing.T, app string, extra ...string) *testutil.Server {
	return testutil.Start(t, map[string]string{
		"server": "workers = 2\n" + strings.Join(extra, "\n"),
		"hooks": fmt.Sprintf(`connect = "%[1]s/connect"
subscribe = "%[1]s/subscribe"
publish = "%[1]s/publish"
timeout = "1s"`, app),
	})
}

// Allowed on every transport, refused with the application's reason on
// every transport (the WebSocket handshake included), and told what the
// client asked for.
func TestHooksAllowAndDeny(t *testing.T) {
	app := startHookApp(t)
	s := hookServer(t, app)
	for _, tr := range []string{"lp", "stream", "sse"} {
		id := "ok-" + tr
		c, err := net.Dial("tcp", s.Listen)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "GET /%s/%s HTTP/1.1\r\nHost: x\r\nAuthorization: Basic abc\r\n\r\n", tr, id)
		waitOnline(t, s, id)
		publish(t, s.API, fmt.Sprintf(`{"to":%q,"data":"hello %s"}`, id, tr))
		c.SetReadDeadline(time.Now().Add(time.Minute))
		r := bufio.NewReader(c)
		resp, err := http.ReadResponse(r, nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: %v %v", tr, resp, err)
		}
		if err := readUntil(resp.Body, "hello "+tr); err != nil {
			t.Errorf("%s: %v", tr, err)
		}
	}
	c, _, _, err := ws.Dial(context.Background(), "ws://"+s.Listen+"/ws/ok-ws")
	if err != nil {
		t.Fatalf("ws allowed: %v", err)
	}
	defer c.Close()
	waitOnline(t, s, "ok-ws")
	publish(t, s.API, `{"to":"ok-ws","data":"hello ws"}`)
	c.SetReadDeadline(time.Now().Add(time.Minute))
	if msg, err := wsutil.ReadServerText(c); err != nil || !strings.Contains(string(msg), "hello ws") {
		t.Errorf("ws: %q %v", msg, err)
	}

	for _, tr := range []string{"lp", "stream", "sse"} {
		resp, _ := cometGET(t, s.Listen, "/"+tr+"/deny-"+tr)
		refusedWith(t, tr, resp, 403, "banned: deny-"+tr)
	}
	resp, _ := cometGET(t, s.Listen, "/ws/deny-ws", "Connection: Upgrade", "Upgrade: websocket",
		"Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")
	refusedWith(t, "ws handshake", resp, 403, "banned: deny-ws")

	// Counted: in stats, and in /metrics with the latency histogram.
	s.WaitStats(t, 30*time.Second, func(st manager.Stats) error {
		c := st.Hooks["connect"]
		if c == nil || c.Calls != 8 || c.Allowed != 4 || c.Denied != 4 || c.Failed != 0 || c.LatencyMs.P99 == 0 {
			return fmt.Errorf("stats hooks.connect %+v, want 8 calls, 4 allowed, 4 denied, a latency", c)
		}
		return nil
	})
	_, metrics, _ := get(t, "http://"+s.API+"/metrics")
	for _, want := range []string{`megacomet_hook_calls_total{hook="connect"} 8`, `megacomet_hook_denied_total{hook="connect"} 4`,
		`megacomet_hook_latency_seconds_bucket{hook="connect",le="+Inf"} 8`, `megacomet_hook_calls_total{hook="subscribe"} 0`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics has no %s", want)
		}
	}

	// What the application was told: the id, the transport, the channels,
	// the client's address, and the forwarded headers.
	var sse *hookCall
	calls := hookCalls(t, app)
	for i := range calls {
		if calls[i].ID == "ok-sse" {
			sse = &calls[i]
		}
	}
	switch {
	case sse == nil:
		t.Fatalf("no call for ok-sse in %+v", calls)
	case sse.Path != "/connect" || sse.Hook != "connect" || sse.ContentType != "application/json" || sse.Transport != "sse" ||
		sse.Channels == nil || len(sse.Channels) != 0 || sse.Addr != "127.0.0.1" || sse.Headers["Authorization"] != "Basic abc":
		t.Errorf("the connect call for ok-sse: %+v", *sse)
	}
}

// readUntil reads r until want has come.
func readUntil(r io.Reader, want string) error {
	var seen []byte
	buf := make([]byte, 4096)
	for !strings.Contains(string(seen), want) {
		n, err := r.Read(buf)
		seen = append(seen, buf[:n]...)
		if err != nil && !strings.Contains(string(seen), want) {
			return fmt.Errorf("%q never came; got %q (%v)", want, seen, err)
		}
	}
	return nil
}

// Channel grants: the connect answer's channels admit at once; a channel
// outside them is the subscribe hook's to allow or refuse.
func TestHooksChannels(t *testing.T) {
	app := startHookApp(t)
	s := hookServer(t, app)
	for _, c := range []struct {
		path   string
		status int
		want   string
	}{
		{"/sse/chan-1?channels=news,team-red", 200, ""},
		{"/sse/chan-2?channels=news,extra", 200, ""}, // extra: the subscribe hook allows it
		{"/sse/chan-3?channels=news,secret", 403, "not for you: secret"},
		{"/stream/ok-4?channels=extra", 200, ""}, // asked for: granted by the connect answer
	} {
		resp, _ := cometGET(t, s.Listen, c.path)
		if c.status != 200 {
			refusedWith(t, c.path, resp, c.status, c.want)
		} else if resp.StatusCode != 200 {
			t.Errorf("%s: %d", c.path, resp.StatusCode)
		}
	}
	if subs := callsTo(t, app, "/subscribe"); subs != "chan-2:extra chan-3:secret" {
		t.Errorf("subscribe calls %v, want chan-2:extra and chan-3:secret only", subs)
	}
}

// A hook that hangs, fails, answers HTML or closes mid-answer gets its
// client a 503 with Retry-After and one line that says so, within
// hooks.timeout; meanwhile the server answers everyone else, and a client
// that leaves while parked is simply forgotten.
func TestHooksFailClosed(t *testing.T) {
	app := startHookApp(t)
	s := hookServer(t, app)
	type result struct {
		id   string
		resp *http.Response
	}
	ids := []string{"hang-1", "err-1", "html-1", "cut-1"}
	done := make(chan result, len(ids))
	for _, id := range ids {
		go func() {
			c, err := net.Dial("tcp", s.Listen)
			if err != nil {
				done <- result{id, nil}
				return
			}
			t.Cleanup(func() { c.Close() })
			fmt.Fprintf(c, "GET /sse/%s HTTP/1.1\r\nHost: x\r\n\r\n", id)
			c.SetReadDeadline(time.Now().Add(time.Minute))
			resp, _ := http.ReadResponse(bufio.NewReader(c), nil)
			done <- result{id, resp}
		}()
	}
	// A client that leaves while its hook hangs.
	gone, err := net.Dial("tcp", s.Listen)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(gone, "GET /sse/hang-2 HTTP/1.1\r\nHost: x\r\n\r\n")
	gone.Close()
	if got := ping(t, s.Listen); got != "pong" {
		t.Errorf("/ping while hooks hang: %q", got)
	}
	reasons := map[string]string{"hang-1": "(timeout)", "err-1": "(status)", "html-1": "(garbage)", "cut-1": "(broken)"}
	for range ids {
		r := <-done
		if r.resp == nil {
			t.Errorf("%s: no answer", r.id)
			continue
		}
		refusedWith(t, r.id, r.resp, 503, "connect hook failed "+reasons[r.id])
	}
	s.WaitStats(t, 30*time.Second, func(st manager.Stats) error {
		var failed uint64
		for _, w := range st.Workers {
			failed += w.HookFailed
		}
		if failed < uint64(len(ids)) {
			return fmt.Errorf("hook_failed %d, want %d or more", failed, len(ids))
		}
		return nil
	})
	for _, want := range []string{"hook did not answer within hooks.timeout", "hook answered other than 200", "hook answer is not the JSON documented"} {
		if !strings.Contains(s.Log.String(), want) {
			t.Errorf("no log line says %q", want)
		}
	}
}

// Cookie goes to the application only from a page of ours: an allowed
// origin, or a request the browser says is same-site; a cross-site page's
// request reaches the hook without it.
func TestHooksCookieOnlyFromOurPages(t *testing.T) {
	app := startHookApp(t)
	s := hookServer(t, app, `allowed_origins = ["https://app.example"]`)
	cookie := "Cookie: session=s3cret"
	for _, c := range []struct {
		name   string
		path   string
		header []string
		status int
	}{
		{"same-site fetch", "/sse/cookie-1", []string{cookie, "Sec-Fetch-Site: same-site"}, 200},
		{"allowed origin", "/sse/cookie-2", []string{cookie, "Origin: https://app.example"}, 200},
		{"cross-site origin", "/sse/cookie-3", []string{cookie, "Origin: https://evil.example"}, 403},
		{"cross-site, no origin", "/sse/cookie-4", []string{cookie, "Sec-Fetch-Site: cross-site"}, 403},
		{"JSONP", "/lp/cookie-5?callback=f", []string{cookie, "Sec-Fetch-Site: same-site"}, 403},
	} {
		resp, _ := cometGET(t, s.Listen, c.path, c.header...)
		if c.status == 403 {
			refusedWith(t, c.name, resp, 403, "no session")
		} else if resp.StatusCode != c.status {
			t.Errorf("%s: %d, want %d", c.name, resp.StatusCode, c.status)
		}
	}
}

// expire_at ends the connection as an expired token would.
func TestHooksExpireAt(t *testing.T) {
	app := startHookApp(t)
	s := hookServer(t, app)
	resp, _ := cometGET(t, s.Listen, "/sse/exp-1")
	if resp.StatusCode != 200 {
		t.Fatalf("%d", resp.StatusCode)
	}
	if err := readUntil(resp.Body, "event: expired"); err != nil {
		t.Error(err)
	}
}

// Over WebSocket, a subscribe outside the grant waits for the subscribe
// hook, and a publish no claim allows for the publish hook, which may
// rewrite it; refusals are error frames, and the connection stays.
func TestHooksWebSocketCommands(t *testing.T) {
	app := startHookApp(t)
	s := hookServer(t, app)
	c, _, _, err := ws.Dial(context.Background(), "ws://"+s.Listen+"/ws/chan-ws?channels=news")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	send := func(msg string) {
		if err := wsutil.WriteClientText(c, []byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	next := func(want string) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(time.Minute))
		for {
			msg, err := wsutil.ReadServerText(c)
			if err != nil {
				t.Fatalf("waiting for %s: %v", want, err)
			}
			if strings.Contains(string(msg), want) {
				return
			}
		}
	}
	send(`{"subscribe":"secret"}`)
	send(`{"subscribe":"extra"}`)
	next(`{"error":"not for you: secret","channel":"secret"}`)
	testutil.CheckFor(t, 30*time.Second, func() error {
		if a := presenceOf(t, s, "/presence?channel=extra"); a.Subscribers != 1 {
			return fmt.Errorf("channel extra has %d subscribers", a.Subscribers)
		}
		return nil
	})
	publish(t, s.API, `{"channel":"extra","data":"to extra"}`)
	next(`"to extra"`)

	listener, _ := cometGET(t, s.Listen, "/sse/listen-1?channels=shout")
	waitOnline(t, s, "listen-1")
	send(`{"publish":"news","data":{"text":"quiet"}}`)
	next(`{"error":"quiet please","channel":"news"}`)
	send(`{"publish":"shout","data":{"text":"hi there"}}`)
	next(`{"ack":`)
	if pubs := callsTo(t, app, "/publish"); pubs != "chan-ws:news chan-ws:shout" {
		t.Errorf("publish calls %v", pubs)
	}
	if err := readUntil(listener.Body, `"channel":"shout","data":{"text":"HI THERE"}`); err != nil {
		t.Errorf("the publish as the application rewrote it: %v", err)
	}
}

// An application that takes 3 s to answer (hooks.timeout is 1 s), under a
// burst of 1,000 connects at about 2,000 a second: every client gets a
// 503 with Retry-After that says why, /ping answers throughout, and
// nothing is left waiting afterwards.
func TestHooksSlowAppUnderLoad(t *testing.T) {
	app := startHookApp(t)
	s := hookServer(t, app, "max_conns_per_ip = 5000")
	const n = 1000
	answers := make(chan string, n)
	go func() {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for i := 0; i < n; i++ {
			if i%2 == 0 {
				<-tick.C // two connects a millisecond
			}
			go func() {
				c, err := net.Dial("tcp", s.Listen)
				if err != nil {
					answers <- err.Error()
					return
				}
				defer c.Close()
				fmt.Fprintf(c, "GET /sse/slow-%d HTTP/1.1\r\nHost: x\r\n\r\n", i)
				c.SetReadDeadline(time.Now().Add(2 * time.Minute))
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					answers <- err.Error()
					return
				}
				b, _ := io.ReadAll(resp.Body)
				answers <- fmt.Sprintf("%d %s %s", resp.StatusCode, resp.Header.Get("Retry-After"), b)
			}()
		}
	}()
	pings := 0
	kinds := map[string]int{}
	for got := 0; got < n; {
		select {
		case a := <-answers:
			got++
			switch {
			case strings.HasPrefix(a, "503 1 ") && strings.Contains(a, "(timeout)"):
				kinds["timeout"]++
			case strings.HasPrefix(a, "503 1 ") && strings.Contains(a, "(queue)"):
				kinds["queue"]++
			case strings.HasPrefix(a, "503 1 ") && strings.Contains(a, "did not answer in time"):
				kinds["backstop"]++
			default:
				t.Fatalf("a client got %q, want a 503 with Retry-After saying the hook failed", a)
			}
		case <-time.After(100 * time.Millisecond):
			if got := ping(t, s.Listen); got != "pong" {
				t.Fatalf("/ping during the burst: %q", got)
			}
			pings++
		}
	}
	t.Logf("%d clients answered 503: %v; %d pings answered meanwhile", n, kinds, pings)
	s.WaitStats(t, time.Minute, func(st manager.Stats) error {
		if st.HookWaiting != 0 || st.Connections != 0 {
			return fmt.Errorf("%d still waiting for the hook, %d connections", st.HookWaiting, st.Connections)
		}
		return nil
	})
}
